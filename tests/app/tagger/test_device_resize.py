"""Images the readers decode, padded and resized on the model's device (SAGASHI_DEVICE_RESIZE):
the readers hand a decoded frame on instead of model-size pixels, and the staging shapes it
with the device JPEGs' geometry. Run here on the CPU, the device a GPU run swaps in."""

from __future__ import annotations

import gc
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from pydantic import ValidationError

from app.settings import Settings
from app.store import migrate
from app.store.db import create_db_engine
from app.tagger import TimmTagger
from app.tagger.batching import Pixels, predict_stacked, stage
from app.tagger.decode import decode_with_meta
from app.tagger.device_decode import (
    FRAME_MAX_BYTES,
    Frame,
    Jpeg,
    frame_for_device,
    frame_pixels,
    geometry,
    shape_frames,
)
from app.tagger.preprocess import Preprocess
from indexer.jobs import index_options
from indexer.pipeline import Indexer, handed_over, loaded_from
from indexer.readers import ProcessReaders, ThreadReaders
from indexer.reading import DEVICE_INPUT_MOST, DeviceInputBudget, Read, ReadSpec, read_file
from indexer.reindex import Reindexer
from indexer.scan import Found
from tests.support.geometries import PIXAI, WD
from tests.support.index_helpers import (
    assert_indexed_alike,
    make_image,
    small_options,
    snapshot,
)
from tests.support.paths import shared_path

CPU = torch.device("cpu")


