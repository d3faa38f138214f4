"""Which IP addresses a server-side download may reach: globally routable unicast only.

The rule is written out from IANA's IPv4 and IPv6 Special-Purpose Address Registries
instead of leaning on ``ipaddress.is_global``, whose answers differ between Python releases
(3.11 calls ``64:ff9b::10.0.0.1`` and ``::10.0.0.1`` global). Every special-purpose block is
refused, including the few the registries mark globally reachable (anycast services such as
PCP, TURN and AS112): no image host lives there. Four IPv6 forms carry an IPv4 address
inside them and are judged by that address: IPv4-mapped, IPv4-compatible, NAT64's
well-known prefix and 6to4. Teredo is refused outright (its client address is obfuscated).
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# IANA IPv4 Special-Purpose Address Registry, plus multicast and the reserved class E.
REFUSED_IPV4: tuple[_V4, ...] = tuple(
    _V4(block)
    for block in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private use
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (cloud metadata at 169.254.169.254)
        "172.16.0.0/12",  # private use
        "192.0.0.0/24",  # IETF protocol assignments (DS-Lite, PCP/TURN anycast, NAT64)
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.31.196.0/24",  # AS112-v4
        "192.52.193.0/24",  # AMT
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private use
        "192.175.48.0/24",  # direct delegation AS112 service
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 (limited broadcast)
    )
)

# IPv6 unicast that is routed on the internet lies in 2000::/3; everything outside it
# (loopback, unspecified, link-local, site-local fec0::/10, unique-local, multicast, the
# discard prefix 100::/64, SRv6 SIDs 5f00::/16, NAT64's local-use 64:ff9b:1::/48) is refused,
# except the embedded-IPv4 forms below.
GLOBAL_UNICAST_IPV6 = _V6("2000::/3")

# Special-purpose blocks inside 2000::/3.
REFUSED_IPV6: tuple[_V6, ...] = tuple(
    _V6(block)
    for block in (
        "2001::/23",  # IETF protocol assignments: Teredo, benchmarking, ORCHID, AMT, AS112, DETs
        "2001:db8::/32",  # documentation
        "2620:4f:8000::/48",  # direct delegation AS112 service
        "3fff::/20",  # documentation (RFC 9637)
    )
)

IPV4_MAPPED = _V6("::ffff:0:0/96")
IPV4_COMPATIBLE = _V6("::/96")  # deprecated, but a socket still reaches the embedded address
NAT64_WELL_KNOWN = _V6("64:ff9b::/96")  # RFC 6052: the last 32 bits are the IPv4 host
SIX_TO_FOUR = _V6("2002::/16")


def is_public(address: IPAddress) -> bool:
    """True only for an address on the public internet that is no special-purpose block."""
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in block for block in REFUSED_IPV4)
    embedded = embedded_ipv4(address)
    if embedded is not None:
        return is_public(embedded)
    if address not in GLOBAL_UNICAST_IPV6:
        return False
    return not any(address in block for block in REFUSED_IPV6)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a mapped, compatible, NAT64 or 6to4 address stands for, if any."""
    if address in IPV4_MAPPED or address in IPV4_COMPATIBLE or address in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address in SIX_TO_FOUR:
        return address.sixtofour
    return None
