"""The bad-image catalogue: every odd or broken file the decoder must survive, on disk.

Each case is a real file written by ``tests/support/bad_images.py``; each test pins the exact
outcome: the decoded pixels for files that should decode, the error code and a specific
message for files that should not. The last part runs Danbooru's own catalogue of odd and
broken files (``../shared/data``) through the batch path.
"""

from __future__ import annotations

import csv
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.settings import Settings
from app.tagger.batching import prepare, tag_sources
from app.tagger.decode import decode_image
from app.tagger.errors import ImageDecodeError
from app.tagger.preprocess import Preprocess, normalise_one
from app.tagger.protocol import Prediction
from tests.support import bad_images as bad
from tests.support.paths import SHARED_DATA, shared_path

KNOWN_CODES = {
    "not_found",
    "unreadable",
    "empty",
    "not_an_image",
    "too_large",
    "truncated",
    "corrupt",
}
DEFAULT_MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default
NOT_AN_IMAGE = "not a recognised image format"

# decode.py silences Pillow's bomb warning process-wide, but pytest resets warning filters
# per test; the warning is expected in the size-limit tests, as is Pillow's note on the
# malformed APNGs in Danbooru's catalogue.
pytestmark = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore:Invalid APNG:UserWarning"),
]

PREPROCESS = Preprocess(
    size=32,
    resize="pad",
    interpolation="bicubic",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    channel_order="BGR",
)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return bad.build_catalogue(tmp_path_factory.mktemp("bad_images"))


def decode(
    source: str | os.PathLike[str] | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, **kw: object
) -> np.ndarray:
    image = decode_image(source, max_pixels=max_pixels, **kw)  # type: ignore[arg-type]
    assert image.mode == "RGB"
    return np.asarray(image)


def refused(
    source: str | os.PathLike[str] | bytes, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(source, max_pixels=max_pixels)
    error = caught.value
    assert error.code in KNOWN_CODES
    assert error.message == str(error)
    assert error.as_dict() == {"code": error.code, "message": error.message}
    return error


def first_row(pixels: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in pixel) for pixel in pixels[0]]


def assert_close(actual: np.ndarray | tuple[int, ...], expected: tuple[int, ...], tol: int) -> None:
    diff = np.abs(np.asarray(actual, dtype=int) - np.asarray(expected, dtype=int))
    assert diff.max() <= tol, f"{tuple(int(v) for v in actual)} != {expected} (tolerance {tol})"


# ---------------------------------------------------------------------------------------
# EXIF orientation


