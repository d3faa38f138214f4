"""The GPU fast path's pieces, run on the CPU: reader processes, the uint8 hand-off with
normalisation on the model's device, padded batches, bf16 weights, several model replicas,
and reindex on the same path as index. The GPU selects the same code (docs/benchmarks.md
has the GPU figures)."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image as PILImage

from app.store import migrate
from app.store.db import create_db_engine
from app.tagger import TimmTagger
from app.tagger.batching import predict_stacked
from app.tagger.errors import ModelLoadError
from app.tagger.factory import expand_devices, open_tagger
from app.tagger.forward import ForwardOptions
from app.tagger.fused_layers import AlignedSwiGLU
from app.tagger.model import PixaiHead
from app.tagger.preprocess import Preprocess
from app.tagger.replicas import Replicas
from app.tagger.stages import parse_stages
from indexer.pipeline import Indexer
from indexer.readers import ProcessReaders, ThreadReaders
from indexer.reading import Read, ReadSpec, read_file
from indexer.reindex import Reindexer
from tests.support.geometries import PIXAI, WD
from tests.support.index_helpers import (
    assert_indexed_alike,
    make_image,
    small_options,
    snapshot,
)
from tests.support.tiny_models import (
    CHARACTER_TAGS,
    GENERAL_TAGS,
    TINY_CONFIG,
    TINY_DIM,
    build_tiny_pixai,
)


def folder(root: Path, count: int, size: tuple[int, int] = (48, 40)) -> Path:
    for i in range(count):
        make_image(root / f"{i:03d}.png", seed=i, size=size)
    return root


# -- the uint8 hand-off --------------------------------------------------------------------


def reference_tensor(preprocess: Preprocess, image: PILImage.Image) -> np.ndarray:
    """The float pipeline as it was before the hand-off: numpy, one image."""
    pixels = np.asarray(preprocess.geometry(image), dtype=np.float32)
    pixels = pixels * (1.0 / 255.0)
    pixels -= np.asarray(preprocess.mean, dtype=np.float32)
    pixels /= np.asarray(preprocess.std, dtype=np.float32)
    if preprocess.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


@pytest.mark.parametrize("preprocess", [PIXAI, WD], ids=["pixai", "wd"])
def test_pixels_then_normalise_is_bit_equal_to_the_float_pipeline(preprocess: Preprocess) -> None:
    rng = np.random.default_rng(1)
    image = PILImage.fromarray(rng.integers(0, 256, (300, 520, 3), dtype=np.uint8))
    pixels = preprocess.pixels(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (448, 448, 3)
    batch = torch.from_numpy(np.stack([pixels, pixels[::-1].copy()]))
    normalised = preprocess.normalise(batch)
    assert normalised.dtype == torch.float32 and normalised.shape == (2, 3, 448, 448)
    assert np.array_equal(normalised[0].numpy(), reference_tensor(preprocess, image))
    assert np.array_equal(preprocess.tensor(image).numpy(), reference_tensor(preprocess, image))


def test_stage_pipeline_normalise_is_bit_equal_to_its_numpy_stages() -> None:
    pipeline = parse_stages(
        {
            "stages": [
                {"type": "pad_to_size", "size": 64, "background_color": "white"},
                {"type": "to_tensor"},
                {"type": "rescale", "rescale_factor": 0.9},
                {"type": "normalize", "mean": [0.48, 0.45, 0.4], "std": [0.26, 0.26, 0.27]},
            ]
        },
        "preprocess.json",
    )
    rng = np.random.default_rng(2)
    image = PILImage.fromarray(rng.integers(0, 256, (50, 90, 3), dtype=np.uint8))
    pixels = pipeline.pixels(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (64, 64, 3)
    normalised = pipeline.normalise(torch.from_numpy(pixels)[None])[0]
    assert np.array_equal(normalised.numpy(), pipeline.array(image))


def test_image_stages_after_array_stages_are_refused_at_load() -> None:
    with pytest.raises(ModelLoadError, match="stage 1 .*before to_tensor"):
        parse_stages(
            {"stages": [{"type": "to_tensor"}, {"type": "center_crop", "size": 8}]},
            "preprocess.json",
        )


def test_predict_pixels_equals_predict_of_the_normalised_batch(tagger: TimmTagger) -> None:
    rng = np.random.default_rng(3)
    side = tagger.preprocess.size
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(3)]
    through_pixels = predict_stacked(tagger, images)
    floats = tagger.preprocess.normalise(torch.from_numpy(np.stack(images)))
    direct = tagger.predict(floats)
    assert np.array_equal(through_pixels.probs, direct.probs)
    assert np.array_equal(through_pixels.embeddings, direct.embeddings)


# -- the forward: padding, bf16 ----------------------------------------------------------


def test_padded_batches_answer_as_unpadded(tiny_pixai_dir: Path, tagger: TimmTagger) -> None:
    padded = TimmTagger(
        tiny_pixai_dir, "cpu", forward=ForwardOptions(batch_size=4, fixed_batch=True)
    )
    padded.load()
    rng = np.random.default_rng(4)
    side = tagger.preprocess.size
    for rows in (1, 3, 4, 6, 9):  # a partial batch, a full one, and more than one chunk
        images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(rows)]
        plain = predict_stacked(tagger, images)
        fixed = predict_stacked(padded, images)
        assert fixed.probs.shape == plain.probs.shape == (rows, len(tagger.vocab))
        np.testing.assert_allclose(fixed.probs, plain.probs, atol=1e-5)
        np.testing.assert_allclose(fixed.embeddings, plain.embeddings, atol=1e-5)


def test_bf16_weights_stay_near_fp32(tiny_pixai_dir: Path, tagger: TimmTagger) -> None:
    bf16 = TimmTagger(tiny_pixai_dir, "cpu", forward=ForwardOptions(precision="bf16"))
    bf16.load()
    assert next(bf16.network.parameters()).dtype == torch.bfloat16
    assert bf16.precision_name == "bf16 weights"
    rng = np.random.default_rng(5)
    side = tagger.preprocess.size
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(4)]
    full, half = predict_stacked(tagger, images), predict_stacked(bf16, images)
    assert half.probs.dtype == np.float32
    # bf16 keeps 8 bits of mantissa: scores agree to a few hundredths, not exactly.
    assert 0 < np.abs(full.probs - half.probs).max() < 0.05
    top = np.argsort(-full.probs, axis=1)[:, :5]
    top_half = np.argsort(-half.probs, axis=1)[:, :5]
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top, top_half, strict=True)]) >= 0.8


def eva02_large_shaped_pixai(directory: Path) -> Path:
    """The tiny PixAI with EVA02-Large's block layout: separate q/k/v projections (biases
    on q and v) and a layer norm inside the SwiGLU MLP, 85 hidden units (not a multiple of
    64), every bias non-zero."""
    config = json.loads(json.dumps(TINY_CONFIG))
    config["model_args"].update(qkv_fused=False, swiglu_mlp=True, scale_mlp=True)
    encoder = timm.create_model(config["architecture"], num_classes=0, **config["model_args"])
    network = torch.nn.Sequential(encoder, PixaiHead(TINY_DIM, len(GENERAL_TAGS + CHARACTER_TAGS)))
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    build_tiny_pixai(directory)
    torch.save(network.state_dict(), directory / "model_v0.9.pth")
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_fused_layers_compute_what_the_loaded_network_does(tmp_path: Path) -> None:
    model = eva02_large_shaped_pixai(tmp_path / "model")
    plain = TimmTagger(model, "cpu", forward=ForwardOptions(fuse="off"))
    fused = TimmTagger(model, "cpu", forward=ForwardOptions(fuse="on"))
    plain.load()
    fused.load()
    modules = list(fused.network.modules())
    mlps = [m for m in modules if isinstance(m, AlignedSwiGLU)]
    assert len(mlps) == 2 and all((m.hidden, m.padded) == (85, 128) for m in mlps)
    assert not any(hasattr(m, "q_proj") and m.q_proj is not None for m in modules)
    rng = np.random.default_rng(12)
    side = plain.preprocess.size
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(5)]
    before, after = predict_stacked(plain, images), predict_stacked(fused, images)
    assert np.abs(before.probs - 0.5).max() > 0.1  # the scores are not all the same
    np.testing.assert_allclose(after.probs, before.probs, atol=1e-5)
    np.testing.assert_allclose(after.embeddings, before.embeddings, atol=1e-5)


def test_layers_are_fused_with_compilation_only(tagger: TimmTagger) -> None:
    assert ForwardOptions().fused(torch.device("cuda"))
    assert not ForwardOptions().fused(torch.device("cpu"))
    assert not ForwardOptions(compile="off").fused(torch.device("cuda"))
    assert not any(isinstance(m, AlignedSwiGLU) for m in tagger.network.modules())


def test_fp32_on_cpu_unless_asked(tagger: TimmTagger) -> None:
    assert next(tagger.network.parameters()).dtype == torch.float32
    assert ForwardOptions().dtype(torch.device("cuda")) == torch.bfloat16
    assert ForwardOptions().compiled(torch.device("cuda"))
    assert not ForwardOptions().compiled(torch.device("cpu"))
    assert ForwardOptions(compile="off").padded(torch.device("cuda")) is False


def test_cuda_all_without_a_gpu_is_a_one_line_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="'cuda:all' requested but CUDA is not available"):
        expand_devices("cuda:all")
    assert expand_devices("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]


# -- reader processes --------------------------------------------------------------------


def test_process_readers_answer_as_threads(tmp_path: Path) -> None:
    root = folder(tmp_path / "art", 9)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    (root / "empty.jpg").write_bytes(b"")
    paths = sorted(str(p) for p in root.iterdir())
    tasks = [(p, None) for p in paths]
    spec = ReadSpec(PIXAI, 10**8, True)
    threads = list(ThreadReaders(spec, 2, 4).map(tasks))
    processes = list(ProcessReaders(spec, 2, 4).map(tasks))
    assert [r.path for r in processes] == paths
    for a, b in zip(threads, processes, strict=True):
        assert (a.sha256, a.md5, a.width, a.height, a.format) == (
            b.sha256,
            b.md5,
            b.width,
            b.height,
            b.format,
        )
        assert (a.error and a.error.as_dict()) == (b.error and b.error.as_dict())
        assert (a.pixels is None) == (b.pixels is None)
        if a.pixels is not None:
            assert np.array_equal(a.pixels, b.pixels)  # type: ignore[arg-type]
    assert sum(r.error is not None for r in processes) == 2


@dataclass(frozen=True)
class CrashingPreprocess(Preprocess):
    """Kills the process that decodes an image of this width, as a crashing codec would."""

    crash_width: int = 0

    def pixels(self, image: PILImage.Image) -> np.ndarray:
        if image.width == self.crash_width:
            os._exit(70)
        return super().pixels(image)


def test_a_file_that_kills_its_reader_twice_is_reported_and_the_rest_are_read(
    tmp_path: Path,
) -> None:
    root = folder(tmp_path / "art", 6)
    make_image(root / "crash.png", seed=7, size=(77, 30))
    paths = sorted(str(p) for p in root.iterdir())
    crashing = CrashingPreprocess(**PIXAI.__dict__, crash_width=77)
    readers = ProcessReaders(ReadSpec(crashing, 10**8, True), 2, 4)
    reads = list(readers.map((p, None) for p in paths))
    assert [r.path for r in reads] == paths
    by_name = {Path(r.path).name: r for r in reads}
    crashed = by_name.pop("crash.png")
    assert crashed.error is not None and crashed.error.code == "decoder_crashed"
    assert "exit code 70" in crashed.error.message
    assert readers.crashes == 2  # tried once more in a fresh reader
    for name, read in by_name.items():
        alone = read_file(ReadSpec(PIXAI, 10**8, True), str(root / name), None)
        assert read.error is None and np.array_equal(read.pixels, alone.pixels), name  # type: ignore[arg-type]


def test_a_reader_killed_from_outside_mid_run_loses_nothing(tmp_path: Path) -> None:
    root = folder(tmp_path / "art", 24, size=(900, 700))
    paths = sorted(str(p) for p in root.iterdir())
    readers = ProcessReaders(ReadSpec(PIXAI, 10**8, True), 2, 4)
    reads: list[Read] = []
    for read in readers.map((p, None) for p in paths):
        if len(reads) == 2:  # the second hand: the OOM killer, a codec crash in a library
            victims = readers.pids()
            assert len(victims) == 2
            os.kill(victims[0], signal.SIGKILL)
        reads.append(read)
    assert [r.path for r in reads] == paths
    assert readers.crashes >= 1
    assert all(r.error is None and r.pixels is not None for r in reads)
    spec = ReadSpec(PIXAI, 10**8, True)
    for read in reads[::5]:
        alone = read_file(spec, read.path, None)
        assert read.sha256 == alone.sha256 and np.array_equal(read.pixels, alone.pixels)  # type: ignore[arg-type]


def test_an_index_with_reader_processes_equals_one_with_threads(
    db_url: str, tagger: TimmTagger, tmp_path: Path
) -> None:
    migrate.upgrade(db_url)
    root = folder(tmp_path / "art", 9)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    engine = create_db_engine(db_url)
    summary = Indexer(engine, tagger, small_options(read_processes=True)).run([root])
    assert (summary.new, summary.failed) == (9, 1)
    assert summary.failures[0].path.endswith("broken.png")
    with_processes = snapshot(engine)
    other_url = f"sqlite:///{tmp_path / 'threads.db'}"
    migrate.upgrade(other_url)
    Indexer(create_db_engine(other_url), tagger, small_options(read_processes=False)).run([root])
    with_threads = snapshot(create_db_engine(other_url))
    assert with_processes.keys() == with_threads.keys()
    for path, state in with_processes.items():  # PostgreSQL stores scores as float4
        twin = with_threads[path]
        assert (state["sha256"], state["size"], state["vector"]) == (
            twin["sha256"],
            twin["size"],
            twin["vector"],
        )
        assert state["tags"].keys() == twin["tags"].keys()  # type: ignore[attr-defined]
        for name, score in state["tags"].items():  # type: ignore[attr-defined]
            assert score == pytest.approx(twin["tags"][name], abs=1e-5)  # type: ignore[index]


# -- several replicas, and reindex on the same path ---------------------------------------


def test_two_replicas_index_as_one(
    tiny_pixai_dir: Path, tagger: TimmTagger, tmp_path: Path
) -> None:
    root = folder(tmp_path / "art", 11)
    replicas = Replicas([TimmTagger(tiny_pixai_dir, "cpu"), TimmTagger(tiny_pixai_dir, "cpu")])
    replicas.load()
    assert replicas.replicas == 2
    states = []
    for name, model in (("one", tagger), ("two", replicas)):
        url = f"sqlite:///{tmp_path / name}.db"
        migrate.upgrade(url)
        summary = Indexer(create_db_engine(url), model, small_options()).run([root])  # type: ignore[arg-type]
        assert summary.new == 11
        states.append(
            {
                k: {f: v for f, v in s.items() if f != "id"}
                for k, s in snapshot(create_db_engine(url)).items()
            }
        )
    assert states[0] == states[1]


def test_open_tagger_gives_replicas_for_a_device_list(tiny_pixai_dir: Path) -> None:
    model = open_tagger(tiny_pixai_dir, "cpu,cpu", 1)
    assert isinstance(model, Replicas) and model.replicas == 2


def test_reindex_with_reader_processes_equals_the_index(
    migrated_url: str, tagger: TimmTagger, tmp_path: Path
) -> None:
    root = folder(tmp_path / "art", 7)
    engine = create_db_engine(migrated_url)
    Indexer(engine, tagger, small_options()).run([root])
    before = snapshot(engine)
    done: list[tuple[int, int]] = []
    summary = Reindexer(
        engine, tagger, small_options(read_processes=True), tmp_path / "data", where="*"
    ).run(lambda d, t: done.append((d, t)))
    assert summary.retagged == 7 and not summary.failures
    assert done[-1] == (7, 7)
    assert snapshot(engine) == before


# -- JPEGs decoded on the model's device (here the CPU, through the same torchvision code) --


def jpeg_with_orientation(path: Path, seed: int, orientation: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    image = PILImage.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).convert(mode)
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_decode_turns_every_exif_orientation_as_pillow(
    orientation: int, tmp_path: Path
) -> None:
    from PIL import ImageOps

    from app.tagger.device_decode import for_device, upright

    path = jpeg_with_orientation(tmp_path / "o.jpg", orientation, orientation)
    header = for_device(path.read_bytes(), 10**8)
    assert header is not None and header.jpeg.orientation == orientation
    from torchvision.io import decode_jpeg

    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    turned = upright(decode_jpeg(data), orientation).permute(1, 2, 0).numpy()
    with PILImage.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    assert (header.width, header.height) == (expected.shape[1], expected.shape[0])
    assert np.array_equal(turned, expected)  # the same libjpeg-turbo decode on the CPU


@pytest.mark.parametrize("preprocess", [PIXAI, WD], ids=["stretch-bilinear", "pad-bicubic"])
def test_a_batch_is_shaped_by_size_and_orientation_groups_as_one_by_one(
    preprocess: Preprocess, tmp_path: Path
) -> None:
    from torchvision.io import decode_jpeg

    from app.tagger.device_decode import Jpeg, decode_batch, geometry, upright

    # Two sizes, three orientations, repeats of each: groups of one and of several.
    specs = [(1, 1), (2, 6), (3, 1), (4, 3), (5, 6), (6, 1)]
    paths = [jpeg_with_orientation(tmp_path / f"{i}.jpg", s, o) for i, (s, o) in enumerate(specs)]
    wide = tmp_path / "wide.jpg"
    PILImage.new("RGB", (70, 20), (200, 10, 10)).save(wide, "JPEG")
    paths.append(wide)
    jpegs = [Jpeg(p.read_bytes(), o) for p, (_, o) in zip(paths, [*specs, (0, 1)], strict=True)]
    batch = decode_batch(jpegs, preprocess, torch.device("cpu"))
    for jpeg, pixels in zip(jpegs, batch, strict=True):
        data = torch.frombuffer(bytearray(jpeg.data), dtype=torch.uint8)
        alone = geometry(upright(decode_jpeg(data), jpeg.orientation), preprocess)
        assert pixels is not None and pixels.shape == (448, 448, 3)
        assert torch.equal(pixels, alone)


@pytest.mark.parametrize("preprocess", [PIXAI, WD], ids=["stretch-bilinear", "pad-bicubic"])
def test_device_geometry_is_within_resize_noise_of_pillows(preprocess: Preprocess) -> None:
    from app.tagger.device_decode import geometry

    rng = np.random.default_rng(8)
    base = np.linspace(0, 255, 900, dtype=np.float32)[None, :, None]
    pixels = np.clip(base + rng.normal(0, 8, (600, 900, 3)), 0, 255).astype(np.uint8)
    on_device = geometry(torch.from_numpy(pixels).permute(2, 0, 1), preprocess).numpy()
    pillow = preprocess.pixels(PILImage.fromarray(pixels))
    assert on_device.shape == pillow.shape == (448, 448, 3)
    diff = np.abs(on_device.astype(int) - pillow.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 16, (diff.mean(), diff.max())


def test_only_jpegs_the_device_takes_as_pillow_are_handed_over(tmp_path: Path) -> None:
    from app.tagger.device_decode import for_device

    grey = jpeg_with_orientation(tmp_path / "grey.jpg", 1, 1, mode="L")
    cmyk = tmp_path / "cmyk.jpg"
    PILImage.new("CMYK", (20, 20), (10, 20, 30, 40)).save(cmyk, "JPEG")
    png = make_image(tmp_path / "x.png", seed=1)
    big = jpeg_with_orientation(tmp_path / "big.jpg", 2, 1)
    assert for_device(grey.read_bytes(), 10**8) is not None
    assert for_device(cmyk.read_bytes(), 10**8) is None  # CMYK stays with Pillow
    assert for_device(png.read_bytes(), 10**8) is None
    assert for_device(big.read_bytes(), 1000) is None  # over the limit: the CPU path refuses
    assert for_device(b"\xff\xd8\xff\xe0garbage", 10**8) is None  # a broken header too
    huge = tmp_path / "huge.jpg"  # 4100x4100: a batch of them would fill a GPU
    PILImage.new("RGB", (4100, 4100), (9, 9, 9)).save(huge, "JPEG")
    assert for_device(huge.read_bytes(), 10**9) is None
    heavy = grey.read_bytes() + b"\0" * (8 << 20)  # trailing bytes: still a valid JPEG
    assert for_device(grey.read_bytes(), 10**8) is not None and for_device(heavy, 10**8) is None


def test_an_index_with_device_jpegs_matches_the_cpu_decode(
    migrated_url: str, tagger: TimmTagger, tmp_path: Path
) -> None:
    root = tmp_path / "art"
    for i in range(5):
        jpeg_with_orientation(root / f"r{i}.jpg", i, 1 + i % 8)
    jpeg_with_orientation(root / "rot6.jpg", 40, 6)
    jpeg_with_orientation(root / "grey.jpg", 41, 1, mode="L")
    PILImage.new("CMYK", (30, 20), (10, 200, 30, 40)).save(root / "cmyk.jpg", "JPEG")
    make_image(root / "p.png", seed=3)
    whole = jpeg_with_orientation(tmp_path / "whole.jpg", 42, 1).read_bytes()
    (root / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # the header reads, the data ends
    engine = create_db_engine(migrated_url)
    on_device = Indexer(engine, tagger, small_options(device_jpeg=True, read_processes=True)).run(
        [root]
    )
    other_url = f"sqlite:///{tmp_path / 'cpu.db'}"
    migrate.upgrade(other_url)
    on_cpu = Indexer(create_db_engine(other_url), tagger, small_options(device_jpeg=False)).run(
        [root]
    )
    assert on_device.as_dict() == on_cpu.as_dict()
    assert {(Path(p.path).name, p.code) for p in on_device.failures} == {
        (Path(p.path).name, p.code) for p in on_cpu.failures
    }
    assert_indexed_alike(engine, create_db_engine(other_url))


def test_a_jpeg_the_device_refuses_is_decoded_on_the_cpu_in_the_batch(tagger: TimmTagger) -> None:
    from app.tagger.device_decode import Jpeg

    buffer = __import__("io").BytesIO()
    rng = np.random.default_rng(9)
    PILImage.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(buffer, "JPEG")
    whole = buffer.getvalue()
    side = tagger.preprocess.size
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    batch: list[np.ndarray | Jpeg] = [
        pixels,
        Jpeg(whole),
        Jpeg(whole[: len(whole) // 2]),
        Jpeg(whole[:3] + b"junk"),
    ]
    prediction = predict_stacked(tagger, batch)
    assert set(prediction.errors) == {2, 3}
    assert prediction.errors[2].code == "truncated"
    alone = predict_stacked(tagger, [pixels])
    np.testing.assert_allclose(prediction.probs[0], alone.probs[0], atol=1e-5)


def test_the_server_does_not_compile_unless_asked(tiny_pixai_dir: Path, tmp_path: Path) -> None:
    from app.settings import Settings
    from app.tagger.factory import tagger_from_settings

    settings = Settings(data_dir=tmp_path, model_dir=tiny_pixai_dir, batch_size=4)
    served = tagger_from_settings(settings, tiny_pixai_dir, serving=True)
    indexing = tagger_from_settings(settings, tiny_pixai_dir)
    assert served.forward.compile == "off"  # type: ignore[attr-defined]
    assert indexing.forward.compile == "auto"  # type: ignore[attr-defined]
    asked = Settings(data_dir=tmp_path, model_dir=tiny_pixai_dir, compile="on", batch_size=4)
    compiled = tagger_from_settings(asked, tiny_pixai_dir, serving=True)
    assert compiled.compile_seconds > 0  # type: ignore[attr-defined]
    rng = np.random.default_rng(10)
    side = compiled.preprocess.size
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(3)]
    np.testing.assert_allclose(
        predict_stacked(compiled, images).probs, predict_stacked(served, images).probs, atol=1e-4
    )