def photo(width: int, height: int, seed: int) -> PILImage.Image:
    """A smooth gradient with noise: resizes like a picture, not like white noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    noise = rng.normal(0, 8, (height, width, 3))
    return PILImage.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8))


# -- which images the device shapes ----------------------------------------------------------


def test_a_decoded_image_is_handed_on_whole() -> None:
    image = photo(90, 60, 1)
    frame = frame_for_device(image, WD)
    assert frame is not None
    assert frame.pixels.shape == (60, 90, 4) and frame.pixels.dtype == np.uint8  # RGBX
    assert np.array_equal(frame.pixels[..., :3], np.asarray(image))


def test_a_frame_is_a_view_of_pillows_memory_that_outlives_the_image() -> None:
    image = photo(90, 60, 11)
    expected = np.asarray(image).copy()
    pixels = frame_pixels(image)
    assert not pixels.flags.owndata and not pixels.flags.writeable  # a view: nothing copied
    del image
    gc.collect()
    np.ones((600, 900, 4), np.uint8)  # memory reused were the view's freed
    assert np.array_equal(pixels[..., :3], expected)


def test_an_image_pillow_keeps_in_several_blocks_is_copied() -> None:
    from PIL import _imaging  # Pillow's allocator settings are process-wide: restored below

    block = _imaging.get_block_size()
    _imaging.set_block_size(4096)  # rows of 360 bytes: the image spans many blocks
    try:
        image = photo(90, 60, 12)
    finally:
        _imaging.set_block_size(block)
    pixels = frame_pixels(image)
    assert pixels.shape == (60, 90, 3) and np.array_equal(pixels, np.asarray(image))


def test_under_a_pillow_without_arrow_export_a_frame_is_copied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pillow 11.0 and 11.1 (pyproject allows them) have no __arrow_c_array__; pa.array then
    # raised TypeError and every frame handed on failed its file
    monkeypatch.delattr(PILImage.Image, "__arrow_c_array__")
    image = photo(90, 60, 13)
    pixels = frame_pixels(image)
    assert pixels.shape == (60, 90, 3) and np.array_equal(pixels, np.asarray(image))
    frame = frame_for_device(image, WD)
    assert frame is not None and np.array_equal(frame.pixels, np.asarray(image))


def test_what_the_reader_shapes_itself() -> None:
    assert frame_for_device(photo(448, 448, 2), WD) is None  # at model size: nothing to do
    side = int((FRAME_MAX_BYTES / 4) ** 0.5) + 1  # over the bound a frame may wait in
    assert frame_for_device(PILImage.new("RGB", (side, side)), WD) is None
    assert frame_for_device(PILImage.new("RGB", (side - 2, side - 2)), WD) is not None
    lanczos = Preprocess(448, "pad", "lanczos", (0.5,) * 3, (0.5,) * 3, "RGB")
    assert frame_for_device(photo(90, 60, 3), lanczos) is None  # the device has no lanczos
    assert frame_for_device(PILImage.new("L", (90, 60)), WD) is None  # not converted yet


# -- the readers -------------------------------------------------------------------------------


def test_readers_hand_frames_on_with_the_files_facts(tmp_path: Path) -> None:
    png = make_image(tmp_path / "a.png", seed=4, size=(90, 60))
    cmyk = tmp_path / "cmyk.jpg"  # the device JPEG decoder refuses CMYK: a frame instead
    PILImage.new("CMYK", (30, 20), (10, 200, 30, 40)).save(cmyk, "JPEG")
    jpeg = tmp_path / "rgb.jpg"
    photo(50, 30, 5).save(jpeg, "JPEG")
    broken = tmp_path / "cut.png"
    broken.write_bytes(png.read_bytes()[:200])
    host = ReadSpec(WD, 10**8, True)
    device = ReadSpec(WD, 10**8, True, device_jpeg=True, device_resize=True)
    for path in (png, cmyk):
        on_host, deferred = read_file(host, str(path), None), read_file(device, str(path), None)
        assert deferred.pixels is None and isinstance(deferred.deferred, Frame)
        assert (deferred.sha256, deferred.width, deferred.height, deferred.format) == (
            on_host.sha256,
            on_host.width,
            on_host.height,
            on_host.format,
        )
        image, _meta = decode_with_meta(path.read_bytes(), max_pixels=10**8, draft=None)
        assert np.array_equal(deferred.deferred.pixels[..., :3], np.asarray(image))
    assert isinstance(read_file(device, str(jpeg), None).deferred, Jpeg)
    on_host, deferred = read_file(host, str(broken), None), read_file(device, str(broken), None)
    assert deferred.model_input() is None and deferred.error is not None
    assert on_host.error is not None
    assert (
        (deferred.error.code, deferred.error.message)
        == (
            on_host.error.code,
            on_host.error.message,
        )
        == ("truncated", "truncated file: image file is truncated")
    )


# -- the staging -------------------------------------------------------------------------------


@pytest.mark.parametrize("preprocess", [PIXAI, WD], ids=["stretch-bilinear", "pad-bicubic"])
def test_frames_are_shaped_by_size_groups_as_one_by_one(preprocess: Preprocess) -> None:
    images = [photo(90, 60, 1), photo(60, 90, 2), photo(90, 60, 3), photo(500, 500, 4)]
    # RGBX views and RGB copies (an image in several blocks) alike
    frames = [Frame(frame_pixels(image)) for image in images] + [Frame(np.asarray(images[0]))]
    shaped = shape_frames(frames, preprocess, CPU)
    for frame, pixels in zip(frames, shaped, strict=True):
        rgb = np.array(frame.pixels[..., :3])
        alone = geometry(torch.from_numpy(rgb).permute(2, 0, 1), preprocess)
        assert pixels.shape == (448, 448, 3) and torch.equal(pixels, alone)


def test_a_mixed_batch_stages_each_row_as_alone(tagger: TimmTagger, tmp_path: Path) -> None:
    side = tagger.preprocess.size
    rng = np.random.default_rng(6)
    host = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    jpeg = tmp_path / "j.jpg"
    photo(50, 30, 7).save(jpeg, "JPEG")
    batch: list[Pixels] = [
        Frame(frame_pixels(photo(90, 60, 8))),
        host,
        Jpeg(jpeg.read_bytes()),
        Frame(np.asarray(photo(40, 70, 9))),
        Frame(frame_pixels(photo(90, 60, 10))),
    ]
    staged = stage(tagger, batch)
    assert staged.pixels.shape == (5, side, side, 3) and not staged.errors
    for row, item in enumerate(batch):
        assert torch.equal(staged.pixels[row], stage(tagger, [item]).pixels[0]), row
    whole = predict_stacked(tagger, batch)
    for row, item in enumerate(batch):
        alone = predict_stacked(tagger, [item])
        np.testing.assert_allclose(whole.probs[row], alone.probs[0], atol=1e-5)


@pytest.mark.parametrize("preprocess", [PIXAI, WD], ids=["stretch-bilinear", "pad-bicubic"])
@pytest.mark.shared_data
def test_real_anime_pngs_shaped_on_the_device_are_within_resize_noise_of_pillows(
    preprocess: Preprocess,
) -> None:
    # Measured over all 38 of them: mean 0.18 / max 1 (bilinear), 0.11 / 7 (bicubic).
    bound = {"bilinear": 2, "bicubic": 10}[preprocess.interpolation]
    pngs = sorted(shared_path("images", "sdeval_anime").rglob("*.png"))[:6]
    assert pngs
    for path in pngs:
        image, _meta = decode_with_meta(path.read_bytes(), max_pixels=10**8, draft=None)
        on_device = geometry(torch.from_numpy(np.array(image)).permute(2, 0, 1), preprocess)
        diff = np.abs(on_device.numpy().astype(int) - preprocess.pixels(image).astype(int))
        assert diff.mean() < 0.3 and diff.max() <= bound, (path.name, diff.mean(), diff.max())


# -- the host memory the device's inputs hold --------------------------------------------------


def test_a_spent_budget_makes_the_reader_shape_and_decode_itself(tmp_path: Path) -> None:
    pngs = [make_image(tmp_path / f"{i}.png", seed=i, size=(90, 60)) for i in range(3)]
    jpeg = tmp_path / "rgb.jpg"
    photo(50, 30, 5).save(jpeg, "JPEG")
    host = ReadSpec(WD, 10**8, True)
    device = ReadSpec(WD, 10**8, True, device_jpeg=True, device_resize=True)
    budget = DeviceInputBudget(90 * 60 * 4)  # one frame
    first = read_file(device, str(pngs[0]), None, budget)
    assert isinstance(first.deferred, Frame) and budget.held == 90 * 60 * 4
    for path in (pngs[1], jpeg):  # spent: the reader does the device's work
        over = read_file(device, str(path), None, budget)
        on_host = read_file(host, str(path), None).pixels
        assert over.deferred is None and over.pixels is not None and on_host is not None
        assert np.array_equal(over.pixels, on_host)
    del first  # staged, or its file not batched: what it held comes back
    gc.collect()
    assert budget.held == 0
    assert isinstance(read_file(device, str(pngs[2]), None, budget).deferred, Frame)
    assert isinstance(read_file(device, str(jpeg), None, DeviceInputBudget(10**6)).deferred, Jpeg)


def test_reader_threads_share_one_budget_and_give_it_all_back(tmp_path: Path) -> None:
    paths = [make_image(tmp_path / f"{i}.png", seed=i, size=(90, 60)) for i in range(24)]
    device = ReadSpec(WD, 10**8, True, device_resize=True)
    limit = 3 * 90 * 60 * 4  # three frames, for four reader threads seven files ahead
    budget = DeviceInputBudget(limit)
    reads = []
    for read in ThreadReaders(device, 4, 7, budget).map((str(p), None) for p in paths):
        assert 0 <= budget.held <= limit
        reads.append(read)
    kinds = {type(read.model_input()).__name__ for read in reads}
    assert kinds == {"Frame", "ndarray"}  # some frames, and the rest shaped by the readers
    assert budget.held == 90 * 60 * 4 * sum(isinstance(r.deferred, Frame) for r in reads)
    del reads, read
    gc.collect()
    assert budget.held == 0


def test_reader_processes_keep_within_the_runs_budget_and_give_it_all_back(
    tmp_path: Path,
) -> None:
    """A process cannot take from the parent's budget: each file's most is reserved before
    it is sent, and settled on what came back. Frames and shaped pixels mix as the budget
    comes and goes; it is never exceeded, and it all comes back."""
    paths = [make_image(tmp_path / f"{i}.png", seed=i, size=(90, 60)) for i in range(16)]
    device = ReadSpec(WD, 10**8, True, device_resize=True)
    host = ReadSpec(WD, 10**8, True)
    limit = 3 * 90 * 60 * 4
    budget = DeviceInputBudget(limit)
    reads: list[Read] = []
    for read in ProcessReaders(device, 2, 6, budget).map((str(p), None) for p in paths):
        assert 0 <= budget.held <= limit
        reads.append(read)
    kinds = {type(read.model_input()).__name__ for read in reads}
    assert kinds == {"Frame", "ndarray"}
    assert budget.held == 90 * 60 * 4 * sum(isinstance(r.deferred, Frame) for r in reads)
    for read in reads:
        if read.pixels is not None:
            assert np.array_equal(read.pixels, read_file(host, read.path, None).pixels)  # type: ignore[arg-type]
    del reads, read
    gc.collect()
    assert budget.held == 0


def test_a_reader_process_that_dies_gives_its_files_reservations_back(tmp_path: Path) -> None:
    """Killed holding files: what was reserved for them comes back, they are read again
    with new reservations, and nothing stays held once the reads are dropped."""
    paths = [make_image(tmp_path / f"{i}.png", seed=i, size=(900, 700)) for i in range(12)]
    device = ReadSpec(WD, 10**8, True, device_resize=True)
    budget = DeviceInputBudget(64 * DEVICE_INPUT_MOST)  # room for all: every file a frame
    readers = ProcessReaders(device, 2, 4, budget)
    reads: list[Read] = []
    for read in readers.map((str(p), None) for p in paths):
        if len(reads) == 2:
            os.kill(readers.pids()[0], signal.SIGKILL)
        reads.append(read)
    assert readers.crashes >= 1
    assert [r.path for r in reads] == [str(p) for p in paths]
    assert all(isinstance(r.deferred, Frame) for r in reads)
    assert budget.held == 900 * 700 * 4 * len(reads)  # the frames only: no reservation left
    del reads, read
    gc.collect()
    assert budget.held == 0


def test_reader_processes_without_a_device_path_reserve_nothing(tmp_path: Path) -> None:
    paths = [make_image(tmp_path / f"{i}.png", seed=i, size=(90, 60)) for i in range(4)]
    budget = DeviceInputBudget(DEVICE_INPUT_MOST)
    for read in ProcessReaders(ReadSpec(WD, 10**8, True), 2, 4, budget).map(
        (str(p), None) for p in paths
    ):
        assert budget.held == 0 and read.pixels is not None


# -- index and reindex -------------------------------------------------------------------------


def collection(root: Path) -> Path:
    """What a mixed folder holds: PNGs of several sizes (one at the tiny model's size, one
    over the frame bound), WebP, a GIF, a CMYK JPEG, device JPEGs and a cut PNG."""
    for i in range(5):
        make_image(root / f"p{i}.png", seed=i, size=(48 + 8 * (i % 2), 40))
    make_image(root / "square.png", seed=20, size=(56, 56))  # the tiny model's input size
    side = int((FRAME_MAX_BYTES / 4) ** 0.5) + 1
    photo(side, side, 21).save(root / "large.png")  # over the bound: shaped by its reader
    photo(64, 48, 22).save(root / "w.webp", "WEBP")
    photo(30, 30, 23).convert("P").save(root / "g.gif")
    PILImage.new("CMYK", (30, 20), (10, 200, 30, 40)).save(root / "cmyk.jpg", "JPEG")
    for i in range(3):
        photo(50 + i, 30, 30 + i).save(root / f"j{i}.jpg", "JPEG")
    whole = (root / "p0.png").read_bytes()
    (root / "cut.png").write_bytes(whole[: len(whole) // 2])
    return root


def test_an_index_with_frames_shaped_on_the_device_matches_the_readers(
    migrated_url: str, tagger: TimmTagger, tmp_path: Path
) -> None:
    root = collection(tmp_path / "art")
    engine = create_db_engine(migrated_url)
    on_device = Indexer(
        engine, tagger, small_options(device_resize=True, device_jpeg=True, read_processes=True)
    ).run([root])
    other_url = f"sqlite:///{tmp_path / 'readers.db'}"
    migrate.upgrade(other_url)
    by_readers = Indexer(create_db_engine(other_url), tagger, small_options()).run([root])
    assert on_device.as_dict() == by_readers.as_dict()
    assert on_device.new == 13 and on_device.failed == 1
    assert (
        [(Path(p.path).name, p.code) for p in on_device.failures]
        == [(Path(p.path).name, p.code) for p in by_readers.failures]
        == [("cut.png", "truncated")]
    )
    device_state, reader_state = assert_indexed_alike(engine, create_db_engine(other_url))
    square = str(root / "square.png")  # shaped by its reader either way: the same scores
    assert device_state[square]["tags"] == reader_state[square]["tags"]
    assert device_state[square]["vector"] == reader_state[square]["vector"]


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_an_index_whose_device_budget_runs_out_matches_the_readers(
    migrated_url: str, tagger: TimmTagger, tmp_path: Path, processes: bool
) -> None:
    """Room for about two small frames: some files go to the device, the rest are shaped
    by their readers (threads or processes) as the budget comes and goes, and the index is
    the same."""
    root = collection(tmp_path / "art")
    engine = create_db_engine(migrated_url)
    tight = small_options(
        device_resize=True,
        device_jpeg=True,
        device_input_bytes=20_000,
        read_processes=processes,
    )
    on_device = Indexer(engine, tagger, tight).run([root])
    other_url = f"sqlite:///{tmp_path / 'readers.db'}"
    migrate.upgrade(other_url)
    by_readers = Indexer(create_db_engine(other_url), tagger, small_options()).run([root])
    assert on_device.as_dict() == by_readers.as_dict()
    assert_indexed_alike(engine, create_db_engine(other_url))


def test_a_reindex_with_frames_shaped_on_the_device_equals_the_index(
    migrated_url: str, tagger: TimmTagger, tmp_path: Path
) -> None:
    root = collection(tmp_path / "art")
    engine = create_db_engine(migrated_url)
    chosen = small_options(device_resize=True, device_jpeg=True)
    Indexer(engine, tagger, chosen).run([root])
    indexed = snapshot(engine)
    summary = Reindexer(engine, tagger, chosen, tmp_path / "data").run()
    assert summary.retagged == 13
    again = snapshot(engine)
    assert {p: s["tags"] for p, s in again.items()} == {p: s["tags"] for p, s in indexed.items()}
    assert {p: s["vector"] for p, s in again.items()} == {
        p: s["vector"] for p, s in indexed.items()
    }


# -- the setting -------------------------------------------------------------------------------


def test_the_setting_picks_the_readers_or_the_device(tagger: TimmTagger) -> None:
    assert Settings().device_resize == "auto"
    with pytest.raises(ValidationError, match="device_resize"):
        Settings(device_resize="gpu")  # type: ignore[arg-type]
    chosen = {
        value: index_options(Settings(device_resize=value)).read_spec(tagger).device_resize
        for value in ("auto", "on", "off")
    }
    assert chosen == {"auto": False, "on": True, "off": False}  # auto: on a GPU only


def test_the_budget_setting_is_bounded_and_reaches_the_readers(tmp_path: Path) -> None:
    assert Settings().device_input_memory_mb == 2048
    with pytest.raises(ValidationError, match="device_input_memory_mb"):
        Settings(device_input_memory_mb=16)
    assert index_options(Settings(device_input_memory_mb=256)).device_input_bytes == 256 << 20


def test_a_batch_hands_its_frames_over_and_keeps_none(tmp_path: Path) -> None:
    spec = ReadSpec(WD, 10**8, True, device_resize=True)
    paths = [make_image(tmp_path / f"{i}.png", seed=i, size=(90, 60)) for i in range(3)]
    found = [Found(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    files = [loaded_from(f, read_file(spec, f.path, None)) for f in found]
    frames = [loaded.pixels for loaded in files]
    assert all(isinstance(frame, Frame) for frame in frames)
    assert handed_over(files) == frames
    assert all(loaded.pixels is None and loaded.facts is not None for loaded in files)
