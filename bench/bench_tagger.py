"""Images per second of the tagging pipeline vs the bare model forward, same run.

The model is the real-size architecture (EVA02-Large, 448 px, 13,461-tag PixAI head) with
random weights, saved in PixAI's file layout and loaded through Sagashi's real loader.
Random weights make the tags meaningless but the speed real.

    python -m bench.bench_tagger                       # CPU: batch sizes 1, 8, 32
    python -m bench.bench_tagger --device cuda --batch-sizes 32,64,128 --images 2048

Images: ../shared/data/images/sdeval_anime (real illustrations, up to 4961x3508) when
present, else generated JPEGs; --synthetic-size 2000x1500 forces generated ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle, islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.tagger import TimmTagger
from app.tagger.batching import prepare, tag_sources
from app.tagger.config import ModelConfig
from app.tagger.model import PixaiHead, create_encoder
from app.tagger.preprocess import normalise_one
from bench.common import SHARED_DATA, machine

log = logging.getLogger("bench.tagger")

NUM_TAGS = 13461
GENERAL = 9740


# A real tagger scores about 60 tags per image at or above the 0.05 storage floor.
TAGS_ABOVE_FLOOR = 60


def build_random_pixai(directory: Path) -> Path:
    """PixAI's layout (no config.json: the WD v3 EVA02-Large default applies)."""
    torch.manual_seed(0)
    encoder = create_encoder(ModelConfig.wd_eva02_large_v3(), num_classes=0)
    head = PixaiHead(1024, NUM_TAGS)
    linear = head.head[0]
    assert isinstance(linear, torch.nn.Linear)
    _calibrate(encoder, linear)
    torch.save(torch.nn.Sequential(encoder, head).state_dict(), directory / "model_v0.9.pth")
    tags = {
        "tag_map": {f"tag_{i}": i for i in range(NUM_TAGS)},
        "tag_split": {"gen_tag_count": GENERAL, "character_tag_count": NUM_TAGS - GENERAL},
    }
    (directory / "tags_v0.9_13k.json").write_text(json.dumps(tags))
    (directory / "char_ip_map.json").write_text("{}")
    return directory


def _calibrate(encoder: torch.nn.Module, linear: torch.nn.Linear) -> None:
    """Shift the random head's bias so an image scores about TAGS_ABOVE_FLOOR tags at or
    above 0.05, as a real tagger does. Untouched, a random head scores every one of the
    13,461 tags near 0.5, and the index would store 200 times the real number of postings."""
    with torch.inference_mode():
        pooled = encoder.forward_head(  # type: ignore[operator]
            encoder.forward_features(torch.randn(2, 3, 448, 448)),  # type: ignore[operator]
            pre_logits=True,
        )
        logits = linear(pooled)
        kth = logits.topk(TAGS_ABOVE_FLOOR, dim=1).values[:, -1].mean()
        linear.bias.sub_(kth - torch.logit(torch.tensor(0.05)))


