"""ONNX Runtime against torch fp32 on the real-size architecture, in one run, on this CPU.

The model is EVA02-Large at 448 px with a 13,461-tag PixAI head and random weights, saved
in PixAI's .pth layout (as bench_tagger does), then exported to the deepghs ONNX layout
(model.onnx with embedding/logits/prediction, selected_tags.csv, preprocess.json,
categories.json, thresholds.csv) and loaded through Sagashi's own loaders. Both taggers get
the same preprocessed batches; the figure is model images/s (predict only), batch 1 and 8.
ONNX Runtime's dynamic int8 quantisation is timed too, and each variant's score and
embedding drift against ONNX fp32 measured on real images (the first image of each folder of
../shared/data/images/sdeval_anime, then the rest; random pixels, said so, when absent).

Variants (each timed in every round, after torch, in the same process):

* ``--nbits 8:32:4 8:128:4 4:32:4``: block-wise weight-only quantisation (ONNX Runtime's
  MatMulNBitsQuantizer, symmetric): bits, block size and the MatMulNBits accuracy level
  (0/1: fp32 compute on dequantised weights, 4: int8 compute, VNNI where the CPU has it).
* ``--fused``: the fp32 graph through onnxruntime.transformers' optimizer (model type vit),
  with the fusions it made.
* ``--openvino``: ONNX Runtime's OpenVINO provider (onnxruntime-openvino installed in place
  of onnxruntime, the ``openvino`` extra) on the fp32 export, in bf16 (what Sagashi runs by
  default there) and in f32. With it installed, the ``onnxruntime_fp32`` baseline is still
  the default CPU provider.
* ``--drift-images N``: the drift figures over N real images (in batches of 8, first round
  only), not only the timed 8.
* ``--rounds 2`` times torch and every variant again, alternating, on a shared machine.
* ``--profile``: where ONNX Runtime fp32 spends one batch-1 call, by operator.
* ``--work DIR`` keeps the checkpoint, the export and the variants, and reuses them.

Each drift row says whether it is within the drift one index generation accepts (the GPU bf16
path's against fp32: scores within 0.0025, embedding cosine at least 0.99997).

    python -m bench.bench_onnx                  # about 8 minutes on 2 cores
    python -m bench.bench_onnx --repeats 1 --skip-int8
    python -m bench.bench_onnx --nbits 8:32:4 4:32:4 --fused --rounds 2 --work /tmp/bench-onnx
    python -m bench.bench_onnx --skip-int8 --openvino --drift-images 32 --rounds 2
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import tempfile
import time
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from app.store.repository import GenerationIdentity
from app.tagger import onnx_tagger
from app.tagger.batching import prepare
from app.tagger.forward import Precision
from app.tagger.onnx_tagger import CPU, OnnxTagger, graph_operators
from app.tagger.preprocess import normalise_one
from app.tagger.protocol import Prediction, Tagger
from app.tagger.timm_tagger import TimmTagger
from bench.bench_tagger import GENERAL, NUM_TAGS, build_random_pixai
from bench.common import SHARED_DATA, emit, machine

log = logging.getLogger("bench.onnx")

REAL_IMAGES = SHARED_DATA / "images" / "sdeval_anime"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# The drift one index generation accepts: the GPU bf16 path's against fp32 (docs/benchmarks.md).
YARDSTICK_SCORE, YARDSTICK_COSINE = 0.0025, 0.99997
# The OpenVINO variants: the fp32 export on OpenVINO, at each precision Sagashi can ask for.
OPENVINO_VARIANTS: dict[str, Precision] = {"openvino_bf16": "auto", "openvino_f32": "fp32"}


class MeasuredOnnxTagger(OnnxTagger):
    """OnnxTagger that lets a quantised model give embeddings, to measure their drift (the
    application refuses to store or compare them)."""

    @staticmethod
    def refuse_quantised(session: Any, model: Path) -> None:
        return None


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


def quantise_nbits(source: Path, target: Path, bits: int, block: int, accuracy: int) -> Path:
    """Block-wise weight-only quantisation of every MatMul with constant weights
    (MatMulNBits nodes, symmetric), in a copy of the layout."""
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    _copy_layout(source, target)
    config = DefaultWeightOnlyQuantConfig(
        block_size=block,
        is_symmetric=True,
        accuracy_level=accuracy,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",),
        bits=bits,
    )
    quantiser = MatMulNBitsQuantizer(
        onnx.load(str(source / "model.onnx")),
        bits=bits,
        block_size=block,
        is_symmetric=True,
        accuracy_level=accuracy,
        algo_config=config,
    )
    quantiser.process()
    quantiser.model.save_model_to_file(str(target / "model.onnx"), use_external_data_format=False)
    return target


def fuse(source: Path, target: Path, heads: int, hidden: int) -> dict[str, int]:
    """The fp32 graph through onnxruntime.transformers' optimizer (attention, LayerNorm, GELU
    fusions for a ViT), in a copy of the layout; the fusions it made."""
    from onnxruntime.transformers import optimizer

    _copy_layout(source, target)
    model = optimizer.optimize_model(
        str(source / "model.onnx"),
        model_type="vit",
        num_heads=heads,
        hidden_size=hidden,
        opt_level=0,
    )
    model.save_model_to_file(str(target / "model.onnx"))
    return {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}


def _copy_layout(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name != "model.onnx":
            (target / path.name).write_bytes(path.read_bytes())


def profile(model: Path, batch: torch.Tensor, threads: int) -> dict[str, Any]:
    """Share of one batch-1 ONNX Runtime call per operator type, and the attention part
    (the MatMuls whose output is per head) of the MatMul time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(model.parent / "profile")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    one = {"input": batch[:1].numpy()}
    session.run(None, one)
    session.run(None, one)
    events = json.loads(Path(session.end_profiling()).read_text())
    last = [e for e in events if e.get("name") == "model_run"][-1]
    by_op: Counter[str] = Counter()
    attention = 0
    for event in events:
        if event.get("cat") != "Node" or event["ts"] < last["ts"]:
            continue
        if not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"]["op_name"]
        by_op[op] += event["dur"]
        shapes = event["args"].get("output_type_shape") or [{}]
        if op in ("MatMul", "FusedMatMul") and len(next(iter(shapes[0].values()), [])) == 4:
            attention += event["dur"]
    total = sum(by_op.values())
    shares = {op: round(100 * t / total, 1) for op, t in by_op.most_common(8)}
    return {
        "call_s": round(last["dur"] / 1e6, 2),
        "percent_by_operator": shares,
        "attention_matmul_percent": round(100 * attention / total, 1),
    }