def corner_samples(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Colours sampled well inside each quadrant's outer corner (away from JPEG ringing)."""
    height, width = pixels.shape[:2]
    inset = 6
    return {
        "top_left": pixels[inset, inset],
        "top_right": pixels[inset, width - 1 - inset],
        "bottom_left": pixels[height - 1 - inset, inset],
        "bottom_right": pixels[height - 1 - inset, width - 1 - inset],
    }


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_decodes_upright(catalogue: dict[str, Path], orientation: int) -> None:
    path = catalogue[f"exif_{orientation}"]
    with Image.open(path) as stored:
        assert stored.getexif()[0x0112] == orientation
        width, height = bad.UPRIGHT_SIZE
        # Orientations 5-8 store the picture on its side: the stored size is swapped.
        assert stored.size == ((height, width) if orientation >= 5 else (width, height))
    pixels = decode(path)
    assert (pixels.shape[1], pixels.shape[0]) == bad.UPRIGHT_SIZE
    for corner, colour in corner_samples(pixels).items():
        assert_close(colour, bad.CORNERS[corner], tol=40)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_and_jpeg_draft_together(
    catalogue: dict[str, Path], orientation: int
) -> None:
    # The draft request is made on the stored (sideways) size; the reduced decode must
    # still come out upright.
    preprocess = Preprocess(
        size=8,
        resize="pad",
        interpolation="bilinear",
        mean=(0, 0, 0),
        std=(1, 1, 1),
        channel_order="RGB",
    )
    pixels = decode(catalogue[f"exif_{orientation}"], draft=preprocess.draft_request)
    assert (pixels.shape[1], pixels.shape[0]) == (16, 10)  # 64x40 at DCT scale 1/4
    height, width = pixels.shape[:2]
    assert_close(pixels[1, 1], bad.CORNERS["top_left"], tol=60)
    assert_close(pixels[1, width - 2], bad.CORNERS["top_right"], tol=60)
    assert_close(pixels[height - 2, 1], bad.CORNERS["bottom_left"], tol=60)
    assert_close(pixels[height - 2, width - 2], bad.CORNERS["bottom_right"], tol=60)


# ---------------------------------------------------------------------------------------
# Colour modes


def test_cmyk_jpeg_becomes_rgb(catalogue: dict[str, Path]) -> None:
    with Image.open(catalogue["cmyk_jpeg"]) as stored:
        assert stored.mode == "CMYK"
    pixels = decode(catalogue["cmyk_jpeg"])
    for index, (_, rgb) in enumerate(bad.CMYK_BANDS):
        assert_close(pixels[8, 16 * index + 8], rgb, tol=10)


def test_greyscale_modes(catalogue: dict[str, Path]) -> None:
    assert np.all(decode(catalogue["grey_L"]) == 100)
    # LA: alpha 0 -> white; opaque grey stays; black at alpha 128 over white -> 127.
    assert first_row(decode(catalogue["grey_LA"])) == [(255,) * 3, (100,) * 3, (127,) * 3]
    bilevel = decode(catalogue["bilevel_1bit"])
    assert bilevel[:, :, 0].tolist() == [[0, 255], [255, 0]]
    assert np.all(bilevel[:, :, 0:1] == bilevel)


def test_16bit_greyscale_is_scaled_not_clipped(catalogue: dict[str, Path]) -> None:
    path = catalogue["grey16"]
    assert bad.png_bit_depth(path) == 16
    with Image.open(path) as stored:
        assert stored.mode in ("I;16", "I;16B", "I")
    pixels = decode(path)
    assert pixels[0, :, 0].tolist() == bad.GREY16_EXPECTED
    assert np.all(pixels[:, :, 0:1] == pixels)


def test_16bit_greyscale_trns_becomes_white(catalogue: dict[str, Path]) -> None:
    # tRNS on 16-bit grey names one sample value (1000) as fully transparent.
    pixels = decode(catalogue["grey16_trns"])
    assert pixels[0, :, 0].tolist() == [0, 255, 255, 128]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("rgb16", bad.RGB16_EXPECTED),
        ("rgba16", bad.RGBA16_EXPECTED),
        ("grey_alpha16", bad.LA16_EXPECTED),
    ],
)
def test_16bit_colour_png(catalogue: dict[str, Path], case: str, expected: list[bad.RGB]) -> None:
    assert bad.png_bit_depth(catalogue[case]) == 16
    row = first_row(decode(catalogue[case]))
    assert len(row) == len(expected)
    for actual, wanted in zip(row, expected, strict=True):
        assert_close(actual, wanted, tol=1)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("palette_png_trns", bad.PALETTE_EXPECTED),
        ("palette_gif_transparent", bad.PALETTE_EXPECTED),
        ("palette_png_alpha", bad.PALETTE_ALPHA_EXPECTED),
    ],
)
def test_palette_transparency_becomes_white(
    catalogue: dict[str, Path], case: str, expected: list[bad.RGB]
) -> None:
    with Image.open(catalogue[case]) as stored:
        assert stored.mode == "P"
        assert "transparency" in stored.info
    assert first_row(decode(catalogue[case])) == expected


def test_rgba_composited_on_white(catalogue: dict[str, Path]) -> None:
    assert first_row(decode(catalogue["rgba"])) == bad.RGBA_EXPECTED
    assert np.all(decode(catalogue["rgba_fully_transparent"]) == 255)


# ---------------------------------------------------------------------------------------
# Animation


