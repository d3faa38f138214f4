"""What the GIL costs the readers, before and now, alone and beside a busy Python thread, in
one run on this machine.

    python -m bench.bench_reader_gil                       # about 4 minutes on 2 cores
    python -m bench.bench_reader_gil --images 96 --rounds 2

Pillow takes the GIL back after every call into its decoders, and a thread that wants the
GIL while another runs Python waits up to the switch interval for it. Three variants of the
same code (``bench.gil``): ``before`` (Pillow's 64 KiB blocks and one call per PNG chunk,
the 5 ms switch interval), ``one_call`` (the whole file in one call) and ``now`` (one call
and the readers' 1 ms interval).

1. ``per_file``: one thread decoding each kind of file to model-size pixels (the readers'
   path: hash, decode, resize), alone and beside one thread running Python, in ms per file,
   with the busy thread's own rate against its rate alone: the bench's 1600x1200 PNGs, the
   real anime PNGs of ../shared/data/images/sdeval_anime (when present) and 2000x1500
   JPEGs decoded by Pillow at a reduced scale (the CPU path);
2. ``readers``: the index's reader threads on the first 96 files of a folder with a PNG
   every --png-every files, images/s, beside one busy Python thread;
3. ``index``: ``sagashi index`` end to end on the CPU with the test suite's tiny model
   (Indexer on SQLite): the model is fast, so the run is bound by its readers and its writer
   thread, which is the busy Python thread here; the variants alternated over --rounds.

Model-size pixels are 448 px, pad, bicubic (WD v3's geometry) in 1 and 2; the tiny model's
224 px in 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from app.store import migrate
from app.store.aliases import load_aliases
from app.store.db import create_db_engine
from app.store.digests import of_bytes
from app.tagger import TimmTagger, decode
from app.tagger.forward import ForwardOptions
from bench.bench_gpu import make_images, make_sources, reader_rate
from bench.common import emit, machine
from bench.gil import VARIANTS, Busy, alone_and_beside_busy, busy_rate_alone, variant
from indexer.pipeline import Indexer, IndexOptions
from indexer.reading import ReadSpec
from tests.support.geometries import WD as WD_GEOMETRY
from tests.support.paths import SHARED_DATA

log = logging.getLogger("bench.reader_gil")


def decode_to_pixels(datas: list[bytes], draft: bool) -> None:
    request = WD_GEOMETRY.draft_request if draft else None
    for data in datas:
        of_bytes(data)
        image, _meta = decode.decode_with_meta(data, max_pixels=10**9, draft=request)
        WD_GEOMETRY.pixels(image)


def per_file(name: str, datas: list[bytes], draft: bool, alone_rate: float) -> dict[str, Any]:
    line: dict[str, Any] = {"files": len(datas)}
    decode_to_pixels(datas[:1], draft)  # warm
    for label in VARIANTS:
        with variant(label):
            work = partial(decode_to_pixels, datas, draft)
            line[label] = alone_and_beside_busy(work, len(datas), alone_rate)
    log.info("per_file %s: %s", name, json.dumps(line))
    return line


def readers_rate(files: list[Path], workers: int, name: str) -> float:
    with variant(name), Busy():
        return reader_rate(ReadSpec(WD_GEOMETRY, 10**9, True), files, workers, False)


def index_rate(tagger: TimmTagger, folder: Path, work: Path, run: str, name: str) -> float:
    url = f"sqlite:///{work / run}.db"
    migrate.upgrade(url)
    options = IndexOptions(
        batch_size=tagger.forward.batch_size,
        workers=max(1, (os.cpu_count() or 2) - 1),
        max_pixels=10**9,
        jpeg_draft=True,
        score_floor=0.05,
        aliases=load_aliases(),
    )
    with variant(name):
        started = time.perf_counter()
        summary = Indexer(create_db_engine(url), tagger, options).run([folder])
        return summary.new / (time.perf_counter() - started)


def rounds(fn: Callable[[str], float], count: int) -> dict[str, list[float]]:
    """``fn(variant)`` for every variant, alternated ``count`` times, in images/s."""
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(count):
        for name in VARIANTS:
            rates[name].append(round(fn(name), 1))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192, help="files in the index folder")
    parser.add_argument("--png-every", type=int, default=2, help="every Nth file a PNG")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    log.info("machine: %s", results["machine"])
    workers = max(1, (os.cpu_count() or 2) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        made = make_sources(work)
        alone_rate = busy_rate_alone()
        pngs = [p.read_bytes() for p in made if p.suffix == ".png"]
        jpegs = [p.read_bytes() for p in made if p.suffix == ".jpg"][:16]
        results["per_file"] = {"bench_png_1600x1200": per_file("png", pngs, False, alone_rate)}
        anime = SHARED_DATA / "images" / "sdeval_anime"
        if anime.is_dir():
            real = sorted(p for p in anime.rglob("*.png") if p.stat().st_size > 500_000)[:12]
            results["per_file"]["sdeval_anime_png"] = per_file(
                "anime png", [p.read_bytes() for p in real], False, alone_rate
            )
        results["per_file"]["jpeg_2000x1500_drafted"] = per_file("jpeg", jpegs, True, alone_rate)
        folder, files = make_images(work, made, "collection", args.images, args.png_every)
        results["readers_beside_busy_img_s"] = rounds(
            partial(readers_rate, files[:96], workers), args.rounds
        )
        log.info("readers: %s", results["readers_beside_busy_img_s"])
        from tests.support.tiny_models import build_tiny_pixai

        model = work / "model"
        model.mkdir()
        build_tiny_pixai(model)
        tagger = TimmTagger(model, "cpu", forward=ForwardOptions(batch_size=16))
        tagger.load()
        runs = iter(range(1000))
        results["index_img_s"] = rounds(
            lambda name: index_rate(tagger, folder, work, f"run{next(runs)}", name),
            args.rounds,
        )
        log.info("index: %s", results["index_img_s"])
    emit(results, args.out)


if __name__ == "__main__":
    main()
