"""The ONNX layouts on ONNX Runtime, as a user runs them: ``sagashi tag``, ``model info``,
``index`` and ``search --like``, against the torch path on the same weights."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from app.tagger.errors import ModelLoadError
from app.tagger.factory import open_tagger
from app.tagger.onnx_tagger import (
    CPU,
    OPENVINO,
    QUANTISED_OPS,
    QUANTISER,
    OnnxTagger,
    graph_operators,
)
from app.tagger.timm_tagger import TimmTagger
from tests.support import bad_images as bad
from tests.support.cli import run_sagashi
from tests.support.index_helpers import make_image
from tests.support.tag_records import TagRecord, tag_records
from tests.support.tiny_models import (
    TINY_SIZE,
    PixaiOnnxOutputs,
    build_tiny_pixai_onnx,
    build_tiny_wd_onnx,
    export_onnx,
    openvino_installed,
    tiny_pixai_network,
)

TOLERANCE = 1e-4


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = run_sagashi(*args, env={"SAGASHI_LOG_LEVEL": "WARNING", **(env or {})})
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def pixai_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pixai_onnx(tmp_path_factory.mktemp("pixai-onnx"))


@pytest.fixture(scope="module")
def wd_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wd_onnx(tmp_path_factory.mktemp("wd-onnx"))


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The generated image catalogue: odd, broken and ordinary files, in a stable order."""
    return sorted(bad.build_catalogue(tmp_path_factory.mktemp("catalogue")).values())


def tag_all(model_dir: Path, files: list[Path], *extra: str) -> list[TagRecord]:
    """Every tag of every file; in fp32, which OpenVINO's provider (where installed) would
    otherwise run in bf16."""
    code, out, err = run(
        "tag",
        *map(str, files),
        "--model-dir",
        str(model_dir),
        "--threshold-general",
        "0",
        "--threshold-character",
        "0",
        "--top-k",
        "100000",
        "--batch-size",
        "3",
        *extra,
        env={"SAGASHI_PRECISION": "fp32"},
    )
    assert code in (0, 1), err
    return tag_records(out)


def default_provider() -> str:
    """The CPU provider an ONNX model runs on here: OpenVINO's, at its default bf16, where
    onnxruntime-openvino is installed (tests/app/tagger/test_onnx_openvino.py), else ONNX
    Runtime's own."""
    return f"{OPENVINO} bf16" if openvino_installed() else CPU


def scores(record: TagRecord) -> dict[tuple[str, str], float]:
    return {(r["tag"], r["group"]): r["score"] for r in record["results"]}


@pytest.mark.parametrize(("torch_fixture", "onnx_fixture"), [("tiny_pixai_dir", "pixai_onnx")])
def test_tag_through_onnx_runtime_equals_the_torch_path(
    torch_fixture: str, onnx_fixture: str, catalogue: list[Path], request: pytest.FixtureRequest
) -> None:
    torch_dir: Path = request.getfixturevalue(torch_fixture)
    onnx_dir: Path = request.getfixturevalue(onnx_fixture)
    by_torch = tag_all(torch_dir, catalogue, "--embedding")
    by_onnx = tag_all(onnx_dir, catalogue, "--embedding")
    assert [r["path"] for r in by_onnx] == [r["path"] for r in by_torch]
    tagged = 0
    for a, b in zip(by_torch, by_onnx, strict=True):
        assert a.get("error") == b.get("error")  # the same per-file errors
        if "error" in a:
            continue
        tagged += 1
        sa, sb = scores(a), scores(b)
        assert sa.keys() == sb.keys()  # groups and copyrights (from ips) agree too
        assert max(abs(sa[k] - sb[k]) for k in sa) <= TOLERANCE
        np.testing.assert_allclose(b["embedding"], a["embedding"], atol=TOLERANCE)
    assert tagged >= 10 and len(by_torch) > tagged  # ordinary files and failures both seen


def test_wd_onnx_tags_like_the_safetensors_model(
    tiny_wd_dir: Path, wd_onnx: Path, catalogue: list[Path]
) -> None:
    by_torch = tag_all(tiny_wd_dir, catalogue)
    by_onnx = tag_all(wd_onnx, catalogue)
    compared = 0
    for a, b in zip(by_torch, by_onnx, strict=True):
        assert a.get("error") == b.get("error")
        if "error" not in a:
            sa, sb = scores(a), scores(b)
            assert sa.keys() == sb.keys()
            assert max(abs(sa[k] - sb[k]) for k in sa) <= TOLERANCE
            compared += 1
    assert compared >= 10


def test_wd_onnx_has_no_embedding_so_it_cannot_index(wd_onnx: Path, catalogue: list[Path]) -> None:
    code, _, err = run("tag", str(catalogue[0]), "--model-dir", str(wd_onnx), "--embedding")
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]  # one line
    assert f"{wd_onnx / 'model.onnx'}: no 'embedding' output (outputs: output)" in err
    assert "sagashi model fetch pixai-v0.9-onnx" in err