def image_files(workdir: Path, synthetic: tuple[int, int] | None) -> list[Path]:
    real = SHARED_DATA / "images" / "sdeval_anime"
    if synthetic is None and real.is_dir():
        files = sorted(p for p in real.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if files:
            return files
    width, height = synthetic or (2000, 1500)
    rng = np.random.default_rng(0)
    files = []
    for i in range(16 if synthetic is None else 8):
        # Smooth gradients plus noise compress like photos, not like pure noise.
        base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        pixels = base + rng.normal(0, 25, (height, width, 3)).astype(np.float32) + i * 7
        path = workdir / f"synthetic_{width}x{height}_{i}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        files.append(path)
    return files


def bare_forward_rate(tagger: TimmTagger, batch_size: int, count: int) -> float:
    size = tagger.preprocess.size
    batch = torch.randn(batch_size, 3, size, size)
    # Warm-up: on CUDA the first batch of a shape pays for kernel selection.
    tagger.predict(batch if tagger.device.type == "cuda" else batch[:1])
    started = time.perf_counter()
    done = 0
    while done < count:
        tagger.predict(batch)
        done += batch_size
    return done / (time.perf_counter() - started)


def pipeline_rate(
    tagger: TimmTagger, files: list[Path], batch_size: int, count: int, workers: int
) -> float:
    sources = list(islice(cycle(files), count))
    started = time.perf_counter()
    done = sum(
        1
        for outcome in tag_sources(
            tagger, sources, batch_size=batch_size, workers=workers, max_pixels=10**9
        )
        if outcome.ok
    )
    return done / (time.perf_counter() - started)


def decode_rate(tagger: TimmTagger, files: list[Path], count: int, workers: int) -> float:
    """Decode and preprocess alone, in the same thread pool: the CPU's ceiling."""
    sources = list(islice(cycle(files), count))
    preprocess = tagger.preprocess
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = sum(1 for p in pool.map(lambda s: prepare(s, preprocess, 10**9, True), sources))
    return done / (time.perf_counter() - started)


def draft_effect(tagger: TimmTagger, files: list[Path], workdir: Path) -> dict[str, float]:
    """Decode time and input/score differences of JPEG draft decoding, on JPEGs large
    enough for draft decoding to apply (generated ones when the real set has too few)."""
    jpegs = [p for p in files if p.suffix.lower() in (".jpg", ".jpeg") and _drafts(tagger, p)]
    jpegs += large_jpegs(files, workdir, count=max(0, 8 - len(jpegs)))
    scored = jpegs[:4]  # the forward is slow on CPU; four images show the size of the effect
    log.info("draft measured on %d JPEGs: %s", len(jpegs), ", ".join(p.name for p in jpegs))
    timings = {}
    tensors = {}
    for draft in (False, True):
        started = time.perf_counter()
        tensors[draft] = torch.stack(
            [
                normalise_one(tagger.preprocess, prepare(p, tagger.preprocess, 10**9, draft).pixels)  # type: ignore[arg-type]
                for p in jpegs
            ]
        )
        timings[draft] = (time.perf_counter() - started) / len(jpegs)
    full = tagger.predict(tensors[False][: len(scored)]).probs
    drafted = tagger.predict(tensors[True][: len(scored)]).probs
    pixel_delta = (tensors[True] - tensors[False]).abs() / 2  # in units of the [0, 1] range
    return {
        "jpegs": len(jpegs),
        "scored": len(scored),
        "decode_ms_full": timings[False] * 1000,
        "decode_ms_draft": timings[True] * 1000,
        "pixel_mean_abs_diff": float(pixel_delta.mean()),
        "score_max_abs_diff": float(np.abs(full - drafted).max()),
        "score_mean_abs_diff": float(np.abs(full - drafted).mean()),
    }


def large_jpegs(files: list[Path], workdir: Path, count: int) -> list[Path]:
    """Real illustrations enlarged to a 3000 px long side and saved as JPEG (quality 92),
    the size of a scan or a high-resolution upload."""
    made = []
    for source in files[:count]:
        with Image.open(source) as image:
            rgb = image.convert("RGB")
        scale = 3000 / max(rgb.size)
        big = rgb.resize(
            (round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS
        )
        target = workdir / f"large_{source.stem}.jpg"
        big.save(target, quality=92)
        made.append(target)
    return made


def _drafts(tagger: TimmTagger, path: Path) -> bool:
    """Whether draft decoding really shrinks this JPEG (the DCT scales by at least 1/2)."""
    with Image.open(path) as image:
        request = tagger.preprocess.draft_request(*image.size)
        return request is not None and all(
            s >= 2 * r for s, r in zip(image.size, request, strict=True)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--images", type=int, default=0, help="per batch size (default: one batch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="decode threads (0: all cores)")
    parser.add_argument("--synthetic-size", default=None, help="e.g. 2000x1500")
    parser.add_argument("--skip-draft", action="store_true")
    parser.add_argument("--draft-only", action="store_true", help="only the draft measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    synthetic = (
        tuple(int(v) for v in args.synthetic_size.split("x")) if args.synthetic_size else None
    )
    workers = args.workers or (torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        tagger = TimmTagger(build_random_pixai(workdir), device=args.device)
        tagger.load()
        log.info("built and loaded the real-size model in %.0fs", time.perf_counter() - started)
        files = image_files(workdir, synthetic)  # type: ignore[arg-type]
        log.info("machine: %s", machine())
        log.info("images: %d files, e.g. %s", len(files), files[0].name)
        if not args.draft_only:
            count = args.images or 64
            log.info(
                "decode + preprocess alone, %d threads: %.1f img/s over %d images",
                workers,
                decode_rate(tagger, files, count, workers),
                count,
            )
        log.info("| batch | images | bare forward img/s | pipeline img/s | pipeline / bare |")
        log.info("|---|---|---|---|---|")
        sizes = [] if args.draft_only else [int(b) for b in args.batch_sizes.split(",")]
        for batch_size in sizes:
            count = args.images or batch_size
            bare = bare_forward_rate(tagger, batch_size, count)
            piped = pipeline_rate(tagger, files, batch_size, count, workers)
            log.info(
                "| %d | %d | %.3f | %.3f | %.1f%% |",
                batch_size,
                count,
                bare,
                piped,
                100 * piped / bare,
            )
        if not args.skip_draft:
            effect = draft_effect(tagger, files, workdir)
            log.info("JPEG draft decoding: %s", json.dumps(effect))


if __name__ == "__main__":
    main()
