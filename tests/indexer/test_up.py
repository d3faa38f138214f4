"""The README's first-run command, end to end: 'sagashi up ./images' in a fresh folder
downloads PixAI's ONNX export (from a local stub of the Hugging Face Hub serving a tiny
model in the export's layout), indexes a folder that holds broken files, reports them in the
summary and serves the rest; run again, it downloads nothing; offline, it stops at the
download with its one-line reason."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.tagger.fetch import PUBLISHED
from tests.support.hub import Hub, serving_hub
from tests.support.index_helpers import make_image
from tests.support.network import free_port, wait_for
from tests.support.paths import REPO_ROOT
from tests.support.tiny_models import build_tiny_pixai_onnx

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
SETUP = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[postgres]'"
REPO_ID = PUBLISHED["pixai-v0.9-onnx"].repo_id


def readme_run_command() -> str:
    """The quick start's Run command without its set-up part (a venv and 'pip install',
    which CI's own test command does the same way): what a user runs on every start."""
    blocks = re.findall(r"\*\*Run\*\*.*?```sh\n(.+?)\n```", README, flags=re.S)
    assert len(blocks) == 1, blocks
    block: str = blocks[0]
    setup, _, command = block.rpartition(" && ")
    assert setup == SETUP
    return command


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = build_tiny_pixai_onnx(tmp_path_factory.mktemp("export"))
    return {
        f"{REPO_ID}/{name}": (folder / name).read_bytes()
        for name in PUBLISHED["pixai-v0.9-onnx"].files
    }


@pytest.fixture
def hub(tiny_export: dict[str, bytes]) -> Iterator[tuple[str, type[Hub]]]:
    with serving_hub(dict(tiny_export)) as served:
        yield served


def fresh_folder(root: Path) -> Path:
    """A clone's folder after the set-up: the venv (this one), and ./images with four
    images and three files that are not images."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".venv").symlink_to(Path(sys.prefix))
    for i in range(4):
        make_image(root / "images" / f"art{i}.png", seed=i)
    (root / "images" / "sub").mkdir()
    (root / "images" / "sub" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "images" / "empty.jpg").write_bytes(b"")
    (root / "images" / "notes.png").write_text("not a picture\n")
    return root


def environment(root: Path, hub_url: str, port: int) -> dict[str, str]:
    """This machine's environment without Sagashi's settings (a new user has none), the
    Hub at ``hub_url``, and a free port in place of 8000."""
    values = {k: v for k, v in os.environ.items() if not k.startswith(("SAGASHI_", "HF_"))}
    return {
        **values,
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(root / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
        "SAGASHI_PORT": str(port),
        "SAGASHI_TORCH_THREADS": "1",
    }


def serve_the_readme_command(
    root: Path, hub_url: str, command: str | None = None
) -> tuple[str, str]:
    """Run the README's command (or ``command``) until it serves; check the server; stop
    it. Returns its output and the base URL it served on."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = root / f"up-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            ["bash", "-c", command or readme_run_command()],
            cwd=root,
            env=environment(root, hub_url, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: process.poll() is not None or httpx.get(f"{base}/readyz").is_success, 180)
        assert process.poll() is None, log_path.read_text()
        found = httpx.get(f"{base}/api/search", params={"q": "order:id"}).json()
        assert sorted(Path(item["path"]).name for item in found["items"]) == [
            "art0.png", "art1.png", "art2.png", "art3.png",
        ]  # fmt: skip
        gallery = httpx.get(f"{base}/")
        assert gallery.status_code == 200 and "text/html" in gallery.headers["content-type"]
        # the server tags uploads with the model it fetched
        image = (root / "images" / "art1.png").read_bytes()
        similar = httpx.post(f"{base}/api/similar", files={"file": ("a.png", image)}, timeout=60)
        assert similar.status_code == 200, similar.text
        assert similar.json()["items"][0]["path"].endswith("art1.png")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    output = log_path.read_text()
    assert "Traceback" not in output, output
    return output, base


