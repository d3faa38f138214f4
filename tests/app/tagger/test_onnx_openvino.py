"""ONNX Runtime's providers: which one a device and an installation get, and the OpenVINO
provider (the ``openvino`` extra) against the torch path on the same weights.

The provider choice is tested everywhere; the OpenVINO runs need ``onnxruntime-openvino`` in
place of ``onnxruntime`` and skip, saying so, without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from app.tagger.errors import ModelLoadError
from app.tagger.factory import open_tagger
from app.tagger.forward import ForwardOptions
from app.tagger.onnx_tagger import (
    CPU,
    CUDA,
    OPENVINO,
    OnnxTagger,
    openvino_options,
    session_providers,
)
from app.tagger.protocol import Prediction, Tagger
from tests.support.cli import run_sagashi
from tests.support.tiny_models import TINY_SIZE, build_tiny_pixai_onnx, openvino_installed

ALL = [CUDA, OPENVINO, CPU]


def test_a_gpu_device_gets_cuda_then_the_cpu_provider() -> None:
    assert session_providers("cuda:1", ALL) == [(CUDA, {"device_id": 1}), CPU]
    assert session_providers("auto", ALL) == [(CUDA, {"device_id": 0}), CPU]


def test_the_cpu_gets_openvino_when_installed_else_the_default_provider() -> None:
    assert session_providers("cpu", ALL, 2, "auto")[0] == (OPENVINO, openvino_options(2, "auto"))
    assert session_providers("auto", [OPENVINO, CPU])[-1] == CPU  # for nodes OpenVINO lacks
    assert session_providers("cpu", [CUDA, CPU]) == [CPU]
    assert session_providers("auto", [CPU]) == [CPU]


def test_cuda_without_its_provider_is_refused_with_the_extra_to_install() -> None:
    with pytest.raises(ModelLoadError, match=r"sagashi\[gpu\]"):
        session_providers("cuda", [OPENVINO, CPU])


@pytest.mark.parametrize(
    ("precision", "hint"),
    [("auto", "bf16"), ("bf16", "bf16"), ("autocast", "bf16"), ("fp32", "f32")],
)
def test_openvino_computes_in_bf16_unless_fp32_is_asked_for(precision: str, hint: str) -> None:
    options = openvino_options(0, precision)  # type: ignore[arg-type]
    assert options["device_type"] == "CPU"
    assert json.loads(options["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": hint}}
    assert "num_of_threads" not in options  # 0: OpenVINO's own choice, every core
    assert openvino_options(3, "fp32")["num_of_threads"] == "3"


def test_a_batch_run_in_parts_equals_the_batch_at_once(pixai_onnx: Path) -> None:
    tagger = open_tagger(pixai_onnx, "cpu", 1, forward=ForwardOptions(precision="fp32"))
    assert isinstance(tagger, OnnxTagger)
    whole = _predict(tagger)
    tagger.rows_per_run = 4  # 6 images: runs of 4 and 2, put back in order
    parts = _predict(tagger)
    np.testing.assert_allclose(parts.probs, whole.probs, atol=1e-6)
    np.testing.assert_allclose(parts.embeddings, whole.embeddings, atol=1e-6)


needs_openvino = pytest.mark.skipif(
    not openvino_installed(),
    reason="onnxruntime-openvino is not installed (the 'openvino' extra, in place of onnxruntime)",
)


@pytest.fixture(scope="module")
def pixai_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pixai_onnx(tmp_path_factory.mktemp("pixai-onnx"))


def _predict(tagger: Tagger) -> Prediction:
    generator = torch.Generator().manual_seed(3)
    batch = torch.rand(6, 3, TINY_SIZE, TINY_SIZE, generator=generator) * 2 - 1
    return tagger.predict(batch)


@needs_openvino
def test_openvino_fp32_equals_the_torch_path(tiny_pixai_dir: Path, pixai_onnx: Path) -> None:
    on_torch = _predict(open_tagger(tiny_pixai_dir, "cpu", 1))
    tagger = open_tagger(pixai_onnx, "cpu", 1, forward=ForwardOptions(precision="fp32"))
    assert tagger.info.runtime == f"onnxruntime {OPENVINO} f32"
    assert isinstance(tagger, OnnxTagger) and tagger.rows_per_run == 1  # one image a run
    on_openvino = _predict(tagger)
    np.testing.assert_allclose(on_openvino.probs, on_torch.probs, atol=1e-4)
    np.testing.assert_allclose(on_openvino.embeddings, on_torch.embeddings, atol=1e-4)


@needs_openvino
def test_openvino_computes_in_bf16_by_default_near_fp32(
    tiny_pixai_dir: Path, pixai_onnx: Path
) -> None:
    on_torch = _predict(open_tagger(tiny_pixai_dir, "cpu", 1))
    tagger = open_tagger(pixai_onnx, "cpu", 1)  # SAGASHI_PRECISION=auto
    assert tagger.info.runtime == f"onnxruntime {OPENVINO} bf16"
    on_openvino = _predict(tagger)
    # bf16 in effect (f32 agrees to 1e-4 above), and near: the tiny head's scores sit on the
    # sigmoid's steep middle, so the drift one generation accepts is measured on the
    # real-size architecture (bench_onnx --openvino, docs/benchmarks.md), not here.
    drift = float(np.abs(on_openvino.probs - on_torch.probs).max())
    assert 1e-4 < drift < 0.02
    cosines = (on_openvino.embeddings * on_torch.embeddings).sum(axis=1)
    assert float(cosines.min()) >= 0.9999
    top = np.argsort(-on_torch.probs, axis=1)[:, :5]
    top_openvino = np.argsort(-on_openvino.probs, axis=1)[:, :5]
    assert (
        np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top, top_openvino, strict=True)]) >= 0.8
    )


@needs_openvino
def test_model_info_names_openvino_and_its_precision(pixai_onnx: Path) -> None:
    result = run_sagashi("model", "info", "--model-dir", str(pixai_onnx))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["runtime"] == f"onnxruntime {OPENVINO} bf16"
    result = run_sagashi(
        "model", "info", "--model-dir", str(pixai_onnx), env={"SAGASHI_PRECISION": "fp32"}
    )
    assert json.loads(result.stdout)["runtime"] == f"onnxruntime {OPENVINO} f32"
