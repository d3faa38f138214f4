"""``sagashi model fetch`` of the ONNX repos from a local stub of the Hub: whole, offline,
unauthorised, gated and interrupted, with nothing partial left in the target folder."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.tagger.fetch import PUBLISHED
from tests.support.cli import SAGASHI, run_sagashi
from tests.support.hub import Hub, serving_hub


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_sagashi(*args, env={"SAGASHI_LOG_LEVEL": "WARNING", **env})


@pytest.fixture
def hub() -> Iterator[tuple[str, type[Hub]]]:
    files = {
        f"{model.repo_id}/{name}": f"{model.repo_id}:{name}\n".encode() * 4096
        for model in PUBLISHED.values()
        for name in model.files
    }
    with serving_hub(files) as served:
        yield served


def hub_env(url: str, home: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": url, "HF_HOME": str(home / "hf-home"), "HF_HUB_DISABLE_XET": "1"}


@pytest.mark.parametrize("name", ["pixai-v0.9-onnx", "wd-eva02-large-v3-onnx"])
def test_fetch_onnx_repo_whole(hub: tuple[str, type[Hub]], tmp_path: Path, name: str) -> None:
    url, handler = hub
    target = tmp_path / "models" / name
    result = run("model", "fetch", name, "--dir", str(target), env=hub_env(url, tmp_path))
    assert result.returncode == 0, result.stderr
    model = PUBLISHED[name]
    assert sorted(p.name for p in target.iterdir()) == sorted(model.files)  # no .cache, no lock
    for file in model.files:
        assert (target / file).read_bytes() == handler.files[f"{model.repo_id}/{file}"]
    assert sorted(p.name for p in target.parent.iterdir()) == [name]  # no staging left


def test_offline_is_one_line_at_once(tmp_path: Path) -> None:
    target = tmp_path / "m"
    started = time.perf_counter()
    result = run(
        "model", "fetch", "pixai-v0.9-onnx", "--dir", str(target),
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sagashi: error: cannot reach the Hugging Face Hub to download "
        "deepghs/pixai-tagger-v0.9-onnx; check the network, or download model.onnx, "
        "selected_tags.csv, preprocess.json, categories.json, thresholds.csv elsewhere and "
        "copy them into the directory"
    ]
    assert elapsed < 10, elapsed  # no retries with backoff
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.partial")]


def test_offline_mode_is_one_line(tmp_path: Path) -> None:
    result = run(
        "model", "fetch", "wd-eva02-large-v3-onnx", "--dir", str(tmp_path / "m"),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sagashi: error: offline mode is on (HF_HUB_OFFLINE=1); unset it, or copy the files "
        "in by hand"
    )
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (
            403,
            "GatedRepo",
            "pixai-labs/pixai-tagger-v0.9 is gated: accept its terms at "
            "https://huggingface.co/pixai-labs/pixai-tagger-v0.9 with your account, then set "
            "HF_TOKEN to a token of that account; or fetch the ungated ONNX export: "
            "sagashi model fetch pixai-v0.9-onnx",
        ),
        (
            401,
            "RepoNotFound",
            "pixai-labs/pixai-tagger-v0.9: not found or not authorised (HTTP 401/404); set "
            "HF_TOKEN to a token whose account accepted the terms at "
            "https://huggingface.co/pixai-labs/pixai-tagger-v0.9; or fetch the ungated ONNX "
            "export: sagashi model fetch pixai-v0.9-onnx",
        ),
    ],
)
def test_gated_and_unauthorised_make_one_request_and_name_the_onnx_export(
    hub: tuple[str, type[Hub]], tmp_path: Path, status: int, code: str, expected: str
) -> None:
    url, handler = hub
    handler.status, handler.code = status, code
    target = tmp_path / "pixai"
    env = {**hub_env(url, tmp_path), "HF_TOKEN": "hf_invalid"}
    result = run("model", "fetch", "pixai-v0.9", "--dir", str(target), env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == f"sagashi: error: {expected}"
    # One attempt (huggingface_hub may also ask /api/agent-harnesses, best-effort, once a day).
    assert [r for r in handler.requests if "/resolve/" in r] == [
        "HEAD /pixai-labs/pixai-tagger-v0.9/resolve/main/model_v0.9.pth"
    ]
    assert not target.exists()


def _interruptible() -> None:
    """Ctrl-C as at a terminal: a shell's background job (a CI script run with ``&``) starts
    with SIGINT ignored, and Python then keeps it ignored in every child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_fetch_leaves_no_partial_directory(
    hub: tuple[str, type[Hub]], tmp_path: Path, how: signal.Signals
) -> None:
    url, handler = hub
    handler.stall = "model.onnx"
    target = tmp_path / "models" / "pixai"
    target.parent.mkdir()
    process = subprocess.Popen(
        [SAGASHI, "model", "fetch", "pixai-v0.9-onnx", "--dir", str(target)],
        env={**os.environ, "SAGASHI_LOG_LEVEL": "WARNING", **hub_env(url, tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
    )
    stalled = "GET /deepghs/pixai-tagger-v0.9-onnx/resolve/main/model.onnx"
    deadline = time.monotonic() + 60
    # The stalled file's own request: huggingface_hub makes others first (its daily
    # GET /api/agent-harnesses at start-up), before the staging folder exists.
    while stalled not in handler.requests:
        assert time.monotonic() < deadline and process.poll() is None, handler.requests
        time.sleep(0.1)
    staging = [p for p in target.parent.iterdir() if p.name.startswith(".pixai.partial-")]
    assert len(staging) == 1  # downloading beside the target, not in it
    process.send_signal(how)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert list(target.parent.iterdir()) == []  # no target, no staging, no lock
    if how == signal.SIGTERM:
        assert err.strip().endswith(
            "download of deepghs/pixai-tagger-v0.9-onnx interrupted; nothing was written to "
            "the target folder"
        )