def test_model_info_names_layout_and_runtime(pixai_onnx: Path, wd_onnx: Path) -> None:
    code, out, err = run("model", "info", "--model-dir", str(pixai_onnx))
    assert code == 0, err
    info = json.loads(out)
    assert info["layout"] == "PixAI v0.9 ONNX (deepghs export)"
    assert info["runtime"] == f"onnxruntime {default_provider()}"
    assert info["groups"] == {"general": 12, "character": 4}
    assert info["characters_with_copyright"] == 4  # from the ips column
    assert info["embedding_dim"] == 32
    assert info["published_thresholds"] == {"general": 0.3, "character": 0.85}
    assert (
        info["preprocess"] == "stretch 56x56 bilinear mean=[0.5, 0.5, 0.5] std=[0.5, 0.5, 0.5] RGB"
    )
    code, out, err = run("model", "info", "--model-dir", str(wd_onnx))
    assert code == 0, err
    info = json.loads(out)
    assert (info["layout"], info["embedding_dim"]) == ("WD v3 ONNX", 0)
    assert info["groups"] == {"rating": 4, "general": 12, "character": 4}


def test_onnx_and_pth_are_one_generation(tiny_pixai_dir: Path, pixai_onnx: Path) -> None:
    torch_tagger = TimmTagger(tiny_pixai_dir, "cpu", 1)
    torch_tagger.load()
    onnx_tagger = open_tagger(pixai_onnx, "cpu", 1)
    assert isinstance(onnx_tagger, OnnxTagger)
    a, b = torch_tagger.info, onnx_tagger.info
    assert (a.vocabulary_digest, a.embedding_dim, a.preprocess_description()) == (
        b.vocabulary_digest,
        b.embedding_dim,
        b.preprocess_description(),
    )
    assert (a.runtime, b.runtime) == ("torch cpu", f"onnxruntime {default_provider()}")


