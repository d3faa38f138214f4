"""Ray's overhead: ``sagashi index --ray local`` against the in-process index, same run.

    python -m bench.bench_ray                    # 24 images, real-size random PixAI, CPU
    python -m bench.bench_ray --tiny --images 400

Both index the same copies of the images into fresh SQLite databases, alternating (local,
Ray, local, Ray) so a drifting shared CPU hurts neither more. The Ray run uses a local Ray
started once beforehand (its start is reported apart) with one CPU tagger actor that has as
many torch threads as the in-process run; its time includes the actor loading the model, as
every ``--ray`` run pays it. The tables are printed as Markdown.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

import ray
import torch

from app.settings import Settings
from app.store import migrate
from app.store.db import create_db_engine
from app.tagger.factory import open_tagger
from bench.bench_tagger import build_random_pixai, image_files
from bench.common import machine
from indexer import jobs
from indexer.pipeline import Indexer, IndexSummary
from indexer.ray_tagging import RayIndexer, RayOptions

log = logging.getLogger("bench.ray")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("indexer", "app", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        model_dir.mkdir()
        if args.tiny:
            from tests.support.tiny_models import build_tiny_pixai

            build_tiny_pixai(model_dir)
        else:
            build_random_pixai(model_dir)
        tagger = open_tagger(model_dir, "cpu", threads)
        folder = work / "collection"
        folder.mkdir()
        sources = list(islice(cycle(image_files(work, None)), args.images))
        for i, source in enumerate(sources):
            shutil.copy(source, folder / f"{i:05d}{source.suffix}")
        log.info("machine: %s", machine())
        started = time.perf_counter()
        ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        rows: list[tuple[str, float]] = []
        for repeat in range(args.repeats):
            for kind in ("local", "ray"):
                url = f"sqlite:///{work / f'{kind}-{repeat}.db'}"
                migrate.upgrade(url)
                settings = Settings(
                    database_url=url,
                    data_dir=work / f"data-{kind}-{repeat}",
                    model_dir=model_dir,
                    batch_size=args.batch_size,
                    device="cpu",
                )
                seconds, summary = run(kind, settings, tagger, folder, threads)
                assert summary.new == args.images, summary
                rows.append((kind, seconds))
                log.info(
                    "%s run %d: %.2f s, %.3f img/s",
                    kind,
                    repeat + 1,
                    seconds,
                    args.images / seconds,
                )
        ray.shutdown()
    local = [s for k, s in rows if k == "local"]
    on_ray = [s for k, s in rows if k == "ray"]
    model = "tiny (56 px)" if args.tiny else "real-size random PixAI (EVA02-L, 448 px)"
    log.info("\nRay start (ray.init, %d CPUs): %.1f s, outside the runs below", threads, ray_start)
    log.info(
        "| images | batch | model | in-process img/s (runs) | --ray local img/s (runs) "
        "| Ray overhead (best vs best) |"
    )
    log.info("|---|---|---|---|---|---|")
    log.info(
        "| %d | %d | %s | %s | %s | %+.1f%% |",
        args.images,
        args.batch_size,
        model,
        " / ".join(f"{args.images / s:.3f}" for s in local),
        " / ".join(f"{args.images / s:.3f}" for s in on_ray),
        100 * (min(on_ray) / min(local) - 1),
    )


def run(
    kind: str, settings: Settings, tagger: object, folder: Path, threads: int
) -> tuple[float, IndexSummary]:
    engine = create_db_engine(settings.database_url or "")
    options = jobs.index_options(settings)
    started = time.perf_counter()
    if kind == "local":
        summary = Indexer(engine, tagger, options).run([folder])  # type: ignore[arg-type]
    else:
        ray_options = RayOptions(
            "auto", settings.model_dir or Path(), "cpu", threads=threads, actors=1
        )
        indexer = RayIndexer(engine, tagger, options, ray_options, settings.data_dir)  # type: ignore[arg-type]
        summary = indexer.run([folder])
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds, summary


if __name__ == "__main__":
    main()
