"""Tagging at the GPU's speed: every figure of the GPU issue in one run with a time limit.

    python3 -m bench.bench_gpu --device cuda --images 2048 --batch-size 64 --budget 480
    python3 -m bench.bench_gpu --device cuda --images 2048 --batch-size 64 --budget 420 --focused
    python -m bench.bench_gpu --device cpu --tiny --images 48 --batch-size 8   # smoke test

In one process, on one model (the real-size EVA02-Large with a random, calibrated 13,461-tag
head, in PixAI's file layout; --tiny: the test suite's tiny model):

1. the handler-style baseline: fp32 weights, one image per call, torchvision transforms on
   a PIL image, as the PixAI card's handler.py does;
2. the bare forward (random input already on the device) for each forward variant: fp32,
   fp32 weights under bf16 autocast (the earlier GPU path), bf16 weights, bf16 weights
   compiled, and compiled with the fused layers (the default on CUDA) at batch 64, then
   replayed from a CUDA graph (SAGASHI_CUDA_GRAPHS) and at batch 128, with the compile time;
3. each variant's scores against fp32 on real-size generated images: max and mean absolute
   probability difference, top-10 agreement, least embedding cosine;
4. the readers alone (threads against processes), the CPU cost of a PNG by stage (hashing,
   Pillow's decode, the resize to model size; one thread) and the PNG-only read rate, alone
   and beside a busy Python thread with the readers' GIL changes undone and as they are
   (bench.gil), the PNG readers handing decoded frames on (SAGASHI_DEVICE_RESIZE), the GPU
   JPEG decoder (torchvision's ``decode_jpeg`` on the device, batched) and the device's pad
   and resize of PNG frames, each with its score difference against Pillow;
5. ``sagashi index`` end to end (Indexer on SQLite, FAISS build excluded) with the default
   path (reader threads, JPEGs decoded on the GPU, bf16 compiled and fused, two staging
   threads, PNGs resized on the GPU) on the mixed folder (also with the readers' GIL
   changes undone, and with the PNGs resized by the readers) and on a JPEG-only one, with
   one staging thread, and with the CUDA graph on both folders (--repeat N rounds of these,
   alternated); a full reindex of the same files (FAISS build included); then the index at
   batch 128, with reader processes, with every image decoded and resized by the readers,
   and with the earlier path (autocast, threads, no compile). Each index line carries the
   run's in-flight timings (forward, input wait, staging, writes).

Images: generated JPEGs (2000x1500 and 3000x2250, gradients, shapes and noise) and PNGs
(1600x1200, flatter, as illustrations), copied up to --images files: a quarter PNG in the
mixed folder, none in the JPEG-only one.
Every section prints its line as it finishes, and the table at the end; --budget stops
starting new sections when the time is nearly spent. JSON goes to --out when given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from app.store import migrate
from app.store.aliases import load_aliases
from app.store.db import create_db_engine
from app.store.digests import of_bytes
from app.tagger import TimmTagger
from app.tagger.batching import predict_stacked
from app.tagger.decode import decode_with_meta
from app.tagger.device_decode import Frame, shape_frames
from app.tagger.forward import ForwardOptions
from bench import gil
from bench.bench_tagger import build_random_pixai
from bench.common import machine
from indexer import forwarding
from indexer.pipeline import Indexer, IndexOptions
from indexer.readers import ProcessReaders, ThreadReaders
from indexer.reading import ReadSpec
from indexer.reindex import Reindexer

log = logging.getLogger("bench.gpu")

# Sections an H200 run has measured already (docs/benchmarks.md, GPU runs of 2026-12-04):
# --focused skips them, so a short device session spends its minutes on what is open (the
# PNG paths, the readers' GIL changes, the CUDA graph and the default path end to end).
MEASURED = {
    "handler_fp32_b1_img_s",
    "autocast",
    "bf16",
    "bf16_compiled",
    "bf16_compiled_fused_b128",
    "read_processes_img_s",
    "index_jpegs_one_stager",
    "index_jpegs_b128",
    "index_processes",
    "index_before",
}


def make_image(path: Path, size: tuple[int, int], seed: int, flat: bool) -> Path:
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    channels = [200 * x + 40 * y, 120 + 100 * np.sin(6 * x + seed), 220 * y * (1 - x)]
    base = np.stack(np.broadcast_arrays(*channels), axis=-1).astype(np.float32)
    for _ in range(12):  # flat shapes, as in illustrations
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(40, 400)
        mask = (np.arange(width)[None, :] - cx) ** 2 + (np.arange(height)[:, None] - cy) ** 2
        base[mask < r * r] = rng.uniform(0, 255, 3)
    noise = 3 if flat else 18
    pixels = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if path.suffix == ".png":
        image.save(path, optimize=False)
    else:
        image.save(path, quality=90)
    return path


def make_sources(work: Path) -> list[Path]:
    """Distinct JPEG and PNG sources, made in parallel."""
    sources = work / "sources"
    sources.mkdir()
    specs = [(sources / f"j{i:03d}.jpg", (2000, 1500), i, False) for i in range(48)]
    specs += [(sources / f"l{i:03d}.jpg", (3000, 2250), 100 + i, False) for i in range(8)]
    specs += [(sources / f"p{i:03d}.png", (1600, 1200), 200 + i, True) for i in range(16)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(make_image, *zip(*specs, strict=True)))


def make_images(
    work: Path, made: list[Path], name: str, count: int, png_every: int
) -> tuple[Path, list[Path]]:
    """Copies of the sources up to ``count`` in one folder, every ``png_every``-th a PNG."""
    jpegs = [p for p in made if p.suffix == ".jpg"]
    pngs = [p for p in made if p.suffix == ".png"]
    folder = work / name
    folder.mkdir()
    files = []
    for i in range(count):
        png = png_every and i % png_every == png_every - 1
        source = pngs[i // max(png_every, 1) % len(pngs)] if png else jpegs[i % len(jpegs)]
        target = folder / f"{i:05d}{source.suffix}"
        shutil.copyfile(source, target)
        files.append(target)
    return folder, files


class LastLine(logging.Handler):
    """Keeps the last message logged: the in-flight timings of the last index run."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


