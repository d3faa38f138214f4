"""The SSRF guard's address rule against every block of IANA's IPv4 and IPv6 Special-Purpose
Address Registries, the embedded-IPv4 forms (mapped, compatible, NAT64, 6to4) and
site-local. Pure checks: no test here opens a connection to any of these addresses."""

from __future__ import annotations

import ipaddress

import pytest

from app.api.addresses import is_public
from app.api.errors import ApiError
from app.api.urlfetch import FetchPolicy, check_address

STRICT = FetchPolicy.of(100_000, 5.0, [])

# IANA IPv6 Special-Purpose Address Registry (every entry), plus the deprecated
# site-local block and the rest of the space outside 2000::/3.
SPECIAL_IPV6 = [
    "::1",  # loopback
    "::",  # unspecified
    "::ffff:10.0.0.1",  # IPv4-mapped, private inside
    "::ffff:127.0.0.1",
    "64:ff9b::10.0.0.1",  # NAT64 well-known prefix, private inside
    "64:ff9b::127.0.0.1",
    "64:ff9b::169.254.169.254",  # cloud metadata behind NAT64
    "64:ff9b::c0a8:101",  # 192.168.1.1
    "64:ff9b:1::8.8.8.8",  # NAT64 local-use prefix (RFC 8215), whatever is inside
    "64:ff9b:1:ffff::1",
    "100::1",  # discard-only
    "100:0:0:1::1",  # dummy IPv6 prefix
    "2001::1",  # IETF protocol assignments / Teredo
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:1::1",  # PCP anycast
    "2001:1::2",  # TURN anycast
    "2001:1::3",  # DNS-SD SRP anycast
    "2001:2::1",  # benchmarking
    "2001:3::1",  # AMT
    "2001:4:112::1",  # AS112-v6
    "2001:10::1",  # deprecated ORCHID
    "2001:20::1",  # ORCHIDv2
    "2001:30::1",  # drone remote ID tags
    "2001:1ff:ffff::1",  # the end of 2001::/23
    "2001:db8::1",  # documentation
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2620:4f:8000::1",  # direct delegation AS112
    "3fff::1",  # documentation (RFC 9637)
    "3fff:fff::1",
    "5f00::1",  # SRv6 SIDs
    "fc00::1",  # unique-local
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fe80::1",  # link-local
    "fec0::1",  # site-local (deprecated, still routed by some stacks)
    "feff::1",
    "ff02::1",  # multicast
    "::10.0.0.1",  # IPv4-compatible, private inside
    "::127.0.0.1",
    "::169.254.169.254",
    "4000::1",  # unassigned, outside global unicast
]

SPECIAL_IPV4 = [
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "100.64.0.1",
    "127.0.0.1",
    "169.254.169.254",
    "172.16.0.1",
    "172.31.255.254",
    "192.0.0.1",
    "192.0.0.9",  # PCP anycast
    "192.0.0.170",  # NAT64/DNS64 discovery
    "192.0.2.1",
    "192.31.196.1",
    "192.52.193.1",
    "192.88.99.1",
    "192.168.1.1",
    "192.175.48.1",
    "198.18.0.1",
    "198.19.255.254",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
]

PUBLIC = [
    "8.8.8.8",
    "93.184.216.34",
    "1.1.1.1",
    "2606:4700::1111",
    "2a00:1450:4001:82b::200e",
    "::ffff:8.8.8.8",  # mapped, public inside
    "64:ff9b::8.8.8.8",  # NAT64 to a public IPv4 host: how IPv6-only hosts reach IPv4 sites
    "2002:808:808::1",  # 6to4 of 8.8.8.8
    "2001:200::1",  # just past 2001::/23
]


@pytest.mark.parametrize("text", SPECIAL_IPV6 + SPECIAL_IPV4)
def test_special_purpose_addresses_are_refused(text: str) -> None:
    assert not is_public(ipaddress.ip_address(text))
    with pytest.raises(ApiError) as caught:
        check_address(text, STRICT)
    assert (caught.value.status, caught.value.code) == (400, "url_refused")


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_pass(text: str) -> None:
    assert is_public(ipaddress.ip_address(text))
    assert check_address(text, STRICT) == ipaddress.ip_address(text)


def test_an_operator_allowance_still_reaches_an_internal_host() -> None:
    policy = FetchPolicy.of(100_000, 5.0, ["64:ff9b::10.1.2.0/120"])
    assert str(check_address("64:ff9b::10.1.2.3", policy)) == "64:ff9b::a01:203"


def test_a_zone_id_does_not_hide_a_link_local_address() -> None:
    with pytest.raises(ApiError):
        check_address("fe80::1%eth0", STRICT)
