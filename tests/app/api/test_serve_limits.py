"""A real ``sagashi serve`` against slow and greedy clients, over raw sockets: a slowloris
client (a request head sent a line at a time, or nothing at all) is disconnected after
SAGASHI_HEADER_TIMEOUT, while a slow body is not; idle keep-alive connections close after
SAGASHI_KEEP_ALIVE_TIMEOUT; an oversized head is refused; past SAGASHI_MAX_CONCURRENCY
requests get a 503; and SAGASHI_READ_TOKEN guards the real server."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.serve_helpers import sagashi_serve

HEADER_TIMEOUT = 2.0
KEEP_ALIVE = 1
MAX_CONCURRENCY = 4
MAX_HEADER_BYTES = 4096
READ_TOKEN = "read-token-0123456789"
SLACK = 1.5  # scheduling on a loaded 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = {
        "SAGASHI_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "SAGASHI_KEEP_ALIVE_TIMEOUT": str(KEEP_ALIVE),
        "SAGASHI_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
        "SAGASHI_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "SAGASHI_READ_TOKEN": READ_TOKEN,
    }
    with sagashi_serve(tmp_path_factory.mktemp("limits"), settings) as base:
        yield base


def connect(base: str) -> socket.socket:
    url = urlsplit(base)
    return socket.create_connection((url.hostname, url.port), timeout=5)


def seconds_until_closed(sock: socket.socket, pieces: Iterable[bytes], every: float) -> float:
    """Sends one piece every ``every`` seconds (nothing once they run out) until the server
    closes the connection; fails if it answers instead. At most 15 s."""
    start = time.monotonic()
    sock.settimeout(every)
    remaining = iter(pieces)
    while time.monotonic() - start < 15:
        piece = next(remaining, b"")
        try:
            if piece:
                sock.sendall(piece)
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start
        assert data == b"", f"the server answered instead of closing: {data!r}"
        return time.monotonic() - start
    return 15.0


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "closed before the whole body"
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    "pieces",
    [
        itertools.chain(
            [b"GET /api/search HTTP/1.1\r\nHost: sagashi\r\n"], itertools.repeat(b"X-Slow: 1\r\n")
        ),
        [],  # connects and sends nothing
    ],
    ids=["header-a-line-at-a-time", "silent"],
)
def test_a_slowloris_client_is_disconnected_after_the_header_timeout(
    server: str, pieces: Iterable[bytes]
) -> None:
    with connect(server) as sock:
        held = seconds_until_closed(sock, pieces, every=0.25)
    assert HEADER_TIMEOUT - 0.3 <= held <= HEADER_TIMEOUT + SLACK, held


def test_a_slow_body_is_not_cut_by_the_header_timeout(server: str) -> None:
    body = b"token=not-the-token-at-all&next=%2F"
    head = (
        b"POST /login HTTP/1.1\r\nHost: sagashi\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with connect(server) as sock:
        sock.sendall(head)
        started = time.monotonic()
        for i in range(0, len(body), 3):  # 12 pieces over about 3.3 s
            time.sleep(0.3)
            sock.sendall(body[i : i + 3])
        assert time.monotonic() - started > HEADER_TIMEOUT
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 401 "), response[:200]
    assert b"That token is not valid." in response


def test_an_idle_keep_alive_connection_is_closed(server: str) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: sagashi\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        idle = seconds_until_closed(sock, [], every=0.1)
    assert KEEP_ALIVE - 0.3 <= idle <= KEEP_ALIVE + SLACK, idle


def test_an_oversized_request_head_is_refused(server: str) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: sagashi\r\n")
        time.sleep(0.1)
        sock.sendall(b"X-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n")
        sock.settimeout(2)
        answer = b""
        while chunk := sock.recv(4096):  # until the server closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer


def test_past_the_concurrency_limit_requests_get_503(server: str) -> None:
    # Open connections count, idle or not: three here and the request's own make four.
    idle = [connect(server) for _ in range(MAX_CONCURRENCY - 1)]
    try:
        time.sleep(0.2)  # accepted by the server
        refused = httpx.get(f"{server}/healthz")
        assert refused.status_code == 503, refused.text
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{server}/healthz").status_code == 200


def test_the_read_token_guards_the_real_server(server: str) -> None:
    auth = {"Authorization": f"Bearer {READ_TOKEN}"}
    assert httpx.get(f"{server}/healthz").status_code == 200
    for path in ("/api/search", "/metrics", "/openapi.json"):
        refused = httpx.get(f"{server}{path}")
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["code"] == "unauthorized"
        assert httpx.get(f"{server}{path}", headers=auth).status_code == 200, path


def test_limits_come_from_settings(tmp_path: Path) -> None:
    from app.api.serving import uvicorn_options
    from app.settings import Settings

    options = uvicorn_options(
        Settings(data_dir=tmp_path, keep_alive_timeout=7, max_concurrency=9, max_header_bytes=2048)
    )
    assert options["timeout_keep_alive"] == 7
    assert options["limit_concurrency"] == 9
    assert options["h11_max_incomplete_event_size"] == 2048
    assert options["http"].header_timeout == 10.0


def test_with_two_workers_each_worker_keeps_the_header_timeout(tmp_path: Path) -> None:
    # The workers are new processes that get the protocol class by its module path and the
    # timeout from the environment; both are held to it (connections land on either).
    settings = {"SAGASHI_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "SAGASHI_WORKERS": "2"}
    with sagashi_serve(tmp_path, settings) as base:
        for _ in range(4):
            with connect(base) as sock:
                held = seconds_until_closed(sock, [], every=0.25)
            assert HEADER_TIMEOUT - 0.3 <= held <= HEADER_TIMEOUT + SLACK, held
        assert httpx.get(f"{base}/healthz").status_code == 200