def open_model(directory: Path, device: str, batch: int, **forward: Any) -> TimmTagger:
    tagger = TimmTagger(directory, device, forward=ForwardOptions(batch_size=batch, **forward))
    tagger.load()
    return tagger


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_rate(tagger: TimmTagger, batch: int, count: int) -> float:
    size = tagger.preprocess.size
    inputs = torch.randn(batch, 3, size, size, device=tagger.device)
    tagger.predict(inputs)
    tagger.predict(inputs)
    sync(str(tagger.device))
    started = time.perf_counter()
    done = 0
    while done < count:
        tagger.predict(inputs)  # returns numpy: the device work is finished
        done += batch
    return done / (time.perf_counter() - started)


def handler_rate(tagger: TimmTagger, files: list[Path]) -> float:
    """PixAI handler.py's shape: one PIL image per call, torchvision transforms, fp32."""
    from torchvision import transforms

    size = tagger.preprocess.size
    transform = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ]
    )
    net = tagger.network
    started = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            tensor = transform(image.convert("RGB")).unsqueeze(0).to(tagger.device)
        with torch.inference_mode():
            logits, _pooled = net(tensor)
            torch.sigmoid(logits).cpu()
    return len(files) / (time.perf_counter() - started)


def pixels_of(tagger: TimmTagger, files: list[Path]) -> list[np.ndarray]:
    spec = ReadSpec(tagger.preprocess, 10**9, True)
    return [r.pixels for r in ThreadReaders(spec, 8, 32).map((str(p), None) for p in files)]  # type: ignore[misc]


def agreement(reference: Any, other: Any) -> dict[str, float]:
    diff = np.abs(reference.probs - other.probs)
    top = np.argsort(-reference.probs, axis=1)[:, :10]
    top_other = np.argsort(-other.probs, axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, top_other, strict=True)])
    cosine = (reference.embeddings * other.embeddings).sum(axis=1).min()
    return {
        "max_abs_prob_diff": float(diff.max()),
        "mean_abs_prob_diff": float(diff.mean()),
        "top10_agreement": float(overlap),
        "min_embedding_cosine": float(cosine),
    }


def reader_rate(spec: ReadSpec, files: list[Path], workers: int, processes: bool) -> float:
    kind = ProcessReaders if processes else ThreadReaders
    readers = kind(spec, workers, workers * 4)
    started = time.perf_counter()
    done = sum(r.error is None for r in readers.map((str(p), None) for p in files))
    return done / (time.perf_counter() - started)