def copy_layout(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_index_with_pth_then_extend_and_search_with_onnx(
    tiny_pixai_dir: Path, pixai_onnx: Path, tmp_path: Path
) -> None:
    env = {"SAGASHI_DATA_DIR": str(tmp_path / "data")}
    first, second = tmp_path / "first", tmp_path / "second"
    for i in range(3):
        make_image(first / f"a{i}.png", seed=i, size=(64, 48))
        make_image(second / f"b{i}.png", seed=10 + i, size=(48, 64))
    assert run("db", "upgrade", env=env)[0] == 0
    code, _, err = run("index", str(first), "--model-dir", str(tiny_pixai_dir), env=env)
    assert code == 0, err
    code, _, err = run("index", str(second), "--model-dir", str(pixai_onnx), env=env)
    assert code == 0, err  # the ONNX export extends the index the .pth built
    query = second / "b1.png"
    code, out, err = run(
        "search", "", "--like", str(query), "--model-dir", str(pixai_onnx), env=env
    )
    assert code == 0, err
    assert out.splitlines()[0] == str(query)  # its own embedding is the nearest
    assert len(out.splitlines()) == 6
    # A different preprocessing is a different generation: refused, with the reason.
    other = copy_layout(pixai_onnx, tmp_path / "bicubic-onnx")
    raw = json.loads((other / "preprocess.json").read_text())
    raw["stages"][0]["interpolation"] = "bicubic"
    (other / "preprocess.json").write_text(json.dumps(raw))
    code, _, err = run("index", str(second), "--model-dir", str(other), env=env)
    assert code == 2
    assert "differs in vocabulary, embedding size or preprocessing: its preprocessing is " in err
    assert (
        "'stretch 56x56 bicubic mean=[0.5, 0.5, 0.5] std=[0.5, 0.5, 0.5] RGB', the index's " in err
    )
    assert err.count("\n") == 1  # one line


def test_unknown_stage_missing_output_and_tag_count_name_the_file(
    pixai_onnx: Path, tmp_path: Path
) -> None:
    unknown = copy_layout(pixai_onnx, tmp_path / "unknown")
    raw = json.loads((unknown / "preprocess.json").read_text())
    raw["stages"].insert(1, {"type": "sharpen"})
    (unknown / "preprocess.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=r"preprocess\.json: stage 1: unknown stage type"):
        open_tagger(unknown, "cpu", 1)

    short = copy_layout(pixai_onnx, tmp_path / "short")
    lines = (short / "selected_tags.csv").read_text().splitlines()
    (short / "selected_tags.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ModelLoadError) as caught:
        open_tagger(short, "cpu", 1)
    assert str(caught.value) == (
        f"{short / 'model.onnx'}: output 'prediction' has 16 values per image but "
        "selected_tags.csv lists 15 tags; they must come from the same export"
    )

    no_embedding = copy_layout(pixai_onnx, tmp_path / "no-embedding")
    network = _WithoutEmbedding(PixaiOnnxOutputs(tiny_pixai_network(0)))
    export_onnx(network, _example(), no_embedding / "model.onnx", ["logits", "prediction"])
    with pytest.raises(
        ModelLoadError, match=r"model\.onnx: no 'embedding' output \(outputs: logits, prediction\)"
    ):
        open_tagger(no_embedding, "cpu", 1)

    bad_ips = copy_layout(pixai_onnx, tmp_path / "bad-ips")
    rows = list(csv.reader((bad_ips / "selected_tags.csv").open()))
    rows[-1][5] = "vocaloid"  # neither a JSON list nor a Python one
    with (bad_ips / "selected_tags.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(ModelLoadError, match=r"selected_tags\.csv:17: ips .* is not a JSON list"):
        open_tagger(bad_ips, "cpu", 1)


def test_cli_reports_a_bad_layout_in_one_line(pixai_onnx: Path, tmp_path: Path) -> None:
    broken = copy_layout(pixai_onnx, tmp_path / "broken")
    (broken / "categories.json").unlink()
    code, _, err = run("tag", "x.png", "--model-dir", str(broken))
    assert code == 2
    assert err.strip() == (
        f"sagashi: error: {broken} looks like a PixAI v0.9 ONNX (deepghs export) model but "
        "lacks categories.json"
    )


def _example() -> torch.Tensor:
    return torch.zeros(1, 3, TINY_SIZE, TINY_SIZE)


class _WithoutEmbedding(nn.Module):
    """The deepghs graph less its embedding output: (N, 3, S, S) -> logits, prediction."""

    def __init__(self, network: PixaiOnnxOutputs) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, logits, prediction = self.network(x)
        return logits, prediction


def test_a_quantised_export_tags_but_does_not_index(pixai_onnx: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = tmp_path / "int8"
    shutil.copytree(pixai_onnx, int8, ignore=shutil.ignore_patterns("model.onnx"))
    quantize_dynamic(
        str(pixai_onnx / "model.onnx"), str(int8 / "model.onnx"), weight_type=QuantType.QInt8
    )
    with pytest.raises(ModelLoadError, match=r"model\.onnx: quantised \(.*MatMulInteger"):
        open_tagger(int8, "cpu", 1)
    tagger = open_tagger(int8, "cpu", 1, embeddings=False)
    assert tagger.info.num_tags == 16


def test_a_block_wise_quantised_export_tags_but_does_not_index(
    pixai_onnx: Path, tmp_path: Path
) -> None:
    # MatMulNBits (8-bit weights in blocks of 32) keeps the exporter's producer name, so the
    # refusal reads the graph's operators; its embeddings drift past what a generation accepts
    # (least cosine 0.9998 on EVA02-Large against 0.99997 for bf16, docs/benchmarks.md).
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q8 = tmp_path / "q8"
    shutil.copytree(pixai_onnx, q8, ignore=shutil.ignore_patterns("model.onnx"))
    quantiser = MatMulNBitsQuantizer(
        onnx.load(str(pixai_onnx / "model.onnx")),
        bits=8,
        block_size=32,
        is_symmetric=True,
        accuracy_level=4,
    )
    quantiser.process()
    quantiser.model.save_model_to_file(str(q8 / "model.onnx"), use_external_data_format=False)
    assert onnx.load(str(q8 / "model.onnx")).producer_name != QUANTISER
    assert "MatMulNBits" in graph_operators(q8 / "model.onnx")
    with pytest.raises(
        ModelLoadError, match=r"model\.onnx: quantised \(MatMulNBits\); its embeddings drift"
    ):
        open_tagger(q8, "cpu", 1)
    tagger = open_tagger(q8, "cpu", 1, embeddings=False)
    fp32 = open_tagger(pixai_onnx, "cpu", 1)
    batch = torch.rand(2, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0))
    assert np.abs(tagger.predict(batch).probs - fp32.predict(batch).probs).max() < 0.05


def test_a_model_named_by_the_quantiser_is_refused_whatever_its_operators(
    pixai_onnx: Path, tmp_path: Path
) -> None:
    import onnx

    renamed = tmp_path / "renamed"
    shutil.copytree(pixai_onnx, renamed, ignore=shutil.ignore_patterns("model.onnx"))
    model = onnx.load(str(pixai_onnx / "model.onnx"))
    model.producer_name = QUANTISER
    onnx.save(model, str(renamed / "model.onnx"))
    with pytest.raises(ModelLoadError, match=r"quantised by ONNX Runtime \(onnx\.quantize\)"):
        open_tagger(renamed, "cpu", 1)


def test_graph_operators_reads_the_nodes_without_the_weights(
    pixai_onnx: Path, tmp_path: Path
) -> None:
    import onnx

    expected = {n.op_type for n in onnx.load(str(pixai_onnx / "model.onnx")).graph.node}
    assert graph_operators(pixai_onnx / "model.onnx") == expected
    assert "MatMul" in expected and not expected & QUANTISED_OPS
    (tmp_path / "bad.onnx").write_bytes(b"\xff" * 64)
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert graph_operators(tmp_path / "bad.onnx") == set()
    assert graph_operators(tmp_path / "empty.onnx") == set()
    assert graph_operators(tmp_path / "absent.onnx") == set()
