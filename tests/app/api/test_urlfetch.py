"""URL fetching: private, loopback, link-local (metadata) and reserved addresses are refused,
directly or behind a redirect; size and time are bounded; the API uses it only when
enabled. A real HTTP server on 127.0.0.1 plays the image host (allowed explicitly, as an
operator would allow an internal host)."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.api.errors import ApiError
from app.api.urlfetch import FetchPolicy, fetch_image_bytes
from app.store.migrate import upgrade
from tests.support.api_helpers import hf_error_of, settings_for, wait_ready
from tests.support.index_helpers import make_image


class _Handler(BaseHTTPRequestHandler):
    image = b""

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/img.png":
            self._send(200, self.image)
        elif parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.end_headers()
        elif parts.path == "/big":
            self._send(200, b"\0" * 200_000)
        elif parts.path == "/chunked-big":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the size is only known while reading
            for _ in range(50):
                self.wfile.write(b"\0" * 10_000)
        elif parts.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.05)
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    image = make_image(tmp_path_factory.mktemp("host") / "img.png", seed=5)
    _Handler.image = image.read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


STRICT = FetchPolicy.of(100_000, 5.0, [])
LOCAL = FetchPolicy.of(100_000, 5.0, ["127.0.0.1/32"])


def refused_code(url: str, policy: FetchPolicy) -> str:
    with pytest.raises(ApiError) as caught:
        fetch_image_bytes(url, policy)
    assert caught.value.status in (400, 413)
    return caught.value.code


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/img.png",
        "http://127.1.2.3:8080/",
        "http://10.0.0.1/a.png",
        "http://172.16.5.4/a.png",
        "http://192.168.1.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",
        "http://localhost/a.png",
    ],
)
def test_private_and_metadata_addresses_are_refused(url: str) -> None:
    assert refused_code(url, STRICT) == "url_refused"


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://127.0.0.2/",
        "http://[::ffff:10.0.0.1]/",
    ],
)
def test_redirects_to_private_addresses_are_refused(host: str, target: str) -> None:
    assert refused_code(f"{host}/redirect?to={target}", LOCAL) == "url_refused"


def test_the_strict_policy_refuses_the_local_host_itself(host: str) -> None:
    assert refused_code(f"{host}/img.png", STRICT) == "url_refused"


def test_an_allowed_host_is_fetched_directly_and_through_redirects(host: str) -> None:
    assert fetch_image_bytes(f"{host}/img.png", LOCAL) == _Handler.image
    assert fetch_image_bytes(f"{host}/redirect?to=/img.png", LOCAL) == _Handler.image


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://example.com/",
        "/img.png",
        "http://user:pass@example.com/a.png",
        "http:///nohost",
        "http://example.com:99999/",
    ],
)
def test_other_schemes_credentials_and_malformed_urls_are_refused(url: str) -> None:
    assert refused_code(url, STRICT) == "url_refused"


def test_size_and_time_are_bounded(host: str) -> None:
    assert refused_code(f"{host}/big", LOCAL) == "too_large"
    assert refused_code(f"{host}/chunked-big", LOCAL) == "too_large"
    slow = FetchPolicy.of(100_000, 0.5, ["127.0.0.1/32"])
    started = time.monotonic()
    assert refused_code(f"{host}/slow", slow) in ("url_timeout", "url_failed")
    assert time.monotonic() - started < 3
    assert refused_code(f"{host}/missing", LOCAL) == "url_failed"
    many = f"{host}/redirect?to=/redirect%3Fto%3D/redirect%253Fto%253D/img.png"
    assert fetch_image_bytes(many, LOCAL) == _Handler.image


@pytest.fixture(scope="module")
def fetching_client(
    tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("fetching")
    url = f"sqlite:///{root / 'sagashi.db'}"
    upgrade(url)
    settings = settings_for(
        root,
        url,
        tiny_pixai_dir,
        url_fetch=True,
        url_fetch_allow=["127.0.0.1/32"],
        max_upload_bytes=60_000,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def test_api_tags_a_url_like_the_same_bytes_in_base64(
    fetching_client: TestClient, host: str
) -> None:
    by_url = fetching_client.post("/api/tag", json={"inputs": {"url": f"{host}/img.png"}})
    encoded = base64.b64encode(_Handler.image).decode()
    by_bytes = fetching_client.post("/api/tag", json={"inputs": {"image": encoded}})
    assert by_url.status_code == 200, by_url.text
    assert by_url.json() == by_bytes.json()


@pytest.mark.parametrize(
    ("path", "code", "status"),
    [
        ("/redirect?to=http://169.254.169.254/", "url_refused", 400),
        ("/redirect?to=http://[::1]/", "url_refused", 400),
        ("/big", "too_large", 413),
    ],
)
def test_api_refuses_bad_urls(
    fetching_client: TestClient, host: str, path: str, code: str, status: int
) -> None:
    for endpoint, body in (
        ("/api/tag", {"inputs": {"url": f"{host}{path}"}}),
        ("/api/similar", {"url": f"{host}{path}"}),
    ):
        response = fetching_client.post(endpoint, json=body)
        assert response.status_code in (status, 404), response.text
        if endpoint == "/api/tag":  # a drop-in endpoint: Hugging Face's error shape
            assert hf_error_of(response, status) == code
        elif response.status_code != 404:  # similar on this empty index may stop first
            assert response.json()["error"]["code"] == code


def test_oversized_uploads_are_413(fetching_client: TestClient) -> None:
    big = b"\xff" * 70_000
    upload = fetching_client.post("/api/similar", files={"file": ("a.png", big, "image/png")})
    assert upload.status_code == 413
    assert upload.json()["error"]["code"] == "too_large"
    encoded = fetching_client.post(
        "/api/tag", json={"inputs": {"image": base64.b64encode(big).decode()}}
    )
    assert encoded.status_code == 413
    huge = fetching_client.post("/evaluate", files={"file": ("a.png", b"\0" * 400_000)})
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "too_large"


def test_admin_is_disabled_without_a_token(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sagashi.db'}"
    upgrade(url)
    settings = settings_for(tmp_path, url, tiny_pixai_dir, admin_token=None)
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/admin/index/reload", headers={"Authorization": "Bearer x"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "admin_disabled"
        assert client.get("/api/search").json()["count"] == 0  # an empty index is no error
        assert client.get("/api/tags?prefix=a").json() == []