def beside_busy(spec: ReadSpec, files: list[Path], workers: int) -> dict[str, float]:
    """Reader threads' images/s beside one busy Python thread (the writer's stand-in), with
    the readers' GIL changes undone (before) and as they are (now): bench.gil."""
    rates = {}
    for name in ("before", "now"):
        with gil.variant(name), gil.Busy():
            rates[name] = round(reader_rate(spec, files, workers, False), 1)
    return rates


def png_stages(spec: ReadSpec, pngs: list[Path]) -> dict[str, float]:
    """Milliseconds of one CPU thread per PNG in each stage of the readers' CPU path: what
    decoding PNGs on the CPU costs, and what resizing them elsewhere would save."""
    spent = {"hash_ms": 0.0, "decode_ms": 0.0, "resize_ms": 0.0}
    for path in pngs:
        data = path.read_bytes()
        started = time.perf_counter()
        of_bytes(data)
        hashed = time.perf_counter()
        image, _ = decode_with_meta(data, max_pixels=spec.max_pixels)
        image.load()
        loaded = time.perf_counter()
        spec.preprocess.pixels(image)
        done = time.perf_counter()
        spent["hash_ms"] += hashed - started
        spent["decode_ms"] += loaded - hashed
        spent["resize_ms"] += done - loaded
    stages = {name: round(1000 * value / len(pngs), 1) for name, value in spent.items()}
    return {**stages, "total_ms": round(sum(stages.values()), 1), "files": len(pngs)}


def batched_rate(
    work: Callable[[list[Any]], object], items: list[Any], batch: int, device: str
) -> float:
    """Items a second through ``work`` on ``device``, ``batch`` at a time, after one warm
    batch: the device's own rate, its queue drained before and after."""
    work(items[:batch])
    sync(device)
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        work(items[start : start + batch])
    sync(device)
    return len(items) / (time.perf_counter() - started)


def nvjpeg(tagger: TimmTagger, jpegs: list[Path], batch: int) -> dict[str, float]:
    """torchvision's GPU JPEG decoder, batched, resized and normalised on the GPU, against
    the Pillow path's pixels for the same files."""
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg

    size = tagger.preprocess.size
    datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in jpegs]

    def gpu_pixels(chunk: list[torch.Tensor]) -> torch.Tensor:
        decoded = decode_jpeg(chunk, device=tagger.device)
        resized = [
            F.interpolate(d[None].float(), size=(size, size), mode="bilinear", antialias=True)
            .round()
            .clamp(0, 255)
            .to(torch.uint8)[0]
            .permute(1, 2, 0)
            for d in decoded
        ]
        return torch.stack(resized)

    rate = batched_rate(gpu_pixels, datas, batch, str(tagger.device))
    sample = jpegs[:batch]
    on_gpu = tagger.predict_pixels(gpu_pixels(datas[:batch]))
    pillow = predict_stacked(tagger, pixels_of(tagger, sample))
    return {"decode_resize_img_s": rate, **agreement(pillow, on_gpu)}


def png_frames(tagger: TimmTagger, pngs: list[Path], batch: int) -> dict[str, float]:
    """PNGs decoded by the readers and padded and resized on the device (Frames, as
    SAGASHI_DEVICE_RESIZE does): the device's shaping rate, and the scores against the
    readers' Pillow resize of the same files."""
    on_device = ReadSpec(tagger.preprocess, 10**9, True, device_resize=True)
    readers = ThreadReaders(on_device, 8, 32)
    frames = [r.deferred for r in readers.map((str(p), None) for p in pngs)]
    assert all(isinstance(f, Frame) for f in frames)
    shape = partial(shape_frames, preprocess=tagger.preprocess, device=tagger.device)
    rate = batched_rate(shape, frames, batch, str(tagger.device))
    sample = pngs[:batch]
    shaped = predict_stacked(tagger, frames[:batch])  # type: ignore[arg-type]
    pillow = predict_stacked(tagger, pixels_of(tagger, sample))
    return {"shape_img_s": round(rate, 1), **agreement(pillow, shaped)}


