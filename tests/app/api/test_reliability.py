"""What production does to a server: generated query strings by the hundred thousand, a
catalogue of broken and hostile image files, and abusive queries. The parser raises only
its typed error; the server answers each with a 2xx or a 4xx with a message, never a 500,
and stays up."""

from __future__ import annotations

import base64
import io
import random
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage

from app.query import QueryError, parse
from tests.support.api_helpers import ApiEnv, indexed_env
from tests.support.bad_images import png_chunk
from tests.support.paths import SHARED_DATA
from tests.support.query_fuzz import generated_queries


def test_100k_generated_queries_raise_only_the_typed_error() -> None:
    outcomes = {"parsed": 0, "refused": 0}
    for text in generated_queries(100_000):
        try:
            parse(text)
            outcomes["parsed"] += 1
        except QueryError as exc:
            assert 0 <= exc.position <= len(text), (text, exc)
            assert exc.message
            outcomes["refused"] += 1
    assert outcomes["parsed"] > 10_000 and outcomes["refused"] > 10_000, outcomes


@pytest.fixture(scope="module", params=["sqlite"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> Iterator[ApiEnv]:
    yield from indexed_env(request, tmp_path_factory.mktemp("rel"), tiny_pixai_dir)


def test_generated_queries_never_cause_a_server_error(env: ApiEnv) -> None:
    statuses: dict[int, int] = {}
    for text in generated_queries(1500, seed=1):
        response = env.client.get("/api/search", params={"q": text, "limit": 5})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (200, 400, 422), (text, response.text)
        if response.status_code != 200:
            assert response.json()["error"]["message"]
    assert statuses.get(200) and statuses.get(400), statuses


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("a " * 4_999, 400, "query_too_many_terms"),
        ("x" * 10_001, 422, "invalid_request"),
        ("(" * 1000 + "solo" + ")" * 1000, 400, "query_too_deep"),
        (" or ".join(f"tag{i}" for i in range(10_000))[:10_000], 400, "query_too_many_terms"),
        ("~" + " ~".join(f"t{i}" for i in range(1200)), 400, "query_too_many_terms"),
        ("-" * 5000 + "solo", 400, None),
    ],
)
def test_abusive_queries_are_bounded(env: ApiEnv, query: str, status: int, code: str) -> None:
    response = env.client.get("/api/search", params={"q": query})
    assert response.status_code == status, response.text[:300]
    if code:
        assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("pattern", ["*", "**", "*_*", "*a*", "a* b* c* d*"])
def test_wildcards_matching_everything_are_bounded_and_answered(env: ApiEnv, pattern: str) -> None:
    response = env.client.get("/api/search", params={"q": pattern})
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        assert response.json()["count"] <= len(env.client.get("/api/search").json()["items"])


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge canvas, with almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", body)
        + png_chunk(b"IEND", b"")
    )


def bomb_png() -> bytes:
    """A 16000x16000 black PNG: 256 Mpx (over the pixel limit) in about 100 kB."""
    rows = zlib.compressobj(9)
    raw = bytearray()
    line = b"\0" + b"\0" * 16000
    for _ in range(16000):
        raw += rows.compress(line)
    raw += rows.flush()
    header = struct.pack(">IIBBBBB", 16000, 16000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", bytes(raw))
        + png_chunk(b"IEND", b"")
    )


def zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * 20_000_000)
    return buffer.getvalue()


def valid_jpeg() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 48), (200, 100, 50)).save(buffer, "JPEG")
    return buffer.getvalue()


GENERATED = {
    "empty.png": b"",
    "text.png": b"hello, I am not an image",
    "html.jpg": b"<html><body>nope</body></html>",
    "svg.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "truncated.jpg": valid_jpeg()[:200],
    "truncated-header.png": huge_png(10, 10)[:20],
    "huge-dimensions.png": huge_png(100_000, 100_000),
    "bomb.png": bomb_png(),
    "zip-bomb.png": zip_bomb(),
    "random.webp": random.Random(3).randbytes(5000),
    "valid.jpg": valid_jpeg(),
}


def bad_files() -> list[tuple[str, bytes]]:
    files = list(GENERATED.items())
    catalogue = SHARED_DATA / "images" / "danbooru_test_files"
    if catalogue.is_dir():
        files += [
            (str(p.relative_to(catalogue)), p.read_bytes())
            for p in sorted(catalogue.rglob("*"))
            if p.is_file() and p.stat().st_size < 20_000_000
        ]
    return files


def test_hostile_uploads_get_a_4xx_with_a_message_and_the_server_stays_up(env: ApiEnv) -> None:
    seen = {"ok": 0, "refused": 0}
    for name, data in bad_files():
        encoded = base64.b64encode(data).decode()
        responses = [
            env.client.post("/api/similar", files={"file": (name, data, "image/png")}),
            env.client.post("/api/tag", json={"inputs": {"image": encoded}}),
            env.client.post("/evaluate", files={"file": (name, data)}),
        ]
        for response in responses:
            assert response.status_code in (200, 413, 415), (name, response.text[:300])
            if response.status_code == 200:
                seen["ok"] += 1
            else:
                seen["refused"] += 1
                error = response.json()["error"]  # /api/tag's is Hugging Face's: a string
                assert error if isinstance(error, str) else error["message"], name
        assert env.client.get("/healthz").status_code == 200
    assert seen["ok"] >= 3 and seen["refused"] >= 3 * (len(GENERATED) - 1), seen


def test_the_shared_bad_file_catalogue_is_used_when_present() -> None:
    catalogue = SHARED_DATA / "images" / "danbooru_test_files"
    if not catalogue.is_dir():
        pytest.skip(f"real data not present: {catalogue}")
    assert len(bad_files()) > len(GENERATED) + 20
