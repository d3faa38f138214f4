"""ONNX Runtime against torch fp32 on the real-size architecture, in one run, on this CPU.

The model is EVA02-Large at 448 px with a 13,461-tag PixAI head and random weights, saved
in PixAI's .pth layout (as bench_tagger does), then exported to the deepghs ONNX layout
(model.onnx with embedding/logits/prediction, selected_tags.csv, preprocess.json,
categories.json, thresholds.csv) and loaded through Sagashi's own loaders. Both taggers get
the same preprocessed batches; the figure is model images/s (predict only), batch 1 and 8.
ONNX Runtime's dynamic int8 quantisation is timed too, and its score and embedding drift
against fp32 measured on real images (../shared/data/images/sdeval_anime; skipped with the
reason when absent).

    python -m bench.bench_onnx                  # about 8 minutes on 2 cores
    python -m bench.bench_onnx --repeats 1 --skip-int8
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.store.repository import GenerationIdentity
from app.tagger.batching import prepare
from app.tagger.onnx_tagger import OnnxTagger
from app.tagger.preprocess import normalise_one
from app.tagger.protocol import Prediction, Tagger
from app.tagger.timm_tagger import TimmTagger
from bench.bench_tagger import GENERAL, NUM_TAGS, build_random_pixai
from bench.common import SHARED_DATA, machine

log = logging.getLogger("bench.onnx")

REAL_IMAGES = SHARED_DATA / "images" / "sdeval_anime"


class _Outputs(torch.nn.Module):
    """The deepghs export's graph over Sagashi's TaggerNet: embedding, logits, prediction."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, pooled = self.net(x)
        return pooled, logits, torch.sigmoid(logits)