def index_rate(
    tagger: TimmTagger,
    folder: Path,
    work: Path,
    name: str,
    batch: int,
    processes: bool,
    device_jpeg: bool | None = None,
    device_resize: bool | None = None,
) -> tuple[float, Any, str]:
    url = f"sqlite:///{work / name}.db"
    migrate.upgrade(url)
    engine = create_db_engine(url)
    options = IndexOptions(
        batch_size=batch,
        workers=max(1, (os.cpu_count() or 2) - 1),
        max_pixels=10**9,
        jpeg_draft=True,
        score_floor=0.05,
        aliases=load_aliases(),
        read_processes=processes,
        device_jpeg=device_jpeg,
        device_resize=device_resize,
    )
    started = time.perf_counter()
    summary = Indexer(engine, tagger, options).run([folder])
    rate = summary.new / (time.perf_counter() - started)
    return rate, options, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--budget", type=float, default=480, help="seconds; 0: no limit")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model (smoke run)")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--png-every", type=int, default=4, help="every Nth file a PNG; 0: none")
    parser.add_argument("--skip", default="", help="comma-separated section names to skip")
    parser.add_argument(
        "--focused",
        action="store_true",
        help="also skip the sections earlier GPU runs measured (MEASURED): a short device session",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the index sections")
    args = parser.parse_args()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    log.info("machine: %s", results["machine"])
    device, batch = args.device, args.batch_size
    skipped = set(args.skip.split(",")) | (MEASURED if args.focused else set())

    def section(name: str, fn: Callable[[], Any]) -> None:
        spent = time.perf_counter() - started
        if name in skipped:
            return
        if args.budget and spent > args.budget:
            log.info("%s: skipped, %.0f s of the %.0f s budget spent", name, spent, args.budget)
            return
        try:
            results[name] = fn()
        except Exception as exc:  # a failed section must not cost the others
            log.exception("%s failed", name)
            results[name] = f"failed: {exc}"
        log.info("%s: %s", name, json.dumps(results[name], default=str))
        if args.out:
            Path(args.out, "bench_gpu.json").write_text(json.dumps(results, indent=1, default=str))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        model_dir.mkdir()
        if args.tiny:
            from tests.support.tiny_models import build_tiny_pixai

            build_tiny_pixai(model_dir)
        else:
            build_random_pixai(model_dir)
        made = make_sources(work)
        folder, files = make_images(work, made, "collection", args.images, args.png_every)
        jpeg_folder, _ = make_images(work, made, "jpegs", args.images, 0)
        results["images"] = f"{len(files)} files, {sum(f.stat().st_size for f in files) >> 20} MiB"
        log.info("images: %s; setup %.0f s", results["images"], time.perf_counter() - started)
        sample = files[:batch]
        models: dict[str, TimmTagger] = {}
        outputs: dict[str, Any] = {}

        def variant(name: str, rows: int = batch, **forward: Any) -> dict[str, Any]:
            loading = time.perf_counter()
            tagger = open_model(model_dir, device, rows, **forward)
            models[name] = tagger
            load_s = time.perf_counter() - loading
            outputs[name] = predict_stacked(tagger, pixels_of(tagger, sample))
            line = {
                "load_s": round(load_s, 1),
                "compile_s": round(tagger.compile_seconds, 1),
                "captured": tagger.captured,
                "bare_img_s": round(bare_rate(tagger, rows, max(rows * 8, 256)), 1),
            }
            if name != "fp32" and "fp32" in outputs:
                line.update(agreement(outputs["fp32"], outputs[name]))
            return line

        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is fp32
        section("fp32", lambda: variant("fp32", precision="fp32", compile="off"))
        section("handler_fp32_b1_img_s", lambda: round(handler_rate(models["fp32"], files[:96]), 1))
        section("autocast", lambda: variant("autocast", precision="autocast", compile="off"))
        section("bf16", lambda: variant("bf16", precision="bf16", compile="off"))
        section(
            "bf16_compiled",
            lambda: variant("bf16_compiled", precision="bf16", compile="on", fuse="off"),
        )
        section(
            "bf16_compiled_fused",
            lambda: variant("bf16_compiled_fused", precision="bf16", compile="on", fuse="on"),
        )
        graphed: dict[str, Any] = {"precision": "bf16", "compile": "on", "graphs": "on"}
        section(
            "bf16_compiled_fused_graphs", lambda: variant("bf16_compiled_fused_graphs", **graphed)
        )
        section(
            "bf16_compiled_fused_b128",
            lambda: variant("bf16_compiled_fused_b128", 128, precision="bf16", compile="on"),
        )
        workers = max(1, (os.cpu_count() or 2) - 1)
        spec = ReadSpec(next(iter(models.values())).preprocess, 10**9, True)
        jpegs = [f for f in files if f.suffix == ".jpg"]
        section(
            "read_threads_img_s", lambda: round(reader_rate(spec, files[:512], workers, False), 1)
        )
        section(
            "read_processes_img_s", lambda: round(reader_rate(spec, files[:512], workers, True), 1)
        )
        pngs = [f for f in files if f.suffix == ".png"]
        section("png_stages", lambda: png_stages(spec, pngs[:32]))
        png_rate = partial(reader_rate, spec, pngs[:256], workers, False)
        section("read_png_threads_img_s", lambda: round(png_rate(), 1))
        section("read_png_threads_beside_busy", lambda: beside_busy(spec, pngs[:256], workers))
        frame_spec = ReadSpec(spec.preprocess, 10**9, True, device_resize=True)
        frame_rate = partial(reader_rate, frame_spec, pngs[:256], workers, False)
        section("read_png_frames_threads_img_s", lambda: round(frame_rate(), 1))
        fastest = ["bf16_compiled_fused", "bf16_compiled", "bf16"]
        fast = next(models[name] for name in fastest if name in models)
        if device.startswith("cuda"):
            section("nvjpeg", lambda: nvjpeg(fast, jpegs[:512], batch))
            section("png_frames", lambda: png_frames(fast, pngs[:256], batch))
        last: dict[str, Any] = {}
        timings = LastLine()
        logging.getLogger("indexer.forwarding").setLevel(logging.DEBUG)
        logging.getLogger("indexer.forwarding").addHandler(timings)

        def run_index(
            name: str,
            tagger: TimmTagger,
            processes: bool,
            device_jpeg: bool | None = None,
            device_resize: bool | None = None,
            where: Path = folder,
            stagers: int = 2,
            readers_as: str = "now",
        ) -> dict[str, Any]:
            forwarding.STAGERS = stagers
            try:
                with gil.variant(readers_as):
                    rate, options, url = index_rate(
                        tagger,
                        where,
                        work,
                        name,
                        tagger.forward.batch_size,
                        processes,
                        device_jpeg,
                        device_resize,
                    )
            finally:
                forwarding.STAGERS = 2
            last.update(options=options, url=url)
            return {"img_s": round(rate, 1), "in_flight": timings.last}

        variants: dict[str, dict[str, Any]] = {
            "index_default": {},
            "index_default_gil_before": {"readers_as": "before"},
            "index_default_readers_resize": {"device_resize": False},
            "index_jpegs": {"where": jpeg_folder},
            "index_jpegs_one_stager": {"where": jpeg_folder, "stagers": 1},
            "index_default_graphs": {"model": "bf16_compiled_fused_graphs"},
            "index_jpegs_graphs": {"where": jpeg_folder, "model": "bf16_compiled_fused_graphs"},
        }
        for round_ in range(1, args.repeat + 1):  # alternated, so drift hits all alike
            for name, how in variants.items():
                label = name if round_ == 1 else f"{name}_{round_}"
                rest = dict(how)
                wanted = rest.pop("model", None)
                if wanted is not None and wanted not in models:
                    continue  # its forward was skipped or did not load
                model = models[wanted] if wanted is not None else fast
                section(label, partial(run_index, label, model, False, **rest))

        def reindex() -> float:
            engine = create_db_engine(last["url"])
            began = time.perf_counter()
            summary = Reindexer(engine, fast, last["options"], work / "data").run()
            return round(summary.retagged / (time.perf_counter() - began), 1)

        section("reindex_jpegs_img_s", reindex)
        if "bf16_compiled_fused_b128" in models:
            wide = models["bf16_compiled_fused_b128"]
            section("index_jpegs_b128", lambda: run_index("b128", wide, False, where=jpeg_folder))
        section("index_processes", lambda: run_index("processes", fast, True))
        section("index_cpu_decode", lambda: run_index("cpu", fast, False, False, False))

        def index_before() -> dict[str, Any]:  # the earlier path: autocast, readers decode
            return run_index("before", models["autocast"], False, False, False)

        section("index_before", index_before)
    log.info("RESULTS %s", json.dumps(results, default=str))
    table = [(k, v) for k, v in results.items() if k not in ("args",)]
    for key, value in table:
        print(f"| {key} | {json.dumps(value, default=str)} |")


if __name__ == "__main__":
    main()
