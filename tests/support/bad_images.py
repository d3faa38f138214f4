"""Generators for the bad-image catalogue: each function writes one real file and returns it.

Nothing here is a checked-in binary fixture. Ordinary encodings come from Pillow, pixel
layouts from numpy, and the files Pillow refuses to write (16-bit colour PNGs, a PNG whose
header claims 100000x100000, damaged chunks) are assembled by hand with ``struct`` and
``zlib``. ``build_catalogue`` writes the whole set into one directory.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.index_helpers import make_image

RGB = tuple[int, int, int]

RED: RGB = (255, 0, 0)
GREEN: RGB = (0, 255, 0)
BLUE: RGB = (0, 0, 255)
YELLOW: RGB = (255, 255, 0)
WHITE: RGB = (255, 255, 255)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------------------
# Hand-written PNG


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_ihdr(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    return png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    )


def raw_png(
    width: int,
    height: int,
    *,
    bit_depth: int,
    colour_type: int,
    scanlines: bytes,
    extra_chunks: bytes = b"",
) -> bytes:
    """A PNG from already-filtered scanlines (each row: filter byte 0, then samples)."""
    return (
        PNG_SIGNATURE
        + png_ihdr(width, height, bit_depth, colour_type)
        + extra_chunks
        + png_chunk(b"IDAT", zlib.compress(scanlines))
        + png_chunk(b"IEND", b"")
    )


def sixteen_bit_scanlines(samples: np.ndarray) -> bytes:
    """(H, W) or (H, W, C) uint16 samples as big-endian PNG rows, filter type 0."""
    rows = samples.astype(">u2").reshape(samples.shape[0], -1)
    return b"".join(b"\x00" + row.tobytes() for row in rows)


def png_bit_depth(path: Path) -> int:
    """The bit depth field of a PNG's IHDR (byte 24 of the file)."""
    return path.read_bytes()[24]


# ---------------------------------------------------------------------------------------
# Orientation

UPRIGHT_SIZE = (64, 40)  # (width, height) as a viewer shows it: landscape
# Each quadrant of the upright picture has its own colour, so a wrong rotation or a missing
# mirror moves a known colour to a known wrong corner.
CORNERS: dict[str, RGB] = {
    "top_left": RED,
    "top_right": GREEN,
    "bottom_left": BLUE,
    "bottom_right": YELLOW,
}


