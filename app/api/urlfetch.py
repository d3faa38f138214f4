"""Download a query image from a URL without letting callers reach inside the network (SSRF).

Every host is resolved here, every address it resolves to is checked, and the connection
goes to the checked address (the hostname only travels in the Host header and TLS SNI), so
a DNS answer that changes between check and connect cannot slip through. Redirects are
followed by hand, each hop checked the same way. Size and total time are bounded.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from app.api.addresses import IPAddress, is_public
from app.api.errors import ApiError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

MAX_REDIRECTS = 5
CHUNK = 64 * 1024
USER_AGENT = "Sagashi (+https://github.com/sagashi; reverse image search)"


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout: float
    allow: tuple[Network, ...] = ()

    @classmethod
    def of(cls, max_bytes: int, timeout: float, allow: Sequence[str]) -> FetchPolicy:
        networks = tuple(ipaddress.ip_network(item, strict=False) for item in allow)
        return cls(max_bytes, timeout, networks)


def refused(message: str) -> ApiError:
    return ApiError(400, "url_refused", message)


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ApiError(400, "url_unreachable", f"cannot resolve host {host!r}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_address(text: str, policy: FetchPolicy) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    if any(address in network for network in policy.allow):
        return address
    if not is_public(address):
        raise refused(f"the URL's host resolves to {address}, a private or reserved address")
    return address


def fetch_image_bytes(url: str, policy: FetchPolicy, resolver: Resolver = system_resolver) -> bytes:
    deadline = time.monotonic() + policy.timeout
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        response = _request(current, policy, resolver, deadline)
        try:
            if response.status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location")
                if not location:
                    raise ApiError(400, "url_failed", "the URL redirected without a Location")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise ApiError(400, "url_failed", f"the URL answered HTTP {response.status}")
            return _read_capped(response, policy, deadline)
        finally:
            response.release_conn()
    raise ApiError(400, "url_failed", f"more than {MAX_REDIRECTS} redirects")


def _request(
    url: str, policy: FetchPolicy, resolver: Resolver, deadline: float
) -> urllib3.BaseHTTPResponse:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise refused(f"only http and https URLs are fetched, not {scheme or 'a bare path'!r}")
    if parts.username or parts.password:
        raise refused("URLs with credentials are refused")
    host = parts.hostname
    if not host:
        raise refused("the URL has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise refused(f"bad port in URL: {exc}") from exc
    addresses = [check_address(a, policy) for a in resolver(host, port)]
    if not addresses:
        raise ApiError(400, "url_unreachable", f"host {host!r} has no address")
    target = str(addresses[0])
    pool = _pool(scheme, target, host, port, _remaining(deadline))
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    try:
        return pool.urlopen(
            "GET",
            path,
            headers={"Host": host_header, "User-Agent": USER_AGENT, "Accept": "image/*"},
            redirect=False,
            retries=False,
            preload_content=False,
            timeout=urllib3.Timeout(connect=_remaining(deadline), read=_remaining(deadline)),
        )
    except Urllib3Error as exc:
        raise ApiError(400, "url_unreachable", f"cannot fetch the URL: {exc}") from exc


def _pool(
    scheme: str, address: str, host: str, port: int, timeout: float
) -> urllib3.HTTPConnectionPool:
    if scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address,
            port,
            timeout=timeout,
            maxsize=1,
            cert_reqs="CERT_REQUIRED",
            server_hostname=host,
            assert_hostname=host,
        )
    return urllib3.HTTPConnectionPool(address, port, timeout=timeout, maxsize=1)


def _read_capped(response: urllib3.BaseHTTPResponse, policy: FetchPolicy, deadline: float) -> bytes:
    too_large = ApiError(413, "too_large", f"the image at the URL exceeds {policy.max_bytes} bytes")
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise too_large
    body = bytearray()
    try:
        # read1 returns whatever one receive brings, so a server dripping bytes still
        # meets the deadline check after every receive.
        while chunk := response.read1(CHUNK):
            body.extend(chunk)
            if len(body) > policy.max_bytes:
                raise too_large
            _remaining(deadline)
    except Urllib3Error as exc:
        raise ApiError(400, "url_failed", f"download failed: {exc}") from exc
    return bytes(body)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ApiError(400, "url_timeout", "the URL took too long to download")
    return left