def export_layout(tagger: TimmTagger, directory: Path) -> Path:
    """The torch tagger's network and vocabulary in the deepghs ONNX layout."""
    directory.mkdir(parents=True, exist_ok=True)
    size = tagger.preprocess.size
    torch.onnx.export(
        _Outputs(tagger.network).eval(),
        (torch.zeros(1, 3, size, size),),
        str(directory / "model.onnx"),
        input_names=["input"],
        output_names=["embedding", "logits", "prediction"],
        dynamic_axes={n: {0: "batch_size"} for n in ("input", "embedding", "logits", "prediction")},
        opset_version=17,
        dynamo=False,
    )
    vocab = tagger.vocab
    with (directory / "selected_tags.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "tag_id", "name", "category", "count", "ips"])
        for i, name in enumerate(vocab.names):
            category = 0 if vocab.group(i) == "general" else 4
            ips = json.dumps(list(vocab.char_to_copyrights.get(name, ())))
            writer.writerow([i, i, name, category, 0, ips])
    stages = [
        {
            "antialias": True,
            "interpolation": "bilinear",
            "max_size": None,
            "size": [size, size],
            "type": "resize",
        },
        {"type": "to_tensor"},
        {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "type": "normalize"},
    ]
    (directory / "preprocess.json").write_text(json.dumps({"stages": stages}, indent=4))
    categories = [{"category": 0, "name": "general"}, {"category": 4, "name": "character"}]
    (directory / "categories.json").write_text(json.dumps(categories, indent=4))
    (directory / "thresholds.csv").write_text(
        "category,name,threshold\n0,general,0.3\n4,character,0.85\n"
    )
    return directory


def quantise(source: Path, target: Path, per_channel: bool = False) -> Path:
    """ONNX Runtime's dynamic int8 quantisation of the weights, in a copy of the layout."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name != "model.onnx":
            (target / path.name).write_bytes(path.read_bytes())
    quantize_dynamic(
        str(source / "model.onnx"),
        str(target / "model.onnx"),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
    )
    return target


def batches(tagger: Tagger, count: int) -> torch.Tensor:
    """``count`` preprocessed real images, or random pixels when the real data is absent."""
    files = sorted(REAL_IMAGES.glob("*"))[:count] if REAL_IMAGES.is_dir() else []
    prepared = [prepare(p, tagger.preprocess, 10**9, True).pixels for p in files]
    tensors = [normalise_one(tagger.preprocess, t) for t in prepared if t is not None]
    if len(tensors) < count:
        size = tagger.preprocess.size
        generator = torch.Generator().manual_seed(0)
        tensors += [torch.rand(3, size, size, generator=generator) * 2 - 1] * (count - len(tensors))
    return torch.stack(tensors[:count])


def measure(tagger: Tagger, batch: torch.Tensor, repeats: int) -> tuple[float, float, Prediction]:
    """Images/s of predict() at batch 1 (after one warm-up call) and at batch 8, and the
    batch-8 prediction, kept for the drift figures (no forward is spent twice)."""
    one = batch[:1]
    tagger.predict(one)
    started = time.perf_counter()
    for _ in range(repeats):
        tagger.predict(one)
    rate_1 = repeats / (time.perf_counter() - started)
    started = time.perf_counter()
    prediction = tagger.predict(batch[:8])
    rate_8 = 8 / (time.perf_counter() - started)
    return rate_1, rate_8, prediction


def drift(a: Prediction, b: Prediction) -> dict[str, float]:
    """Score and embedding differences of ``b`` against the reference ``a``."""
    cos = (a.embeddings * b.embeddings).sum(axis=1)
    top_a = np.argsort(-a.probs, axis=1)[:, :20]
    top_b = np.argsort(-b.probs, axis=1)[:, :20]
    overlap = [len(set(x) & set(y)) / 20 for x, y in zip(top_a, top_b, strict=True)]
    return {
        "max_abs_score": float(np.abs(a.probs - b.probs).max()),
        "mean_abs_score": float(np.abs(a.probs - b.probs).mean()),
        "min_embedding_cosine": float(cos.min()),
        "max_abs_embedding": float(np.abs(a.embeddings - b.embeddings).max()),
        "top20_overlap": float(np.mean(overlap)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per batch size")
    parser.add_argument("--threads", type=int, default=0, help="0: every core")
    parser.add_argument("--skip-int8", action="store_true")
    parser.add_argument("--per-channel", action="store_true", help="int8 scales per channel")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    threads = args.threads or torch.get_num_threads()
    results: dict[str, Any] = {"machine": machine(), "threads": threads, "images": 8}
    results["int8_per_channel"] = args.per_channel
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        work = Path(tmp)
        log.info("building the random EVA02-Large PixAI checkpoint")
        torch_tagger = TimmTagger(build_random_pixai(_mkdir(work / "pth")), "cpu", threads)
        torch_tagger.load()
        started = time.perf_counter()
        export_layout(torch_tagger, work / "onnx")
        results["export_s"] = round(time.perf_counter() - started, 1)
        onnx_tagger = OnnxTagger(work / "onnx", "cpu", threads)
        onnx_tagger.load()
        same = GenerationIdentity.of(onnx_tagger.info)
        results["same_generation_fields"] = same == GenerationIdentity.of(
            torch_tagger.info
        ) or _differences(same, GenerationIdentity.of(torch_tagger.info))
        batch = batches(torch_tagger, 8)
        results["real_images"] = REAL_IMAGES.is_dir()
        taggers: list[tuple[str, Tagger]] = [
            ("torch_fp32", torch_tagger),
            ("onnxruntime_fp32", onnx_tagger),
        ]
        if not args.skip_int8:
            started = time.perf_counter()
            quantised = OnnxTagger(
                quantise(work / "onnx", work / "int8", args.per_channel), "cpu", threads
            )
            quantised.load()
            results["quantise_s"] = round(time.perf_counter() - started, 1)
            taggers.append(("onnxruntime_int8", quantised))
        outputs: dict[str, Prediction] = {}
        for name, tagger in taggers:
            rate_1, rate_8, outputs[name] = measure(tagger, batch, args.repeats)
            results[f"{name}_b1_img_s"] = round(rate_1, 3)
            results[f"{name}_b8_img_s"] = round(rate_8, 3)
            log.info("%s: batch 1 %.3f img/s, batch 8 %.3f img/s", name, rate_1, rate_8)
        results["onnx_vs_torch"] = drift(outputs["torch_fp32"], outputs["onnxruntime_fp32"])
        if "onnxruntime_int8" in outputs:
            results["int8_vs_fp32"] = drift(
                outputs["onnxruntime_fp32"], outputs["onnxruntime_int8"]
            )
        if not REAL_IMAGES.is_dir():
            results["note"] = f"real images absent ({REAL_IMAGES}): drift measured on random pixels"
    for size in (1, 8):
        results[f"speedup_b{size}"] = round(
            results[f"onnxruntime_fp32_b{size}_img_s"] / results[f"torch_fp32_b{size}_img_s"], 2
        )
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _differences(a: GenerationIdentity, b: GenerationIdentity) -> list[str]:
    return [
        f
        for f in ("vocabulary_digest", "embedding_dim", "preprocess")
        if getattr(a, f) != getattr(b, f)
    ]


assert GENERAL < NUM_TAGS  # the random vocabulary has both groups

if __name__ == "__main__":
    main()