def upright_quadrants() -> np.ndarray:
    width, height = UPRIGHT_SIZE
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 2] = CORNERS["top_left"]
    pixels[: height // 2, width // 2 :] = CORNERS["top_right"]
    pixels[height // 2 :, : width // 2] = CORNERS["bottom_left"]
    pixels[height // 2 :, width // 2 :] = CORNERS["bottom_right"]
    return pixels


def stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that EXIF ``orientation`` displays ``upright``.

    Written from the EXIF definition (where the stored 0th row and 0th column lie in the
    displayed picture), with numpy, independently of Pillow's transpose tables.
    """
    height, width = upright.shape[:2]
    swapped = orientation in (5, 6, 7, 8)
    rows, cols = np.indices((width, height) if swapped else (height, width))
    if orientation == 1:  # 0th row = top, 0th column = left
        source = (rows, cols)
    elif orientation == 2:  # top, right: mirrored left-right
        source = (rows, width - 1 - cols)
    elif orientation == 3:  # bottom, right: rotated 180
        source = (height - 1 - rows, width - 1 - cols)
    elif orientation == 4:  # bottom, left: mirrored top-bottom
        source = (height - 1 - rows, cols)
    elif orientation == 5:  # left, top: transposed
        source = (cols, rows)
    elif orientation == 6:  # right, top: display needs 90 degrees clockwise
        source = (cols, width - 1 - rows)
    elif orientation == 7:  # right, bottom: transverse
        source = (height - 1 - cols, width - 1 - rows)
    elif orientation == 8:  # left, bottom: display needs 90 degrees anticlockwise
        source = (height - 1 - cols, rows)
    else:
        raise ValueError(f"EXIF orientation must be 1..8, not {orientation}")
    return np.ascontiguousarray(upright[source])


def exif_jpeg(directory: Path, orientation: int) -> Path:
    """A JPEG whose stored pixels are rotated/mirrored, with the EXIF tag that undoes it."""
    stored = stored_for_orientation(upright_quadrants(), orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = directory / f"exif_orientation_{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=95, subsampling=0, exif=exif.tobytes())
    return path


# ---------------------------------------------------------------------------------------
# Colour modes

CMYK_BANDS: list[tuple[tuple[int, int, int, int], RGB]] = [
    ((255, 0, 0, 0), (0, 255, 255)),  # cyan
    ((0, 0, 255, 0), (255, 255, 0)),  # yellow
    ((0, 0, 0, 255), (0, 0, 0)),  # key (black)
]


def cmyk_jpeg(directory: Path) -> Path:
    """Three 16-pixel vertical bands: cyan, yellow, black (Adobe-style inverted CMYK)."""
    image = Image.new("CMYK", (16 * len(CMYK_BANDS), 16))
    for index, (ink, _) in enumerate(CMYK_BANDS):
        image.paste(ink, (16 * index, 0, 16 * (index + 1), 16))
    path = directory / "cmyk.jpg"
    image.save(path, quality=95)
    return path


def grey_png(directory: Path) -> Path:
    path = directory / "grey_L.png"
    Image.new("L", (8, 4), 100).save(path)
    return path


LA_PIXELS = [(100, 0), (100, 255), (0, 128)]  # (grey, alpha) in the first row


def grey_alpha_png(directory: Path) -> Path:
    image = Image.new("LA", (len(LA_PIXELS), 1))
    for x, value in enumerate(LA_PIXELS):
        image.putpixel((x, 0), value)
    path = directory / "grey_LA.png"
    image.save(path)
    return path


def bilevel_png(directory: Path) -> Path:
    """Mode "1": a 2x2 checkerboard of black and white."""
    image = Image.new("1", (2, 2), 0)
    image.putpixel((1, 0), 1)
    image.putpixel((0, 1), 1)
    path = directory / "bilevel_1bit.png"
    image.save(path)
    return path


# A 16-bit sample v is v * 255 / 65535 in 8 bits; a decoder that clips instead of scaling
# turns every value above 255 into white.
GREY16_VALUES = [65535, 32768, 65280, 1000, 256, 255, 0]
GREY16_EXPECTED = [255, 128, 254, 4, 1, 1, 0]


def grey16_png(directory: Path) -> Path:
    """16-bit greyscale written by Pillow from a mode I;16 image."""
    path = directory / "grey16.png"
    Image.fromarray(np.array([GREY16_VALUES], dtype=np.uint16)).save(path)
    return path


GREY16_TRANSPARENT = 1000


def grey16_trns_png(directory: Path) -> Path:
    """16-bit greyscale with a tRNS chunk making the sample value 1000 transparent."""
    samples = np.array([[0, GREY16_TRANSPARENT, 65535, 32768]], dtype=np.uint16)
    path = directory / "grey16_trns.png"
    path.write_bytes(
        raw_png(
            4,
            1,
            bit_depth=16,
            colour_type=0,
            scanlines=sixteen_bit_scanlines(samples),
            extra_chunks=png_chunk(b"tRNS", struct.pack(">H", GREY16_TRANSPARENT)),
        )
    )
    return path


RGB16_PIXELS = [(65535, 32768, 0), (0, 0, 65535), (0x1234, 0x5678, 0x9ABC)]
RGB16_EXPECTED = [(255, 128, 0), (0, 0, 255), (0x12, 0x56, 0x9A)]


def rgb16_png(directory: Path) -> Path:
    """16-bit-per-channel RGB (colour type 2); Pillow cannot write this, so by hand."""
    samples = np.array([RGB16_PIXELS], dtype=np.uint16)
    path = directory / "rgb16.png"
    path.write_bytes(
        raw_png(3, 1, bit_depth=16, colour_type=2, scanlines=sixteen_bit_scanlines(samples))
    )
    return path


RGBA16_PIXELS = [(65535, 0, 0, 65535), (65535, 0, 0, 0), (65535, 0, 0, 32768)]
RGBA16_EXPECTED = [RED, WHITE, (255, 127, 127)]


def rgba16_png(directory: Path) -> Path:
    """16-bit RGBA (colour type 6): opaque red, transparent red, half-transparent red."""
    samples = np.array([RGBA16_PIXELS], dtype=np.uint16)
    path = directory / "rgba16.png"
    path.write_bytes(
        raw_png(3, 1, bit_depth=16, colour_type=6, scanlines=sixteen_bit_scanlines(samples))
    )
    return path


LA16_PIXELS = [(0, 65535), (0, 0), (32768, 65535)]
LA16_EXPECTED = [(0, 0, 0), WHITE, (128, 128, 128)]


def grey_alpha16_png(directory: Path) -> Path:
    """16-bit grey + alpha (colour type 4)."""
    samples = np.array([LA16_PIXELS], dtype=np.uint16)
    path = directory / "grey_alpha16.png"
    path.write_bytes(
        raw_png(3, 1, bit_depth=16, colour_type=4, scanlines=sixteen_bit_scanlines(samples))
    )
    return path


# ---------------------------------------------------------------------------------------
# Palettes and transparency

PALETTE: list[RGB] = [RED, GREEN, (0, 0, 0), (10, 20, 30)]
TRANSPARENT_INDEX = 2
PALETTE_EXPECTED = [RED, GREEN, WHITE, (10, 20, 30)]


def _palette_image() -> Image.Image:
    image = Image.new("P", (len(PALETTE), 1))
    image.putpalette([channel for colour in PALETTE for channel in colour])
    image.putdata(list(range(len(PALETTE))))
    return image


def palette_png_trns(directory: Path) -> Path:
    """Palette PNG whose tRNS makes index 2 (black) fully transparent."""
    path = directory / "palette_trns.png"
    _palette_image().save(path, transparency=TRANSPARENT_INDEX)
    return path


# tRNS with one alpha per palette entry: green at alpha 128 composites to (127, 255, 127).
PALETTE_ALPHAS = bytes([255, 128, 0, 255])
PALETTE_ALPHA_EXPECTED = [RED, (127, 255, 127), WHITE, (10, 20, 30)]


def palette_png_alpha(directory: Path) -> Path:
    path = directory / "palette_alpha.png"
    _palette_image().save(path, transparency=PALETTE_ALPHAS)
    return path


def palette_gif_transparent(directory: Path) -> Path:
    """GIF with a transparent colour index (2)."""
    path = directory / "palette_transparent.gif"
    _palette_image().save(path, transparency=TRANSPARENT_INDEX)
    return path


RGBA_PIXELS = [(0, 0, 0, 0), (0, 255, 0, 0), (255, 0, 0, 128), (0, 0, 255, 255)]
RGBA_EXPECTED = [WHITE, WHITE, (255, 127, 127), BLUE]


def rgba_png(directory: Path) -> Path:
    """Transparent black, transparent green (hidden colour must not leak), half red, blue."""
    image = Image.new("RGBA", (len(RGBA_PIXELS), 1))
    for x, value in enumerate(RGBA_PIXELS):
        image.putpixel((x, 0), value)
    path = directory / "rgba.png"
    image.save(path)
    return path


def rgba_fully_transparent_png(directory: Path) -> Path:
    path = directory / "rgba_fully_transparent.png"
    Image.new("RGBA", (16, 16), (30, 60, 90, 0)).save(path)
    return path


# ---------------------------------------------------------------------------------------
# Animation: frame 0 is red, frame 1 is blue

ANIMATION_SIZE = (16, 16)


def _frames() -> tuple[Image.Image, Image.Image]:
    return Image.new("RGB", ANIMATION_SIZE, RED), Image.new("RGB", ANIMATION_SIZE, BLUE)


def animated_gif(directory: Path) -> Path:
    first, second = _frames()
    path = directory / "animated.gif"
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    return path


def animated_png(directory: Path) -> Path:
    first, second = _frames()
    path = directory / "animated.png"
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    return path


def animated_webp(directory: Path) -> Path:
    first, second = _frames()
    path = directory / "animated.webp"
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0, lossless=True)
    return path


def apng_with_default_image(directory: Path) -> Path:
    """An APNG whose IDAT image (red) is a still for old viewers, outside the animation
    (green, then blue)."""
    red, blue = _frames()
    green = Image.new("RGB", ANIMATION_SIZE, GREEN)
    path = directory / "apng_default_image.png"
    red.save(path, save_all=True, append_images=[green, blue], default_image=True, duration=100)
    return path


# ---------------------------------------------------------------------------------------
# Size limits and bombs


def png_header_claiming(directory: Path, name: str, width: int, height: int) -> Path:
    """A tiny PNG whose IHDR claims width x height (RGB, 8-bit), with almost no data."""
    path = directory / name
    path.write_bytes(raw_png(width, height, bit_depth=8, colour_type=2, scanlines=b"\x00" * 64))
    return path


def jpeg_header_claiming(directory: Path, name: str, width: int, height: int) -> Path:
    """A real 8x8 JPEG with its SOF0 frame header patched to claim width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), RED).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = jpeg_segment(bytes(data), 0xC0)
    # SOF0: marker(2) length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path = directory / name
    path.write_bytes(bytes(data))
    return path


def jpeg_segment(data: bytes, marker: int) -> int:
    """Offset of the first segment with ``marker`` (walking segment lengths from SOI)."""
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise ValueError(f"not at a JPEG marker at offset {offset}")
        if data[offset + 1] == marker:
            return offset
        offset += 2 + struct.unpack(">H", data[offset + 2 : offset + 4])[0]
    raise ValueError(f"no JPEG marker 0x{marker:02X}")


def large_png(directory: Path, width: int, height: int) -> Path:
    """A genuine, fully decodable image (solid colour, so the file stays small)."""
    path = directory / f"large_{width}x{height}.png"
    Image.new("RGB", (width, height), GREEN).save(path)
    return path


BOMB_ZEROS = 20_000_000


def gzip_renamed_png(directory: Path) -> Path:
    """20 MB of zeros, gzipped to ~20 KB, named like an image."""
    path = directory / "bomb.png"
    path.write_bytes(gzip.compress(b"\x00" * BOMB_ZEROS, compresslevel=9))
    return path


def zip_renamed_jpg(directory: Path) -> Path:
    """A zip archive holding 20 MB of zeros, named like an image."""
    path = directory / "bomb.jpg"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("zeros.bin", b"\x00" * BOMB_ZEROS)
    return path


def _red_rows(width: int, height: int) -> bytes:
    return (b"\x00" + bytes(RED) * width) * height


def png_text_bomb(directory: Path) -> Path:
    """A valid 4x4 PNG carrying a zTXt chunk that inflates to 5 MB (Pillow caps text at 1 MB)."""
    text = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * 5_000_000, 9))
    path = directory / "ztxt_bomb.png"
    path.write_bytes(
        raw_png(4, 4, bit_depth=8, colour_type=2, scanlines=_red_rows(4, 4), extra_chunks=text)
    )
    return path