def batches(tagger: Tagger, count: int) -> torch.Tensor:
    """``count`` preprocessed real images (the first of each folder, then the rest), or random
    pixels when the real data is absent."""
    tensors = [normalise_one(tagger.preprocess, t) for t in real_pixels(tagger, count)]
    if len(tensors) < count:
        size = tagger.preprocess.size
        generator = torch.Generator().manual_seed(0)
        tensors += [torch.rand(3, size, size, generator=generator) * 2 - 1] * (count - len(tensors))
    return torch.stack(tensors[:count])


def real_images() -> list[Path]:
    """The image files under REAL_IMAGES, the first of each folder first."""
    if not REAL_IMAGES.is_dir():
        return []
    files = sorted(p for p in REAL_IMAGES.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    firsts = list({p.parent: p for p in reversed(files)}.values())[::-1]
    return firsts + [p for p in files if p not in firsts]


def real_pixels(tagger: Tagger, count: int) -> list[np.ndarray]:
    prepared: list[np.ndarray] = []
    for path in real_images():
        pixels = prepare(path, tagger.preprocess, 10**9, True).pixels
        if pixels is not None:
            prepared.append(pixels)
        if len(prepared) == count:
            break
    return prepared


def onnx_variant(name: str, directory: Path, threads: int) -> Tagger:
    """A loaded ONNX variant: OpenVINO's on that provider at its precision, every other on
    the default CPU provider, even where onnxruntime-openvino is installed."""
    precision = OPENVINO_VARIANTS.get(name, "fp32")
    tagger = MeasuredOnnxTagger(directory, "cpu", threads, precision=precision)
    default_provider: AbstractContextManager[Any] = nullcontext()
    if name not in OPENVINO_VARIANTS:
        default_provider = mock.patch.object(
            onnx_tagger, "session_providers", lambda *args, **kwargs: [CPU]
        )
    with default_provider:
        tagger.load()
    return tagger


def predict_all(tagger: Tagger, images: torch.Tensor, first: Prediction) -> Prediction:
    """``first`` (the timed batch of 8) followed by the rest of ``images`` in batches of 8."""
    parts = [first] + [tagger.predict(images[i : i + 8]) for i in range(8, len(images), 8)]
    return Prediction(
        probs=np.concatenate([p.probs for p in parts]),
        embeddings=np.concatenate([p.embeddings for p in parts]),
    )


def measure(tagger: Tagger, batch: torch.Tensor, repeats: int) -> tuple[float, float, Prediction]:
    """Images/s of predict() at batch 1 and at batch 8, each after one warm-up call at its
    size (OpenVINO prepares each new input shape on its first call), and the batch-8
    prediction, kept for the drift figures."""
    one = batch[:1]
    tagger.predict(one)
    tagger.predict(batch[:8])
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
        "within_generation_yardstick": bool(
            np.abs(a.probs - b.probs).max() <= YARDSTICK_SCORE and cos.min() >= YARDSTICK_COSINE
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed batch-1 calls per round")
    parser.add_argument("--threads", type=int, default=0, help="0: every core")
    parser.add_argument("--skip-int8", action="store_true", help="leave out dynamic int8")
    parser.add_argument("--per-channel", action="store_true", help="int8 scales per channel")
    parser.add_argument(
        "--nbits",
        nargs="*",
        default=[],
        metavar="BITS:BLOCK:LEVEL",
        help="block-wise weight-only variants (MatMulNBits), e.g. 8:32:4 (accuracy level 4: "
        "int8 compute; 1: fp32)",
    )
    parser.add_argument("--fused", action="store_true", help="the transformers-optimised graph")
    parser.add_argument("--openvino", action="store_true", help="OpenVINO's provider, bf16 and f32")
    parser.add_argument(
        "--drift-images", type=int, default=8, help="real images in the drift figures"
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternating timed rounds")
    parser.add_argument("--profile", action="store_true", help="ONNX fp32 time by operator")
    parser.add_argument("--work", type=Path, help="keep and reuse models here (default: temp)")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    threads = args.threads or torch.get_num_threads()
    images = max(8, args.drift_images)
    results: dict[str, Any] = {"machine": machine(), "threads": threads, "images": images}
    results["int8_per_channel"] = args.per_channel
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        work = args.work or Path(tmp)
        log.info("building the random EVA02-Large PixAI checkpoint")
        pth = work / "pth"
        if not (pth / "model_v0.9.pth").exists():
            build_random_pixai(_mkdir(pth))
        torch_tagger = TimmTagger(pth, "cpu", threads)
        torch_tagger.load()
        started = time.perf_counter()
        if not (work / "onnx" / "model.onnx").exists():
            export_layout(torch_tagger, work / "onnx")
            results["export_s"] = round(time.perf_counter() - started, 1)
        onnx_tagger = OnnxTagger(work / "onnx", "cpu", threads)
        onnx_tagger.load()
        same = GenerationIdentity.of(onnx_tagger.info)
        results["same_generation_fields"] = same == GenerationIdentity.of(
            torch_tagger.info
        ) or _differences(same, GenerationIdentity.of(torch_tagger.info))
        del onnx_tagger
        batch = batches(torch_tagger, images)
        results["real_images"] = len(real_pixels(torch_tagger, images)) == images
        results["image_files"] = [str(p.relative_to(REAL_IMAGES)) for p in real_images()[:images]]
        if args.profile:
            results["onnx_fp32_profile"] = profile(work / "onnx" / "model.onnx", batch, threads)
        # torch stays loaded; each ONNX model is loaded for its turn and dropped after it, so
        # one ONNX session at a time shares the memory with torch (about 4 GB at most)
        onnx_models = [("onnxruntime_fp32", work / "onnx"), *_variants(args, work, results)]
        names = ["torch_fp32"] + [name for name, _ in onnx_models]
        outputs: dict[str, Prediction] = {}
        for round_ in range(args.rounds):
            for name in names:
                tagger: Tagger = torch_tagger
                if name != "torch_fp32":
                    tagger = onnx_variant(name, dict(onnx_models)[name], threads)
                rate_1, rate_8, timed = measure(tagger, batch, args.repeats)
                if round_ == 0:  # the drift figures: every image, once
                    outputs[name] = predict_all(tagger, batch, timed)
                del tagger
                for size, rate in ((1, rate_1), (8, rate_8)):
                    results.setdefault(f"{name}_b{size}_img_s_rounds", []).append(round(rate, 3))
                log.info(
                    "round %d %s: batch 1 %.3f img/s, batch 8 %.3f img/s (load %.1f)",
                    round_ + 1,
                    name,
                    rate_1,
                    rate_8,
                    _load(),
                )
            results.setdefault("load_average_rounds", []).append(round(_load(), 1))
        for name in names:
            for size in (1, 8):
                rates = results[f"{name}_b{size}_img_s_rounds"]
                results[f"{name}_b{size}_img_s"] = round(float(np.mean(rates)), 3)
        results["peak_rss_gb"] = round(_peak_rss_gb(), 1)
        results["onnx_vs_torch"] = drift(outputs["torch_fp32"], outputs["onnxruntime_fp32"])
        for name in names[2:]:
            results[f"{name}_vs_onnx_fp32"] = drift(outputs["onnxruntime_fp32"], outputs[name])
        if not results["real_images"]:
            results["note"] = f"real images absent ({REAL_IMAGES}): drift measured on random pixels"
    for name in names[1:]:
        for size in (1, 8):
            # per round against that round's torch, then the mean: the machine's load moves
            ratios = [
                v / t
                for v, t in zip(
                    results[f"{name}_b{size}_img_s_rounds"],
                    results[f"torch_fp32_b{size}_img_s_rounds"],
                    strict=True,
                )
            ]
            key = "speedup" if name == "onnxruntime_fp32" else f"{name}_vs_torch"
            results[f"{key}_b{size}"] = round(float(np.mean(ratios)), 2)
    emit(results, args.output, indent=2)


def _variants(
    args: argparse.Namespace, work: Path, results: dict[str, Any]
) -> list[tuple[str, Path]]:
    """The ONNX variants asked for, made (or reused from --work) from the fp32 export."""
    source = work / "onnx"
    made: list[tuple[str, Path]] = []
    if args.openvino:
        made += [(name, source) for name in OPENVINO_VARIANTS]
    if args.fused:
        target = work / "fused"
        if not (target / "model.onnx").exists():
            started = time.perf_counter()
            fusions = fuse(source, target, heads=16, hidden=1024)
            (target / "fusions.json").write_text(json.dumps(fusions))
            results["fuse_s"] = round(time.perf_counter() - started, 1)
        results["fused_operators"] = json.loads((target / "fusions.json").read_text())
        results["fused_graph_operators"] = sorted(graph_operators(target / "model.onnx"))
        made.append(("onnxruntime_fused_fp32", target))
    for spec in args.nbits:
        bits, block, accuracy = (int(v) for v in [*spec.split(":"), "4"][:3])
        name = f"onnxruntime_q{bits}_block{block}_level{accuracy}"
        target = work / f"q{bits}b{block}a{accuracy}"
        if not (target / "model.onnx").exists():
            started = time.perf_counter()
            quantise_nbits(source, target, bits, block, accuracy)
            results[f"{name}_make_s"] = round(time.perf_counter() - started, 1)
        made.append((name, target))
    if not args.skip_int8:
        target = work / ("int8_per_channel" if args.per_channel else "int8")
        if not (target / "model.onnx").exists():
            started = time.perf_counter()
            quantise(source, target, args.per_channel)
            results["quantise_s"] = round(time.perf_counter() - started, 1)
        made.append(("onnxruntime_int8", target))
    return made


def _load() -> float:
    return os.getloadavg()[0]


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


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