@pytest.mark.parametrize("case", ["animated_gif", "animated_png", "animated_webp"])
def test_animation_decodes_first_frame(catalogue: dict[str, Path], case: str) -> None:
    with Image.open(catalogue[case]) as stored:
        # n_frames: the animated formats' plugins have it, ImageFile does not declare it.
        assert getattr(stored, "n_frames", 1) == 2
    pixels = decode(catalogue[case])
    assert (pixels.shape[1], pixels.shape[0]) == bad.ANIMATION_SIZE
    assert np.all(pixels == bad.RED)


def test_apng_default_image_is_frame_zero(catalogue: dict[str, Path]) -> None:
    # An APNG may carry a still (IDAT) that is not part of the animation. Pillow counts it
    # as frame 0, so that still (what non-APNG viewers show) is what gets tagged.
    with Image.open(catalogue["apng_default_image"]) as stored:
        assert getattr(stored, "n_frames", 1) == 3
        assert stored.info.get("default_image") is True
    assert np.all(decode(catalogue["apng_default_image"]) == bad.RED)


# ---------------------------------------------------------------------------------------
# Size limits and bombs


def test_header_bomb_is_refused_with_pixel_count_and_setting(catalogue: dict[str, Path]) -> None:
    path = catalogue["bomb_png_100000x100000"]
    assert path.stat().st_size < 100  # the whole "image" is a header
    error = refused(path)
    assert error.code == "too_large"
    assert error.message == (
        "image is 10,000,000,000 pixels, over the limit of 178,956,970 "
        "(SAGASHI_MAX_IMAGE_PIXELS); refused before decoding as a possible decompression bomb"
    )
    smaller_limit = refused(path, max_pixels=1_000_000)
    assert "10,000,000,000 pixels" in smaller_limit.message
    assert "over the limit of 1,000,000 (SAGASHI_MAX_IMAGE_PIXELS)" in smaller_limit.message


@pytest.mark.parametrize(
    ("case", "pixels"),
    [("bomb_png_20000x10000", "200,000,000"), ("bomb_jpeg_65000x65000", "4,225,000,000")],
)
def test_above_pillows_own_bomb_threshold(
    catalogue: dict[str, Path], case: str, pixels: str
) -> None:
    # Just above Pillow's hard limit (2 * Image.MAX_IMAGE_PIXELS = 178,956,970, which is
    # also the default SAGASHI_MAX_IMAGE_PIXELS): Pillow refuses inside Image.open.
    error = refused(catalogue[case])
    assert error.code == "too_large"
    assert f"image is {pixels} pixels, over the limit of 178,956,970" in error.message
    assert "SAGASHI_MAX_IMAGE_PIXELS" in error.message


def test_header_between_configured_limit_and_pillows(tmp_path: Path) -> None:
    path = bad.png_header_claiming(tmp_path, "claims_12000x10000.png", 12_000, 10_000)
    error = refused(path, max_pixels=100_000_000)
    assert error.code == "too_large"
    assert error.message == (
        "12000x10000 is 120,000,000 pixels, over the limit of 100,000,000 "
        "(SAGASHI_MAX_IMAGE_PIXELS)"
    )


def test_real_image_over_a_small_configured_limit(catalogue: dict[str, Path]) -> None:
    path = catalogue["large_2000x1500"]
    error = refused(path, max_pixels=1_000_000)
    assert error.code == "too_large"
    assert error.message == (
        "2000x1500 is 3,000,000 pixels, over the limit of 1,000,000 (SAGASHI_MAX_IMAGE_PIXELS)"
    )
    assert decode(path, max_pixels=3_000_000).shape == (1500, 2000, 3)  # the limit is inclusive


