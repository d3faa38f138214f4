"""``sagashi tag`` and ``sagashi model`` as a user runs them: real processes, real files."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.tagger.config import ModelConfig
from app.tagger.decode import decode_image
from app.tagger.model import locate_model_files
from app.tagger.timm_tagger import preprocess_for
from tests.support.cli import run_sagashi
from tests.support.tag_records import TagResult, tag_records
from tests.support.tiny_models import direct_forward


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_sagashi(*args, env={"SAGASHI_LOG_LEVEL": "WARNING", **(env or {})})


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(
        folder / "b.jpg", quality=90
    )
    nested = folder / "sub" / "deeper"
    nested.mkdir(parents=True)
    Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(nested / "c.webp")
    (folder / "notes.txt").write_text("not an image, and not picked up by extension")
    (folder / "broken.jpg").write_bytes(b"this is text, not a jpeg")
    return folder


@pytest.mark.parametrize("fixture", ["tiny_pixai_dir", "tiny_wd_dir"])
def test_cli_scores_and_embeddings_equal_a_direct_timm_forward(
    fixture: str, images: Path, request: pytest.FixtureRequest
) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    paths = [images / "a.png", images / "b.jpg", images / "sub" / "deeper" / "c.webp"]
    result = run(
        "tag",
        *map(str, paths),
        "--model-dir",
        str(model_dir),
        "--threshold-general",
        "0",
        "--threshold-character",
        "0",
        "--top-k",
        "100000",
        "--embedding",
        "--batch-size",
        "2",
        env={"SAGASHI_JPEG_DRAFT": "false"},  # the reference decodes at full size
    )
    assert result.returncode == 0, result.stderr
    out = tag_records(result.stdout)
    assert [r["path"] for r in out] == [str(p) for p in paths]
    files = locate_model_files(model_dir)
    config = (
        ModelConfig.from_file(files.config) if files.config else ModelConfig.wd_eva02_large_v3()
    )
    preprocess = preprocess_for(files.family, config)
    batch = torch.stack([preprocess.tensor(decode_image(p, max_pixels=10**8)) for p in paths])
    probs, embeddings = direct_forward(model_dir, batch)
    names = _vocab_names(model_dir)
    for row, record in enumerate(out):
        got = {r["tag"]: r for r in record["results"]}
        for index, name in enumerate(names):
            if name in got and got[name]["group"] in ("general", "character"):
                assert got[name]["score"] == pytest.approx(float(probs[row, index]), abs=2e-6)
        scored = [n for n, r in got.items() if r["group"] in ("general", "character")]
        assert len(scored) == sum(
            1 for i, n in enumerate(names) if _group(model_dir, i) != "rating"
        )
        np.testing.assert_allclose(record["embedding"], embeddings[row], atol=1e-6)


def _vocab_names(model_dir: Path) -> list[str]:
    from app.tagger import TimmTagger

    tagger = TimmTagger(model_dir, device="cpu")
    tagger.load()
    return list(tagger.vocab.names)


def _group(model_dir: Path, index: int) -> str:
    from app.tagger import TimmTagger

    tagger = TimmTagger(model_dir, device="cpu")
    tagger.load()
    return tagger.vocab.group(index)


def test_folder_is_searched_recursively_and_bad_files_are_reported(
    tiny_pixai_dir: Path, images: Path
) -> None:
    result = run("tag", str(images), "--model-dir", str(tiny_pixai_dir))
    assert result.returncode == 1  # some files failed; the others are still printed
    out = tag_records(result.stdout)
    assert [Path(str(r["path"])).name for r in out] == ["a.png", "b.jpg", "broken.jpg", "c.webp"]
    broken = out[2]
    assert broken["results"] == []
    assert broken["error"] == {"code": "not_an_image", "message": "not a recognised image format"}
    assert all("error" not in r and r["results"] for r in out if r is not broken)
    for record in out:
        for item in record["results"]:
            assert set(item) == {"tag", "score", "group"}
            assert item["group"] in ("general", "character", "copyright")


def results_of(model_dir: Path, image: str, *options: str) -> list[TagResult]:
    """The tags ``sagashi tag IMAGE --model-dir DIR *options`` prints for one image."""
    result = run("tag", image, "--model-dir", str(model_dir), *options)
    return tag_records(result.stdout)[0]["results"]


def test_thresholds_and_top_k_apply(tiny_pixai_dir: Path, images: Path) -> None:
    image = str(images / "a.png")
    loose = results_of(
        tiny_pixai_dir, image, "--threshold-general", "0", "--threshold-character", "0"
    )
    strict = results_of(
        tiny_pixai_dir, image, "--threshold-general", "0.9", "--threshold-character", "0.9"
    )
    top3 = results_of(tiny_pixai_dir, image, "--threshold-general", "0", "--top-k", "3")
    assert all(r["score"] >= 0.9 for r in strict)
    assert len(strict) < len(loose)
    assert len([r for r in top3 if r["group"] != "copyright"]) == 3


def test_caption_format(tiny_pixai_dir: Path, images: Path) -> None:
    single = run(
        "tag",
        str(images / "a.png"),
        "--model-dir",
        str(tiny_pixai_dir),
        "--format",
        "caption",
        "--threshold-general",
        "0",
        "--threshold-character",
        "0.99",
    )
    assert single.returncode == 0, single.stderr
    caption = single.stdout.strip()
    assert "\t" not in caption
    assert "long hair" in caption and "long_hair" not in caption
    assert "^_^" in caption  # emoticons keep their underscores
    several = run(
        "tag",
        str(images / "a.png"),
        str(images / "broken.jpg"),
        "--model-dir",
        str(tiny_pixai_dir),
        "--format",
        "caption",
        "--underscores",
    )
    assert several.returncode == 1
    lines = several.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{images / 'a.png'}\t")
    assert f"{images / 'broken.jpg'}: not_an_image: not a recognised image format" in several.stderr


def test_deny_list_from_a_file(tiny_pixai_dir: Path, images: Path, tmp_path: Path) -> None:
    image = str(images / "a.png")
    everything = results_of(tiny_pixai_dir, image, "--threshold-general", "0")
    first = next(r["tag"] for r in everything if r["group"] == "general")
    deny = tmp_path / "deny.txt"
    deny.write_text(f"{first}\n")
    denied = results_of(tiny_pixai_dir, image, "--threshold-general", "0", "--deny", f"@{deny}")
    assert first not in [r["tag"] for r in denied]
    assert len(denied) == len(everything) - 1


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["tag", "x.png"], {}, "no model directory: pass --model-dir DIR or set SAGASHI_MODEL_DIR"),
        (
            ["tag", "x.png", "--model-dir", "/nonexistent"],
            {},
            "model directory /nonexistent does not exist",
        ),
        (["tag", "x.png"], {"SAGASHI_BATCH_SIZE": "0"}, "invalid setting SAGASHI_BATCH_SIZE"),
        (["tag", "x.png"], {"SAGASHI_DEVICE": "gpu7"}, "invalid setting SAGASHI_DEVICE"),
        (["model", "fetch", "nonsense"], {}, "unknown model 'nonsense'; choose one of: pixai-v0.9"),
        (
            ["model", "fetch", "wd-eva02-large-v3", "--dir", "{tmp}"],
            {"HF_HUB_OFFLINE": "1"},
            "offline mode is on (HF_HUB_OFFLINE=1)",
        ),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = run(*[a.replace("{tmp}", str(tmp_path)) for a in args], env=env)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("sagashi: error:")]
    assert len(errors) == 1, result.stderr
    assert message in errors[0]


def test_missing_image_gives_a_per_file_error(tiny_pixai_dir: Path, tmp_path: Path) -> None:
    result = run("tag", str(tmp_path / "gone.png"), "--model-dir", str(tiny_pixai_dir))
    assert result.returncode == 1
    assert tag_records(result.stdout)[0]["error"]["code"] == "not_found"


def test_threshold_out_of_range_is_rejected(tiny_pixai_dir: Path) -> None:
    result = run("tag", "x.png", "--model-dir", str(tiny_pixai_dir), "--threshold-general", "1.5")
    assert result.returncode == 2
    assert "Error: Invalid value for '--threshold-general'" in result.stderr


class _HubStub(http.server.BaseHTTPRequestHandler):
    status = 403
    code = "GatedRepo"

    def _answer(self) -> None:
        self.send_response(self.status)
        self.send_header("X-Error-Code", self.code)
        self.send_header("X-Error-Message", "Access to model is restricted.")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = _answer
    do_GET = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub_stub() -> Iterator[tuple[str, type[_HubStub]]]:
    handler = type("Stub", (_HubStub,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (
            403,
            "GatedRepo",
            "pixai-labs/pixai-tagger-v0.9 is gated: accept its terms at "
            "https://huggingface.co/pixai-labs/pixai-tagger-v0.9 with your account, "
            "then set HF_TOKEN",
        ),
        (
            401,
            "RepoNotFound",
            "pixai-labs/pixai-tagger-v0.9: not found or not authorised (HTTP 401/404); "
            "set HF_TOKEN to a token whose account accepted the terms",
        ),
    ],
)
def test_model_fetch_gated_and_unauthorised(
    hub_stub: tuple[str, type[_HubStub]], tmp_path: Path, status: int, code: str, message: str
) -> None:
    url, handler = hub_stub
    handler.status, handler.code = status, code
    result = run(
        "model",
        "fetch",
        "pixai-v0.9",
        "--dir",
        str(tmp_path),
        env={"HF_ENDPOINT": url, "HF_TOKEN": "hf_invalid"},
    )
    assert result.returncode == 2
    assert "sagashi: error: pixai-labs/pixai-tagger-v0.9" in result.stderr
    assert message in result.stderr


def test_model_info(tiny_wd_dir: Path) -> None:
    result = run("model", "info", "--model-dir", str(tiny_wd_dir))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["family"] == "wd"
    assert info["groups"] == {"rating": 4, "general": 12, "character": 4}
    assert info["embedding_dim"] == 32
    assert info["preprocess"].startswith("pad 56x56 bicubic")
    assert info["preprocess"].endswith("BGR")