def png_idat_overflow(directory: Path) -> Path:
    """A valid 4x4 PNG whose IDAT inflates to 20 MB more than the image needs."""
    path = directory / "idat_overflow.png"
    path.write_bytes(
        raw_png(4, 4, bit_depth=8, colour_type=2, scanlines=_red_rows(4, 4) + b"\x00" * BOMB_ZEROS)
    )
    return path


# ---------------------------------------------------------------------------------------
# Truncated and corrupt


def _noise(seed: int, width: int = 256, height: int = 256) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _cut(source: Path, name: str, length: int) -> Path:
    path = source.with_name(name)
    path.write_bytes(source.read_bytes()[:length])
    return path


def truncated_jpeg(directory: Path) -> Path:
    """Random noise (so the scan data is large) as JPEG, cut in half."""
    whole = directory / "whole_noise.jpg"
    _noise(1).save(whole, quality=90)
    return _cut(whole, "truncated_half.jpg", whole.stat().st_size // 2)


def jpeg_cut_in_header(directory: Path) -> Path:
    """A JPEG cut after 100 bytes, inside its quantisation tables."""
    whole = directory / "whole_noise_2.jpg"
    _noise(2).save(whole, quality=90)
    return _cut(whole, "truncated_header.jpg", 100)


def truncated_png(directory: Path) -> Path:
    whole = directory / "whole_noise.png"
    _noise(3).save(whole)
    return _cut(whole, "truncated_half.png", whole.stat().st_size // 2)


def png_cut_in_ihdr(directory: Path) -> Path:
    """Signature, chunk length and type, then only 4 of IHDR's 13 bytes."""
    path = directory / "truncated_ihdr.png"
    path.write_bytes(raw_png(4, 4, bit_depth=8, colour_type=2, scanlines=b"")[:20])
    return path


def corrupt_png_data(directory: Path) -> Path:
    """A valid signature and IHDR, then an IDAT of random bytes (with a correct CRC)."""
    garbage = np.random.default_rng(4).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    path = directory / "corrupt_idat.png"
    path.write_bytes(
        PNG_SIGNATURE
        + png_ihdr(64, 64, 8, 2)
        + png_chunk(b"IDAT", garbage)
        + png_chunk(b"IEND", b"")
    )
    return path


def png_bad_header_crc(directory: Path) -> Path:
    """IHDR with a wrong CRC."""
    ihdr = bytearray(png_ihdr(4, 4, 8, 2))
    ihdr[-4:] = b"\x00\x00\x00\x00"
    path = directory / "bad_ihdr_crc.png"
    path.write_bytes(PNG_SIGNATURE + bytes(ihdr) + png_chunk(b"IEND", b""))
    return path


def png_without_idat(directory: Path) -> Path:
    path = directory / "no_idat.png"
    path.write_bytes(PNG_SIGNATURE + png_ihdr(8, 8, 8, 2) + png_chunk(b"IEND", b""))
    return path


def jpeg_garbage_scan(directory: Path) -> Path:
    """Valid JPEG headers, then random bytes where the entropy-coded scan should be."""
    buffer = io.BytesIO()
    _noise(5, 64, 64).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    scan = jpeg_segment(data, 0xDA)
    header_end = scan + 2 + struct.unpack(">H", data[scan + 2 : scan + 4])[0]
    garbage = np.random.default_rng(5).integers(0, 255, 3000, dtype=np.uint8).tobytes()
    path = directory / "garbage_scan.jpg"
    path.write_bytes(data[:header_end] + garbage + b"\xff\xd9")
    return path


def jpeg_zero_height(directory: Path) -> Path:
    return jpeg_header_claiming(directory, "zero_height.jpg", 8, 0)


# ---------------------------------------------------------------------------------------
# Not images


def random_bytes(directory: Path) -> Path:
    path = directory / "random.jpg"
    path.write_bytes(np.random.default_rng(6).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def empty_file(directory: Path) -> Path:
    path = directory / "empty.png"
    path.write_bytes(b"")
    return path


def html_named_jpg(directory: Path) -> Path:
    """What a failed download usually leaves behind: an error page saved as .jpg."""
    path = directory / "error_page.jpg"
    path.write_text(
        "<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n"
        "<body><h1>403 Forbidden</h1></body></html>\n",
        encoding="utf-8",
    )
    return path


def jpeg_named_png(directory: Path) -> Path:
    path = directory / "actually_a_jpeg.png"
    Image.new("RGB", (24, 12), BLUE).save(path, "JPEG", quality=95)
    return path


def ordinary_png(directory: Path) -> Path:
    path = directory / "ordinary.png"
    Image.new("RGB", (30, 20), RED).save(path)
    return path


# ---------------------------------------------------------------------------------------


def build_catalogue(directory: Path) -> dict[str, Path]:
    """Write every generated case into ``directory``; name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Path] = {
        f"exif_{orientation}": exif_jpeg(directory, orientation) for orientation in range(1, 9)
    }
    cases |= {
        "cmyk_jpeg": cmyk_jpeg(directory),
        "grey_L": grey_png(directory),
        "grey_LA": grey_alpha_png(directory),
        "bilevel_1bit": bilevel_png(directory),
        "grey16": grey16_png(directory),
        "grey16_trns": grey16_trns_png(directory),
        "rgb16": rgb16_png(directory),
        "rgba16": rgba16_png(directory),
        "grey_alpha16": grey_alpha16_png(directory),
        "palette_png_trns": palette_png_trns(directory),
        "palette_png_alpha": palette_png_alpha(directory),
        "palette_gif_transparent": palette_gif_transparent(directory),
        "rgba": rgba_png(directory),
        "rgba_fully_transparent": rgba_fully_transparent_png(directory),
        "animated_gif": animated_gif(directory),
        "animated_png": animated_png(directory),
        "animated_webp": animated_webp(directory),
        "apng_default_image": apng_with_default_image(directory),
        "bomb_png_100000x100000": png_header_claiming(
            directory, "bomb_100000x100000.png", 100_000, 100_000
        ),
        "bomb_png_20000x10000": png_header_claiming(
            directory, "bomb_20000x10000.png", 20_000, 10_000
        ),
        "bomb_jpeg_65000x65000": jpeg_header_claiming(
            directory, "bomb_65000x65000.jpg", 65_000, 65_000
        ),
        "large_2000x1500": large_png(directory, 2000, 1500),
        "gzip_renamed_png": gzip_renamed_png(directory),
        "zip_renamed_jpg": zip_renamed_jpg(directory),
        "ztxt_bomb": png_text_bomb(directory),
        "idat_overflow": png_idat_overflow(directory),
        "truncated_jpeg": truncated_jpeg(directory),
        "truncated_jpeg_header": jpeg_cut_in_header(directory),
        "truncated_png": truncated_png(directory),
        "truncated_png_ihdr": png_cut_in_ihdr(directory),
        "corrupt_png_idat": corrupt_png_data(directory),
        "png_bad_ihdr_crc": png_bad_header_crc(directory),
        "png_no_idat": png_without_idat(directory),
        "jpeg_garbage_scan": jpeg_garbage_scan(directory),
        "jpeg_zero_height": jpeg_zero_height(directory),
        "random_bytes": random_bytes(directory),
        "empty": empty_file(directory),
        "html_named_jpg": html_named_jpg(directory),
        "jpeg_named_png": jpeg_named_png(directory),
        "ordinary_png": ordinary_png(directory),
    }
    return cases


def invalid_apng(path: Path) -> Path:
    """A PNG whose acTL chunk claims 0 frames: Pillow warns and decodes the still image."""
    make_image(path, seed=5)
    data = path.read_bytes()
    body = b"acTL" + struct.pack(">II", 0, 0)
    chunk = struct.pack(">I", 8) + body + struct.pack(">I", zlib.crc32(body))
    after_header = 8 + 8 + 13 + 4  # signature, IHDR
    path.write_bytes(data[:after_header] + chunk + data[after_header:])
    return path


def png_bomb(width: int, height: int) -> bytes:
    """A genuine, fully decodable 8-bit grey PNG of zeros: width*height bytes decoded, a
    thousandth of that on the wire. Compressed row by row, so making it costs no memory."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then the samples
    parts = [packer.compress(row) for _ in range(height)]
    parts.append(packer.flush())
    return (
        PNG_SIGNATURE
        + png_ihdr(width, height, 8, 0)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )
