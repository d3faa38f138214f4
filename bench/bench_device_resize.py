"""What the readers save when the model's device pads and resizes the images they decode
(SAGASHI_DEVICE_RESIZE), and what it changes in the pixels and scores, in one run.

    python -m bench.bench_device_resize                  # about 4 minutes on 2 cores
    python -m bench.bench_device_resize --scores 0       # without the real-size model

Three ways of the same readers' code (``indexer.reading.decode_bytes``): ``readers`` (pad
and resize to model size in the reader, Pillow), ``device`` (the reader hands the decoded
frame on as a view of Pillow's memory, ``frame_pixels``; the staging shapes it with torch,
``app.tagger.device_decode.shape_frames``) and ``device_copy`` (the frame handed on as a
copy, ``np.asarray``, which holds the GIL while it copies).

1. ``per_file``: one thread reading PNGs (hash, decode, then shape or hand on), alone and
   beside one thread running Python (``bench.gil.Busy``; the readers' 1 ms switch
   interval), in ms per file, with the busy thread's rate against its rate alone (windows
   of at least 3 s): the bench's 1600x1200 PNGs and the real anime PNGs of
   ../shared/data/images/sdeval_anime when present;
2. ``readers_png_beside_busy``: the index's reader threads on 96 PNGs beside a busy thread,
   [images/s, the busy thread's rate against alone], the ways alternated over --rounds;
3. ``hand_on_bench_png``: one thread handing decoded frames on in a loop, as a copy and as
   a view, beside a busy thread: ms per frame, and the busy thread's rate (``asleep``: the
   same loop sleeping 4 ms a frame instead, the GIL left alone: the rate to read against);
4. ``shaping_on_this_cpu``: what the staging's torch pad and resize costs per frame on this
   machine's CPU (a GPU's cost is not measured here), against Pillow's in the reader;
5. ``pixels``: the model-size pixels of the two ways on the real anime PNGs, mean and max
   absolute difference (0-255), for both models' geometries;
6. ``scores`` (--scores N real anime PNGs): the real-size EVA02-Large with a random head
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from app.tagger import TimmTagger, device_decode
from app.tagger.batching import predict_stacked
from app.tagger.decode import decode_with_meta
from app.tagger.device_decode import Frame, frame_pixels, geometry, shape_frames
from app.tagger.forward import ForwardOptions
from bench.bench_gpu import agreement, make_images, make_sources, reader_rate
from bench.bench_tagger import build_random_pixai
from bench.common import emit, machine
from bench.gil import Busy, alone_and_beside_busy, busy_rate_alone, timed
from indexer.reading import Read, ReadSpec, decode_bytes
from indexer.switch_interval import short_switch_interval
from tests.support.geometries import PIXAI as PIXAI_GEOMETRY
from tests.support.geometries import WD as WD_GEOMETRY
from tests.support.paths import SHARED_DATA

log = logging.getLogger("bench.device_resize")

WAYS = ("readers", "device_copy", "device")


@contextmanager
def way(name: str) -> Iterator[ReadSpec]:
    """The readers' spec for one way; ``device_copy`` hands frames on as copies
    (``np.asarray``) instead of views of Pillow's memory."""
    with ExitStack() as stack:
        if name == "device_copy":
            stack.enter_context(mock.patch.object(device_decode, "frame_pixels", np.asarray))
        yield ReadSpec(WD_GEOMETRY, 10**9, True, device_resize=name != "readers")


def read_all(spec: ReadSpec, datas: list[bytes]) -> None:
    for data in datas:
        read = decode_bytes(spec, Read("bench"), data)
        assert read.error is None and read.model_input() is not None


def per_file(name: str, datas: list[bytes], alone_rate: float) -> dict[str, Any]:
    line: dict[str, Any] = {"files": len(datas)}
    with way("readers") as spec:
        read_all(spec, datas[:1])  # warm (and pyarrow loaded once, for every way alike)
    frame_pixels(decode_with_meta(datas[0], max_pixels=10**9)[0])
    for label in WAYS:
        with way(label) as spec, short_switch_interval():  # the readers' interval, as in a run
            work = partial(read_all, spec, datas)
            line[label] = alone_and_beside_busy(work, len(datas), alone_rate, seconds=3.0)
    log.info("per_file %s: %s", name, json.dumps(line))
    return line


def hand_on(datas: list[bytes], alone_rate: float) -> dict[str, Any]:
    """One thread handing decoded frames on in a loop, as a copy and as a view, beside a
    busy thread: ms per frame and the busy thread's rate (a copy holds the GIL)."""
    images = [decode_with_meta(data, max_pixels=10**9)[0] for data in datas]
    result = {}
    takes = (("asleep", lambda image: time.sleep(0.004)), ("copy", np.asarray))
    for label, take in (*takes, ("view", frame_pixels)):  # asleep: the GIL left alone
        with short_switch_interval(), Busy() as busy:
            spent, calls = timed(lambda: [take(image) for image in images], 3.0)  # noqa: B023
        result[label] = {
            "ms_per_frame": round(1000 * spent / (calls * len(images)), 3),
            "busy_thread_rate": round(busy.rate / alone_rate, 2),
        }
    return result


def readers_rate(files: list[Path], workers: int, label: str, alone_rate: float) -> list[float]:
    """The reader threads' images/s beside a busy Python thread, and the busy thread's rate
    against its rate alone (what the readers leave of the GIL)."""
    with way(label) as spec, Busy() as busy:
        rate = reader_rate(spec, files, workers, False)
    return [round(rate, 1), round(busy.rate / alone_rate, 2)]


def shaping_on_this_cpu(datas: list[bytes]) -> dict[str, float]:
    """ms per frame: Pillow's pad and resize in a reader against torch's in the staging, both
    on this CPU, in batches of the same frames."""
    images = [decode_with_meta(data, max_pixels=10**9)[0] for data in datas]
    frames = [Frame(frame_pixels(image)) for image in images]
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
        alone_rate = busy_rate_alone()
        results["per_file"] = {"bench_png_1600x1200": per_file("png", pngs, alone_rate)}
        large = [p.read_bytes() for p in real if p.stat().st_size > 500_000][:12]
        if large:
            results["per_file"]["sdeval_anime_png"] = per_file("anime png", large, alone_rate)
        _folder, files = make_images(work, made, "pngs", 96, 1)
        rates: dict[str, list[list[float]]] = {label: [] for label in WAYS}
        for _ in range(args.rounds):  # alternated, so drift hits all alike
            for label in WAYS:
                rates[label].append(readers_rate(files, workers, label, alone_rate))
        results["readers_png_beside_busy"] = rates
        log.info("readers: %s", rates)
        results["hand_on_bench_png"] = hand_on(pngs, alone_rate)
        log.info("hand on: %s", results["hand_on_bench_png"])
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
