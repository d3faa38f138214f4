"""What the index's writer can take: one batch transaction (image rows, postings,
embeddings, the change log) without a model, on SQLite or PostgreSQL.

    python -m bench.bench_writer                   # SQLite in a temp dir
    python -m bench.bench_writer --database-url postgresql://postgres@127.0.0.1/test

On a GPU run the caller's thread writes each batch while the model runs the next ones
(indexer.forwarding): its rate is a ceiling on the whole run, and the time it holds the GIL
is time the model thread waits to launch its kernels. This writes batches of real-shaped
predictions (PixAI's 13,461 scores, about 60 at or above the 0.05 floor, a 1024-d embedding)
through the index's own writer, times each batch, and runs the same batches again beside a
busy Python thread, whose rate against its rate alone is the share of the GIL the writer
leaves to other threads.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import numpy as np
from sqlalchemy import Engine, text

from app.store import repository as repo
from app.store.aliases import load_aliases
from app.store.db import session_factory
from app.tagger.config import ModelConfig
from app.tagger.protocol import ModelInfo, Prediction
from app.tagger.timm_tagger import preprocess_for
from app.tagger.vocab import TagVocabulary, load_pixai_vocabulary
from bench.common import SHARED_DATA, emit, measured_on_scratch
from bench.gil import Busy, busy_rate_alone
from indexer.pipeline import Loaded, Waiting, _Batch
from indexer.scan import Found
from indexer.switch_interval import short_switch_interval

log = logging.getLogger("bench.writer")

TAGS = 13_461
ABOVE_FLOOR = 60  # tags an image scores at or above the floor, as a real tagger does
FLOOR = 0.05
EMBEDDING = 1024


def vocabulary() -> tuple[TagVocabulary, str]:
    """PixAI's real vocabulary from the shared data, else one of its size."""
    path = SHARED_DATA / "tags" / "pixai_v0.9_tags_v0.9_13k.json"
    if path.is_file():
        return load_pixai_vocabulary(path, None), "PixAI v0.9 (shared data)"
    names = tuple(f"tag_{i}" for i in range(TAGS))
    return TagVocabulary(names, np.zeros(TAGS, dtype=np.int8)), "synthetic, 13,461 tags"


def tag_weights(tags: int) -> np.ndarray:
    """How often each of ``tags`` tags is drawn: Zipf-like, as common tags recur."""
    weights = 1.0 / np.arange(1, tags + 1, dtype=np.float64)
    weights /= weights.sum()
    return weights


def predictions(batch: int, tags: int, rng: np.random.Generator) -> Prediction:
    """Scores below the floor but for ABOVE_FLOOR tags an image (Zipf-like: common tags
    recur), and L2-normalised embeddings."""
    probs = rng.uniform(0.0, FLOOR * 0.9, size=(batch, tags)).astype(np.float32)
    weights = tag_weights(tags)
    for row in probs:
        chosen = rng.choice(tags, size=ABOVE_FLOOR, replace=False, p=weights)
        row[chosen] = rng.uniform(FLOOR, 1.0, size=ABOVE_FLOOR)
    embeddings = rng.standard_normal((batch, EMBEDDING)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return Prediction(probs, embeddings)


def waiting(first: int, batch: int) -> Waiting:
    """New files, as the readers leave them once their batch is handed over."""
    rows: Waiting = []
    for number in range(first, first + batch):
        path = f"/collection/{number:08d}.png"
        digest = f"{number:064x}"
        loaded = Loaded(Found(path, 1_000_000 + number, number), digest, digest[:32])
        loaded.facts = repo.FileFacts(
            path, digest, 1_000_000 + number, number, 1600, 1200, "png", digest[:32]
        )
        rows.append((loaded, None))
    return rows


def writer(engine: Engine, vocab: TagVocabulary) -> _Batch:
    """The index's writer on a fresh generation, with the real aliases."""
    info = ModelInfo(
        "bench-writer",
        "pixai",
        vocab.digest(),
        EMBEDDING,
        len(vocab),
        preprocess_for("pixai", ModelConfig.wd_eva02_large_v3()),
    )
    session = session_factory(engine)()
    generation = repo.generation_for_index(session, info)
    tag_map = repo.TagMap.ensure(session, vocab, load_aliases())
    session.commit()
    return _Batch(session, generation.id, tag_map, FLOOR)


def timed_batches(write: Callable[[int], None], batches: int) -> list[float]:
    """Seconds of each batch's write."""
    spent = []
    for number in range(batches):
        began = time.perf_counter()
        write(number)
        spent.append(time.perf_counter() - began)
    return spent


def summary(spent: list[float], batch: int) -> dict[str, float]:
    ms = np.array(spent) * 1000
    return {
        "batch_ms_p50": round(float(np.percentile(ms, 50)), 1),
        "batch_ms_p90": round(float(np.percentile(ms, 90)), 1),
        "ms_per_image": round(float(ms.mean()) / batch, 3),
        "ceiling_img_s": round(batch * len(ms) / (ms.sum() / 1000), 1),
    }


def run(engine: Engine, batch_size: int, batches: int) -> dict[str, object]:
    vocab, source = vocabulary()
    rng = np.random.default_rng(0)
    # A few distinct batches of scores, reused: generating them costs more than writing.
    made = [predictions(batch_size, len(vocab), rng) for _ in range(4)]
    target = writer(engine, vocab)
    counter = iter(range(10**9))

    def write(number: int) -> None:
        first = next(counter) * batch_size
        target.write(waiting(first, batch_size), made[number % len(made)])

    timed_batches(write, 3)  # warm: statement caches, the page cache, the first pages
    # At the switch interval an index run writes at (indexer.forwarding enters it).
    with short_switch_interval():
        alone = timed_batches(write, batches)
        busy_alone = busy_rate_alone(2.0)
        with Busy() as busy:
            beside = timed_batches(write, batches)
    target.session.close()
    with engine.connect() as connection:
        images = connection.execute(text("SELECT count(*) FROM images")).scalar_one()
        postings = connection.execute(text("SELECT count(*) FROM image_tags")).scalar_one()
    return {
        "database": engine.dialect.name,
        "vocabulary": source,
        "batch_size": batch_size,
        "images_written": images,
        "postings_per_image": round(postings / max(images, 1), 1),
        "alone": summary(alone, batch_size),
        "beside_busy": summary(beside, batch_size),
        "busy_thread_rate": round(busy.rate / busy_alone, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = measured_on_scratch(
        args.database_url, lambda engine: run(engine, args.batch_size, args.batches)
    )
    emit(results, args.out)


if __name__ == "__main__":
    main()