def test_configured_limit_above_pillows_threshold_is_honoured(
    catalogue: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scaled down: Pillow's hard limit at 200,000 pixels stands in for its 178,956,970.
    # A SAGASHI_MAX_IMAGE_PIXELS above Pillow's limit must let bigger images through ...
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    path = catalogue["large_2000x1500"]
    assert decode(path, max_pixels=3_000_000).shape == (1500, 2000, 3)
    # ... and images over the configured limit are still refused, naming the setting.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    error = refused(path, max_pixels=1_000_000)
    assert error.code == "too_large"
    assert "3,000,000 pixels, over the limit of 1,000,000 (SAGASHI_MAX_IMAGE_PIXELS)" in (
        error.message
    )


def test_decoding_never_lowers_pillows_limit(
    catalogue: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**9)
    decode(catalogue["ordinary_png"], max_pixels=1_000)
    assert Image.MAX_IMAGE_PIXELS == 10**9


@pytest.mark.parametrize("case", ["gzip_renamed_png", "zip_renamed_jpg"])
def test_archive_bomb_renamed_as_image(catalogue: dict[str, Path], case: str) -> None:
    assert catalogue[case].stat().st_size < 50_000  # 20 MB of zeros inside
    error = refused(catalogue[case])
    assert (error.code, error.message) == ("not_an_image", NOT_AN_IMAGE)


def test_png_text_chunk_bomb(catalogue: dict[str, Path]) -> None:
    # A zTXt chunk inflating past Pillow's 1 MB text cap fails while the header is read.
    error = refused(catalogue["ztxt_bomb"])
    assert error.code == "corrupt"
    assert error.message == (
        "corrupt image header: Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK"
    )


def test_png_idat_with_excess_data_decodes(catalogue: dict[str, Path]) -> None:
    # Decoding stops once the 4x4 image is full; the 20 MB of excess is never inflated.
    assert np.all(decode(catalogue["idat_overflow"]) == bad.RED)


# ---------------------------------------------------------------------------------------
# Truncated, corrupt, not images

ERROR_CASES: dict[str, tuple[str, str]] = {
    # case: (code, the message, or its start when Pillow adds a byte count)
    "truncated_jpeg": ("truncated", "truncated file: image file is truncated ("),
    "truncated_png": ("truncated", "truncated file: image file is truncated"),
    "truncated_jpeg_header": (
        "truncated",
        "truncated file, header incomplete: Truncated File Read",
    ),
    "truncated_png_ihdr": ("truncated", "truncated file, header incomplete: Truncated File Read"),
    "corrupt_png_idat": (
        "corrupt",
        "cannot decode image data: broken data stream when reading image file",
    ),
    "png_no_idat": ("corrupt", "cannot decode image data: cannot load this image"),
    # Pillow cannot identify a PNG/JPEG whose header fails to parse; the message says what
    # the file claims to be.
    "png_bad_ihdr_crc": (
        "not_an_image",
        "not a recognised image format: the file starts with a PNG signature but its header "
        "cannot be read (damaged, or a variant this build cannot decode)",
    ),
    "jpeg_zero_height": (
        "not_an_image",
        "not a recognised image format: the file starts with a JPEG signature but its header "
        "cannot be read (damaged, or a variant this build cannot decode)",
    ),
    "random_bytes": ("not_an_image", NOT_AN_IMAGE),
    "html_named_jpg": ("not_an_image", NOT_AN_IMAGE),
    "empty": ("empty", "empty file (0 bytes)"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_broken_file_error(catalogue: dict[str, Path], case: str) -> None:
    code, message = ERROR_CASES[case]
    error = refused(catalogue[case])
    assert error.code == code
    if message.endswith("("):
        assert error.message.startswith(message)
        assert error.message.endswith(" bytes not processed)")
    else:
        assert error.message == message


def test_truncation_is_the_cut_not_the_format(catalogue: dict[str, Path]) -> None:
    # The uncut originals decode, so the error above is the cut.
    for name in ("whole_noise.jpg", "whole_noise.png"):
        assert decode(catalogue["truncated_jpeg"].with_name(name)).shape == (256, 256, 3)


def test_jpeg_with_garbage_scan_data_decodes(catalogue: dict[str, Path]) -> None:
    # libjpeg conceals damaged entropy-coded data instead of failing: the picture is
    # garbage, but it is a picture of the right size, so it is tagged, not refused.
    assert decode(catalogue["jpeg_garbage_scan"]).shape == (64, 64, 3)


def test_jpeg_named_png_decodes(catalogue: dict[str, Path]) -> None:
    pixels = decode(catalogue["jpeg_named_png"])
    assert pixels.shape == (12, 24, 3)
    assert_close(pixels[6, 12], bad.BLUE, tol=3)


# ---------------------------------------------------------------------------------------
# Paths that are not readable files


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    error = refused(missing)
    assert (error.code, error.message) == ("not_found", f"no such file: {missing}")


def test_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "dangling.png"
    link.symlink_to(tmp_path / "gone.png")
    error = refused(link)
    assert (error.code, error.message) == ("not_found", f"no such file: {link}")


def test_symlink_to_image_decodes(catalogue: dict[str, Path], tmp_path: Path) -> None:
    link = tmp_path / "link.png"
    link.symlink_to(catalogue["ordinary_png"])
    assert decode(link).shape == (20, 30, 3)


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    error = refused(folder)
    assert (error.code, error.message) == ("unreadable", "is a directory, not a file")


def test_path_through_a_regular_file(catalogue: dict[str, Path]) -> None:
    # file.png/x.png: open() fails with ENOTDIR.
    error = refused(catalogue["ordinary_png"] / "x.png")
    assert (error.code, error.message) == ("unreadable", "cannot read file: Not a directory")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    # A FIFO named like an image: a blocking open() would wait forever for a writer and
    # stall the whole batch behind it.
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            decode_image(fifo, max_pixels=DEFAULT_MAX_PIXELS)
        except BaseException as exc:  # handed back to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=5)
    if thread.is_alive():
        with open(fifo, "wb"):  # a writer appears: the blocked open returns
            pass
        thread.join(timeout=5)
        pytest.fail("decode_image blocked opening a named pipe")
    assert len(outcome) == 1 and isinstance(outcome[0], ImageDecodeError)
    assert (outcome[0].code, outcome[0].message) == (
        "unreadable",
        "not a regular file (a named pipe)",
    )


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null on this system")
def test_character_device() -> None:
    error = refused("/dev/null")
    assert (error.code, error.message) == ("unreadable", "not a regular file (a character device)")


def test_permission_denied(catalogue: dict[str, Path], tmp_path: Path) -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading the file")
    locked = tmp_path / "locked.png"
    locked.write_bytes(catalogue["ordinary_png"].read_bytes())
    locked.chmod(0)
    try:
        error = refused(locked)
    finally:
        locked.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert (error.code, error.message) == ("unreadable", "permission denied: Permission denied")


# ---------------------------------------------------------------------------------------
# bytes input


def test_bytes_input(catalogue: dict[str, Path]) -> None:
    empty = refused(b"")
    assert (empty.code, empty.message) == ("empty", "empty file (0 bytes)")
    assert decode(catalogue["ordinary_png"].read_bytes()).shape == (20, 30, 3)
    assert np.all(decode(catalogue["animated_webp"].read_bytes()) == bad.RED)
    assert refused(catalogue["random_bytes"].read_bytes()).code == "not_an_image"
    assert refused(catalogue["truncated_png"].read_bytes()).code == "truncated"
    bomb = refused(catalogue["bomb_png_100000x100000"].read_bytes())
    assert bomb.code == "too_large"
    assert "10,000,000,000 pixels" in bomb.message


# ---------------------------------------------------------------------------------------
# The batch path never raises


def batch_cases(catalogue: dict[str, Path], scratch: Path) -> dict[str, tuple[object, str | None]]:
    """Every case as (source, expected error code or None) for one mixed batch."""
    expected_codes = {name: code for name, (code, _) in ERROR_CASES.items()} | {
        "bomb_png_100000x100000": "too_large",
        "bomb_png_20000x10000": "too_large",
        "bomb_jpeg_65000x65000": "too_large",
        "gzip_renamed_png": "not_an_image",
        "zip_renamed_jpg": "not_an_image",
        "ztxt_bomb": "corrupt",
    }
    cases: dict[str, tuple[object, str | None]] = {
        name: (path, expected_codes.get(name)) for name, path in catalogue.items()
    }
    folder = scratch / "folder.png"
    folder.mkdir()
    cases |= {
        "missing": (scratch / "missing.png", "not_found"),
        "directory": (folder, "unreadable"),
        "through_file": (catalogue["ordinary_png"] / "x.png", "unreadable"),
        "bytes_empty": (b"", "empty"),
        "bytes_png": (catalogue["ordinary_png"].read_bytes(), None),
        "bytes_random": (catalogue["random_bytes"].read_bytes(), "not_an_image"),
    }
    if hasattr(os, "mkfifo"):
        os.mkfifo(scratch / "pipe.png")
        cases["fifo"] = (scratch / "pipe.png", "unreadable")
    return cases


@pytest.mark.parametrize("draft", [True, False])
def test_prepare_never_raises(catalogue: dict[str, Path], tmp_path: Path, draft: bool) -> None:
    cases = batch_cases(catalogue, tmp_path)
    assert sum(code is None for _, code in cases.values()) >= 25
    assert sum(code is not None for _, code in cases.values()) >= 20
    for name, (source, code) in cases.items():
        prepared = prepare(source, PREPROCESS, DEFAULT_MAX_PIXELS, draft)  # type: ignore[arg-type]
        if code is None:
            assert prepared.error is None, f"{name}: {prepared.error and prepared.error.message}"
            assert prepared.pixels is not None
            assert prepared.pixels.shape == (32, 32, 3), name
            assert prepared.pixels.dtype == np.uint8, name
            assert torch.isfinite(normalise_one(PREPROCESS, prepared.pixels)).all(), name
            assert prepared.width > 0 and prepared.height > 0
        else:
            assert prepared.pixels is None, name
            assert prepared.error is not None, name
            assert prepared.error.code == code, f"{name}: {prepared.error.message}"
            assert prepared.error.message and prepared.error.message != code, name
            assert (prepared.width, prepared.height) == (0, 0)


class _CountingTagger:
    """The two members of the Tagger protocol that ``tag_sources`` touches."""

    preprocess = PREPROCESS

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict_pixels(self, batch: torch.Tensor) -> Prediction:
        assert batch.shape[1:] == (32, 32, 3) and batch.dtype == torch.uint8
        self.batches.append(batch.shape[0])
        count = batch.shape[0]
        return Prediction(np.zeros((count, 4), np.float32), np.ones((count, 2), np.float32))


def test_tag_sources_reports_every_bad_file_in_order(
    catalogue: dict[str, Path], tmp_path: Path
) -> None:
    cases = batch_cases(catalogue, tmp_path)
    tagger = _CountingTagger()
    outcomes = list(
        tag_sources(
            tagger,  # type: ignore[arg-type]
            [source for source, _ in cases.values()],  # type: ignore[misc]
            batch_size=4,
            workers=4,
            max_pixels=DEFAULT_MAX_PIXELS,
        )
    )
    assert len(outcomes) == len(cases)
    for outcome, (name, (source, code)) in zip(outcomes, cases.items(), strict=True):
        assert outcome.source is source, name
        if code is None:
            assert outcome.ok and outcome.probs is not None, name
        else:
            assert outcome.error is not None and outcome.error.code == code, name
            assert outcome.probs is None
    assert sum(tagger.batches) == sum(code is None for _, code in cases.values())


# ---------------------------------------------------------------------------------------
# Danbooru's own catalogue of odd and broken files (../shared/data)

DANBOORU = SHARED_DATA / "images" / "danbooru_test_files"
MANIFEST = SHARED_DATA / "images" / "MANIFEST.csv"

# Exact codes for the files the manifest says Pillow cannot decode; any other such file
# (the manifest's "not-image" rows: licences, READMEs, JSON, video, AVIF variants libavif
# here cannot open) is expected to be "not_an_image".
DANBOORU_ERROR_CODES = {
    "apng/actl_wronglen.png": "corrupt",  # acTL chunk shorter than its declared length
    "apng/broken.png": "truncated",
    "gif/corrupt-static.gif": "truncated",
    "gif/test-corrupt.gif": "truncated",
    "jpg/test-blank.jpg": "truncated",
    "jpg/test-corrupt.jpg": "truncated",
    "jpg/test-exif-small.jpg": "truncated",
    "png/empty.png": "empty",  # 0 bytes
    "png/test-corrupt.png": "corrupt",  # IHDR but no image data
    "webp/truncated.webp": "corrupt",  # libwebp cannot even start decoding it
}


def _manifest_rows() -> dict[str, dict[str, str]]:
    prefix = "images/danbooru_test_files/"
    with MANIFEST.open(newline="", encoding="utf-8") as handle:
        return {
            row["path"][len(prefix) :]: row
            for row in csv.DictReader(handle)
            if row["path"].startswith(prefix)
        }


def _danbooru_files() -> list[str]:
    if not DANBOORU.is_dir():
        return []
    return sorted(p.relative_to(DANBOORU).as_posix() for p in DANBOORU.rglob("*") if p.is_file())


def _danbooru_params() -> Sequence[object]:
    files = _danbooru_files()
    if not files:
        return [pytest.param("", id="danbooru_test_files-absent")]
    return files


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict[str, str]]:
    shared_path("images", "MANIFEST.csv")
    return _manifest_rows()


@pytest.mark.shared_data
def test_manifest_lists_every_danbooru_file(manifest: dict[str, dict[str, str]]) -> None:
    shared_path("images", "danbooru_test_files")
    assert sorted(manifest) == _danbooru_files()


@pytest.mark.shared_data
@pytest.mark.parametrize("relative", _danbooru_params())
def test_danbooru_file(manifest: dict[str, dict[str, str]], relative: str) -> None:
    path = shared_path("images", "danbooru_test_files", *relative.split("/"))
    row = manifest[relative]
    for draft in (True, False):
        prepared = prepare(path, PREPROCESS, DEFAULT_MAX_PIXELS, draft)  # must not raise
        if row["pillow"] == "ok":
            # Every file Pillow decodes is within the default limit (the largest is 2048x858),
            # so each must give a tensor.
            assert prepared.error is None, prepared.error and prepared.error.message
            assert prepared.pixels is not None
            assert prepared.pixels.shape == (32, 32, 3)
            assert prepared.pixels.dtype == np.uint8
        else:
            expected = DANBOORU_ERROR_CODES.get(relative, "not_an_image")
            assert prepared.pixels is None
            assert prepared.error is not None
            assert prepared.error.code == expected, prepared.error.message
            assert prepared.error.message
    if row["pillow"] == "ok":
        # Full decode: the stored size, or the stored size on its side (orientation).
        image = decode_image(path, max_pixels=DEFAULT_MAX_PIXELS)
        stored = (int(row["width"]), int(row["height"]))
        assert image.size in (stored, stored[::-1])


# Stored size -> upright size, for the files that carry an orientation.
DANBOORU_UPRIGHT = {
    "jpg/test-rotation-90cw.jpg": (96, 128),  # stored 128x96, EXIF 6
    "png/test-rotation-90cw.png": (96, 128),  # the same picture, orientation in an eXIf chunk
    "jpg/test-rotation-270cw.jpg": (100, 66),  # stored 66x100
    "jpg/test-rotation-270cw-large.jpg": (1104, 736),  # stored 736x1104
    "jpg/test-rotation-180.jpg": (66, 100),
    "webp/Exif6.webp": (640, 427),  # stored 427x640
    "avif/kimono.rotate90.avif": (722, 1024),  # stored 1024x722, rotated back by irot
    # AVIF follows HEIF: only irot/imir orient the picture, an EXIF orientation is ignored
    # (as browsers do), so Exif6.avif keeps its stored portrait size.
    "avif/Exif6.avif": (427, 640),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("relative", sorted(DANBOORU_UPRIGHT))
def test_danbooru_orientation(relative: str) -> None:
    path = shared_path("images", "danbooru_test_files", *relative.split("/"))
    assert decode_image(path, max_pixels=DEFAULT_MAX_PIXELS).size == DANBOORU_UPRIGHT[relative]


def _danbooru_pixels(relative: str) -> np.ndarray:
    path = shared_path("images", "danbooru_test_files", *relative.split("/"))
    return decode(path).astype(np.float64)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("jpg/test-rotation-90cw.jpg", "png/test-rotation-90cw.png"),
        ("webp/Exif2.webp", "webp/Exif6.webp"),  # mirrored / rotated copies of one photo
        ("avif/kimono.crop.avif", "avif/kimono.mirror-horizontal.avif"),
        ("avif/kimono.crop.avif", "avif/kimono.rotate90.avif"),
    ],
)
def test_danbooru_oriented_copies_match(first: str, second: str) -> None:
    # Different stored layouts of one picture: once oriented they are the same pixels,
    # up to lossy re-encoding (mean difference under 6 of 255); a copy left mirrored or
    # upside down differs by 39 or more.
    a, b = _danbooru_pixels(first), _danbooru_pixels(second)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 6
    assert np.abs(a - b[:, ::-1]).mean() > 30
    assert np.abs(a - b[::-1]).mean() > 30


def _dupes() -> Iterator[Path]:
    yield from sorted(shared_path("images", "danbooru_test_files", "dupes").iterdir())


@pytest.mark.shared_data
def test_danbooru_dupes_decode_to_one_upright_size() -> None:
    sprites = [p for p in _dupes() if p.name.startswith("countergirl")]
    # 16 re-encodings of one 45x100 sprite: baseline/progressive/no-EXIF JPEG, Adobe RGB,
    # Display P3 and ProPhoto ICC profiles, greyscale, palette GIF, RGBA/LA PNG.
    assert len(sprites) == 16
    sizes = {p.name: decode_image(p, max_pixels=DEFAULT_MAX_PIXELS).size for p in sprites}
    assert set(sizes.values()) == {(45, 100)}, sizes
    # black-100x200 / black-200x100 are the control pair: the same content in two
    # orientations, which must NOT be turned into one.
    for name, size in [("black-100x200.png", (100, 200)), ("black-200x100.png", (200, 100))]:
        image = decode_image(
            shared_path("images", "danbooru_test_files", "dupes", name),
            max_pixels=DEFAULT_MAX_PIXELS,
        )
        assert image.size == size
        assert np.all(np.asarray(image) == 0)


@pytest.mark.shared_data
def test_danbooru_dupes_transparency_matches_white_background_copies() -> None:
    # The transparent PNG/GIF sprites, composited on white, are pixel-identical to the
    # copies saved on a white background; greyscale copies match in luminance.
    reference = _danbooru_pixels("dupes/countergirl-whitebg-noalpha.png")
    for name in [
        "countergirl.png",
        "countergirl.gif",
        "countergirl-no-exif.png",
        "countergirl-whitebg-alpha.png",
        "countergirl-whitebg-noalpha.gif",
    ]:
        assert np.abs(_danbooru_pixels(f"dupes/{name}") - reference).mean() < 1, name
    for name in ["countergirl-grey.png", "countergirl-grey-srgb.png"]:
        grey = _danbooru_pixels(f"dupes/{name}").mean(axis=2)
        assert np.abs(grey - reference.mean(axis=2)).mean() < 3, name
    # The JPEGs were flattened on black before encoding; they agree with one another
    # whatever their ICC profile (the decoder does not colour-manage).
    baseline = _danbooru_pixels("dupes/countergirl-baseline.jpg")
    for name in [
        "countergirl-srgb.jpg",
        "countergirl-adobergb.jpg",
        "countergirl-p3.jpg",
        "countergirl-prophoto.jpg",
        "countergirl-progressive.jpg",
        "countergirl-no-exif.jpg",
        "countergirl-rgb-gray.jpg",
    ]:
        assert np.abs(_danbooru_pixels(f"dupes/{name}") - baseline).mean() < 3, name
