"""What the readers save when the model's device pads and resizes the images they decode
(SAGASHI_DEVICE_RESIZE), and what it changes in the pixels and scores, in one run.

    python -m bench.bench_device_resize                  # about 5 minutes on 2 cores
    python -m bench.bench_device_resize --scores 0       # without the real-size model

Two ways of the same readers' code (``indexer.reading.decode_bytes``): ``readers`` (pad
and resize to model size in the reader, Pillow) and ``device`` (the reader hands the decoded
frame on; the staging shapes it with torch, ``app.tagger.device_decode.shape_frames``).

1. ``per_file``: one thread reading PNGs (hash, decode, then shape or hand on), alone and
   beside one thread running Python (``bench.gil.Busy``; the readers' 1 ms switch
   interval), in ms per file: the bench's
   1600x1200 PNGs and the real anime PNGs of ../shared/data/images/sdeval_anime when present;
2. ``readers``: the index's reader threads on PNGs, images/s, alone and beside a busy
   thread, the two ways alternated over --rounds;
3. ``shaping_on_this_cpu``: what the staging's torch pad and resize costs per frame on this
   machine's CPU (a GPU's cost is not measured here), against Pillow's in the reader;
4. ``pixels``: the model-size pixels of the two ways on the real anime PNGs, mean and max
   absolute difference (0-255), for both models' geometries;
5. ``scores`` (--scores N real anime PNGs): the real-size EVA02-Large with a random head
   (fp32, CPU) on the two ways' pixels, for both geometries: max and mean probability
   difference, top-10 agreement, least embedding cosine. A random head's scores cluster
   near its floor, so the top-10 agreement is a lower bound on a real model's.

Model-size pixels are 448 px, pad, bicubic (WD v3's geometry) unless said.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.tagger import TimmTagger
from app.tagger.batching import predict_stacked
from app.tagger.decode import decode_with_meta
from app.tagger.device_decode import Frame, geometry, shape_frames
from app.tagger.forward import ForwardOptions
from app.tagger.preprocess import Preprocess
from bench.bench_gpu import agreement, make_images, make_sources
from bench.bench_tagger import build_random_pixai
from bench.common import emit, machine
from bench.gil import Busy
from indexer.readers import ThreadReaders
from indexer.reading import Read, ReadSpec, decode_bytes
from indexer.switch_interval import short_switch_interval
from tests.support.geometries import PIXAI as PIXAI_GEOMETRY
from tests.support.geometries import WD as WD_GEOMETRY
from tests.support.paths import SHARED_DATA

log = logging.getLogger("bench.device_resize")

WAYS = ("readers", "device")


def spec_for(way: str, preprocess: Preprocess = WD_GEOMETRY) -> ReadSpec:
    return ReadSpec(preprocess, 10**9, True, device_resize=way == "device")


def read_all(spec: ReadSpec, datas: list[bytes]) -> None:
    for data in datas:
        read = decode_bytes(spec, Read("bench"), data)
        assert read.error is None and read.model_input() is not None


def per_file(name: str, datas: list[bytes]) -> dict[str, Any]:
    line: dict[str, Any] = {"files": len(datas)}
    read_all(spec_for("readers"), datas[:1])  # warm
    for way in WAYS:
        spec = spec_for(way)
        started = time.perf_counter()
        read_all(spec, datas)
        alone = (time.perf_counter() - started) / len(datas)
        with short_switch_interval(), Busy():  # the readers' interval, as in a run
            started = time.perf_counter()
            read_all(spec, datas)
            beside = (time.perf_counter() - started) / len(datas)
        line[way] = {"alone_ms": round(1000 * alone, 1), "beside_busy_ms": round(1000 * beside, 1)}
    log.info("per_file %s: %s", name, json.dumps(line))
    return line


def readers_rate(files: list[Path], workers: int, way: str, busy: bool) -> float:
    pool = ThreadReaders(spec_for(way), workers, workers * 4)
    with Busy() if busy else _Idle():
        started = time.perf_counter()
        done = sum(r.error is None for r in pool.map((str(p), None) for p in files))
        return done / (time.perf_counter() - started)


class _Idle:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def shaping_on_this_cpu(datas: list[bytes]) -> dict[str, float]:
    """ms per frame: Pillow's pad and resize in a reader against torch's in the staging, both
    on this CPU, in batches of the same frames."""
    images = [decode_with_meta(data, max_pixels=10**9)[0] for data in datas]
    frames = [Frame(np.asarray(image)) for image in images]
    started = time.perf_counter()
    for image in images:
        WD_GEOMETRY.pixels(image)
    pillow = (time.perf_counter() - started) / len(images)
    shape_frames(frames[:2], WD_GEOMETRY, torch.device("cpu"))  # warm
    started = time.perf_counter()
    shape_frames(frames, WD_GEOMETRY, torch.device("cpu"))
    shaped = (time.perf_counter() - started) / len(frames)
    return {"pillow_ms": round(1000 * pillow, 1), "torch_ms": round(1000 * shaped, 1)}


def pixel_difference(paths: list[Path]) -> dict[str, dict[str, float]]:
    result = {}
    for name, preprocess in (("wd_pad_bicubic", WD_GEOMETRY), ("pixai", PIXAI_GEOMETRY)):
        means, peaks = [], []
        for path in paths:
            image, _meta = decode_with_meta(path.read_bytes(), max_pixels=10**9)
            frame = torch.from_numpy(np.array(image)).permute(2, 0, 1)
            on_device = geometry(frame, preprocess).numpy().astype(np.int16)
            diff = np.abs(on_device - preprocess.pixels(image).astype(np.int16))
            means.append(float(diff.mean()))
            peaks.append(int(diff.max()))
        result[name] = {
            "files": len(paths),
            "mean_abs": round(float(np.mean(means)), 3),
            "worst_file_mean_abs": round(max(means), 3),
            "max_abs": max(peaks),
        }
    return result


def scores(paths: list[Path], work: Path) -> dict[str, Any]:
    """The two ways' model-size pixels of each geometry through one real-size network."""
    model = work / "model"
    model.mkdir()
    build_random_pixai(model)
    tagger = TimmTagger(model, "cpu", forward=ForwardOptions(batch_size=len(paths)))
    tagger.load()
    images = [decode_with_meta(p.read_bytes(), max_pixels=10**9)[0] for p in paths]
    result: dict[str, Any] = {"images": len(paths)}
    for name, preprocess in (("pixai", PIXAI_GEOMETRY), ("wd_pad_bicubic", WD_GEOMETRY)):
        pillow = [preprocess.pixels(image) for image in images]
        frames = [torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images]
        device = [geometry(frame, preprocess).numpy() for frame in frames]
        outputs = [predict_stacked(tagger, pixels) for pixels in (pillow, device)]
        result[name] = agreement(*outputs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scores", type=int, default=8, help="real PNGs scored; 0: none")
    parser.add_argument("--out", help="write the results as JSON here too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    log.info("machine: %s", results["machine"])
    workers = max(1, os.cpu_count() or 2)
    anime = SHARED_DATA / "images" / "sdeval_anime"
    real = sorted(anime.rglob("*.png")) if anime.is_dir() else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        made = make_sources(work)
        pngs = [p.read_bytes() for p in made if p.suffix == ".png"]
        results["per_file"] = {"bench_png_1600x1200": per_file("png", pngs)}
        large = [p.read_bytes() for p in real if p.stat().st_size > 500_000][:12]
        if large:
            results["per_file"]["sdeval_anime_png"] = per_file("anime png", large)
        _folder, files = make_images(work, made, "pngs", 96, 1)
        rates: dict[str, list[float]] = {}
        for _ in range(args.rounds):  # alternated, so drift hits both alike
            for way in WAYS:
                for busy in (False, True):
                    label = f"{way}_{'beside_busy' if busy else 'alone'}"
                    rates.setdefault(label, []).append(
                        round(readers_rate(files, workers, way, busy), 1)
                    )
        results["readers_png_img_s"] = rates
        log.info("readers: %s", rates)
        results["shaping_on_this_cpu"] = shaping_on_this_cpu(pngs)
        log.info("shaping: %s", results["shaping_on_this_cpu"])
        if real:
            results["pixels"] = pixel_difference(real)
            log.info("pixels: %s", results["pixels"])
        if real and args.scores:
            results["scores"] = scores(real[: args.scores], work)
            log.info("scores: %s", results["scores"])
    emit(results, args.out)


if __name__ == "__main__":
    main()