def test_the_readme_run_command_indexes_a_folder_with_broken_files_and_serves(
    hub: tuple[str, type[Hub]], tmp_path: Path
) -> None:
    url, handler = hub
    root = fresh_folder(tmp_path / "clone")
    output, base = serve_the_readme_command(root, url)
    fetched = sorted(r for r in handler.requests if r.startswith("GET") and "/resolve/" in r)
    assert fetched == sorted(
        f"GET /{REPO_ID}/resolve/main/{name}" for name in PUBLISHED["pixai-v0.9-onnx"].files
    )
    model = root / "models" / "pixai-v0.9-onnx"
    assert sorted(p.name for p in model.iterdir()) == sorted(PUBLISHED["pixai-v0.9-onnx"].files)
    assert (
        "INFO sagashi: no model in models/pixai-v0.9-onnx yet: downloading PixAI Tagger v0.9's "
        f"ONNX export ({REPO_ID}) into it"
    ) in output
    for name in ("sub/cut.png", "empty.jpg", "notes.png"):
        failed = f"WARNING sagashi: failed: {root / 'images' / name}: "
        assert re.search(rf"{re.escape(failed)}(not_an_image|empty): ", output), output
    assert re.search(
        r"^indexed in \d+\.\ds \(job 1\)\n  new        4\n(?:  .*\n)*"
        r"  failed     3  \((?:\w+ \d(?:, )?)+\)$",
        output,
        re.MULTILINE,
    ), output
    assert "WARNING sagashi: 3 files could not be indexed (listed above); serving the rest" in (
        output
    )
    assert f"INFO sagashi: serving on {base} with " in output
    assert (root / "sagashi-data" / "sagashi.db").is_file()

    # the second start downloads nothing and indexes only what changed
    handler.requests.clear()
    again, _ = serve_the_readme_command(root, url)
    assert [r for r in handler.requests if "/resolve/" in r] == []
    assert "downloading" not in again
    assert re.search(r"^  unchanged  4$", again, re.MULTILINE), again


def test_offline_the_readme_command_stops_at_the_download_with_one_line(tmp_path: Path) -> None:
    root = fresh_folder(tmp_path / "clone")
    result = subprocess.run(
        ["bash", "-c", readme_run_command()],
        cwd=root,
        env=environment(root, "http://127.0.0.1:9", free_port()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        "sagashi: error: cannot reach the Hugging Face Hub to download "
        f"{REPO_ID}; check the network, or download model.onnx, selected_tags.csv, "
        "preprocess.json, categories.json, thresholds.csv elsewhere and copy them into the "
        "directory"
    ]
    assert not (root / "models" / "pixai-v0.9-onnx").exists()
    assert not (root / "sagashi-data").exists()  # nothing indexed, nothing served


def test_a_missing_folder_is_refused_before_any_download(
    hub: tuple[str, type[Hub]], tmp_path: Path
) -> None:
    url, handler = hub
    root = fresh_folder(tmp_path / "clone")
    result = subprocess.run(
        [str(root / ".venv" / "bin" / "sagashi"), "up", "./imgaes"],
        cwd=root,
        env=environment(root, url, free_port()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "sagashi: error: no such file or folder: imgaes"
    assert handler.requests == []


def test_a_model_folder_that_holds_a_model_is_used_as_it_is(
    hub: tuple[str, type[Hub]], tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    url, handler = hub
    root = fresh_folder(tmp_path / "clone")
    command = f".venv/bin/sagashi up ./images --model-dir {tiny_pixai_dir}"
    output, _ = serve_the_readme_command(root, url, command)
    assert handler.requests == []  # the PixAI .pth layout given, nothing downloaded
    assert "downloading" not in output and not (root / "models").exists()
    assert f"loaded pixai model {tiny_pixai_dir}" in output
