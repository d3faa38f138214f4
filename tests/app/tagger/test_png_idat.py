"""Each file handed to Pillow's decoder in one call: a PNG's IDAT chunks joined, a JPEG in
one block, with the pixels, sizes and errors Pillow gives when it feeds its decoder in
blocks (the reason is the GIL: app.tagger.png_idat, docs/benchmarks.md)."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from app.settings import Settings
from app.tagger.decode import decode_with_meta, to_rgb
from app.tagger.png_idat import PNG_SIGNATURE, coalesce_idat
from tests.support import bad_images as bad
from tests.support.paths import shared_path

# The configured default: a larger limit would raise Pillow's process-wide one for the tests
# that run after these (app.tagger.decode never lowers it).
MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default

pytestmark = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore:Invalid APNG:UserWarning"),
]


def chunks(data: bytes) -> Iterator[tuple[bytes, bytes, int]]:
    """Each chunk's type, data and stored CRC."""
    position = len(PNG_SIGNATURE)
    while position < len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack_from(">I", data, position + 8 + length)
        yield kind, body, crc
        position += 12 + length


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body))


def split_idat(data: bytes, size: int) -> bytes:
    """The PNG with its image data in IDAT chunks of ``size`` bytes (libpng writes 8 KiB)."""
    out = [PNG_SIGNATURE]
    idat = b"".join(body for kind, body, _ in chunks(data) if kind == b"IDAT")
    for kind, body, _ in chunks(data):
        if kind == b"IDAT":
            if idat:
                out += [chunk(b"IDAT", idat[i : i + size]) for i in range(0, len(idat), size)]
                idat = b""
        else:
            out.append(chunk(kind, body))
    return b"".join(out)


def png(image: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def noise(mode: str, size: tuple[int, int] = (160, 120)) -> Image.Image:
    rng = np.random.default_rng(7)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    rgba = Image.fromarray(rng.integers(0, 256, (*size[::-1], 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        return rgba.convert("RGB").quantize(64)
    return rgba.convert(mode)


def pillow_as_is(data: bytes) -> np.ndarray:
    """Pillow's own reading of the file, in its default blocks, made RGB as Sagashi does."""
    with Image.open(io.BytesIO(data)) as image:
        # Pillow's own bomb limit is process-wide and other tests raise it: the catalogue's
        # bombs would decode (a 4.2-gigapixel JPEG among them).
        if image.width * image.height > MAX_PIXELS:
            raise ValueError("over the configured pixel limit")
        image.load()
        return np.asarray(to_rgb(ImageOps.exif_transpose(image)))


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(decode_with_meta(data, max_pixels=MAX_PIXELS)[0])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"])
def test_split_image_data_is_joined_and_decodes_as_pillow(mode: str) -> None:
    split = split_idat(png(noise(mode)), 8192)
    assert [kind for kind, _, _ in chunks(split)].count(b"IDAT") > 1 or mode == "1"
    joined = coalesce_idat(split)
    kinds = [kind for kind, _, _ in chunks(joined)]
    assert kinds.count(b"IDAT") == 1
    assert [k for k in kinds if k != b"IDAT"] == [k for k, _, _ in chunks(split) if k != b"IDAT"]
    for kind, body, crc in chunks(joined):
        assert zlib.crc32(kind + body) == crc
    assert np.array_equal(decoded(split), pillow_as_is(split))


def test_transparency_and_text_chunks_keep_their_meaning() -> None:
    image = noise("P")
    data = split_idat(png(image, transparency=3, optimize=False), 4096)
    assert np.array_equal(decoded(data), pillow_as_is(data))
    assert np.all(decoded(data)[np.asarray(image) == 3] == 255)  # transparent: white


def test_an_animated_png_keeps_its_first_frame() -> None:
    frames = [noise("RGB"), noise("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    data = split_idat(buffer.getvalue(), 8192)
    assert b"fdAT" in [kind for kind, _, _ in chunks(data)]
    assert np.array_equal(decoded(data), np.asarray(frames[0]))


def test_files_it_cannot_join_are_left_as_they_are() -> None:
    whole = split_idat(png(noise("RGB")), 8192)
    one_chunk = png(noise("RGB", (8, 8)))
    cut = whole[: len(whole) // 2]
    parts = list(chunks(whole))
    idats = [i for i, (kind, _, _) in enumerate(parts) if kind == b"IDAT"]
    apart = [*parts[: idats[1]], (b"tEXt", b"k\x00v", 0), *parts[idats[1] :]]
    apart_data = PNG_SIGNATURE + b"".join(chunk(kind, body) for kind, body, _ in apart)
    for data in (b"\xff\xd8\xff\xe0 not a png", one_chunk, cut, apart_data, b""):
        assert coalesce_idat(data) is data


class CountingDecoder:
    """Pillow's decoder, counting the calls it is given data in."""

    calls = 0

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def decode(self, data: bytes) -> Any:
        CountingDecoder.calls += 1
        return self.inner.decode(data)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> type[CountingDecoder]:
    real = Image._getdecoder
    monkeypatch.setattr(Image, "_getdecoder", lambda *a: CountingDecoder(real(*a)))
    CountingDecoder.calls = 0
    return CountingDecoder


def test_a_png_is_decoded_in_one_call(counted: type[CountingDecoder]) -> None:
    data = split_idat(png(noise("RGB", (512, 512))), 8192)
    assert len(data) > 20 * 8192
    decoded(data)
    assert counted.calls == 1


def test_a_jpeg_is_decoded_in_one_call_from_bytes_or_a_file(
    counted: type[CountingDecoder], tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    noise("RGB", (800, 600)).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    assert len(data) > 4 * 65536
    decoded(data)
    assert counted.calls == 1
    path = tmp_path / "noise.jpg"
    path.write_bytes(data)
    decode_with_meta(path, max_pixels=MAX_PIXELS)
    assert counted.calls == 2


def test_the_bad_image_catalogue_decodes_as_pillow_reads_it(tmp_path: Path) -> None:
    """Every decodable file of the catalogue, its image data split as libpng splits it where
    it is a PNG, gives Pillow's own pixels (the refusals are pinned in test_decode)."""
    checked = 0
    for name, path in sorted(bad.build_catalogue(tmp_path).items()):
        data = path.read_bytes()
        if data.startswith(PNG_SIGNATURE):
            data = split_idat(data, 8192) if b"IEND" in data else data
        try:
            expected = pillow_as_is(data)
        except Exception:  # Pillow refuses it: test_decode pins Sagashi's message
            continue
        assert np.array_equal(decoded(data), expected), name
        checked += 1
    assert checked >= 20


@pytest.mark.shared_data
def test_real_anime_pngs_split_as_libpng_decode_as_pillow() -> None:
    folder = shared_path("images", "sdeval_anime")
    pngs = sorted(folder.rglob("*.png"))[:8]
    assert pngs
    for path in pngs:
        data = split_idat(path.read_bytes(), 8192)
        assert np.array_equal(decoded(data), pillow_as_is(data)), path.name
