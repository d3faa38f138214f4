"""The installed ``sagashi`` command, run as a user runs it, and the environment of a run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

SAGASHI = str(Path(sys.executable).with_name("sagashi"))


def run_sagashi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``sagashi`` command as a user would, over this process's environment."""
    return subprocess.run(
        [SAGASHI, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def environment(url: str, data_dir: Path, model_dir: Path) -> dict[str, str]:
    """This process's environment with a run's database, data and model folders (batches of 8,
    warnings and errors logged)."""
    return {
        **os.environ,
        "SAGASHI_DATABASE_URL": url,
        "SAGASHI_DATA_DIR": str(data_dir),
        "SAGASHI_MODEL_DIR": str(model_dir),
        "SAGASHI_BATCH_SIZE": "8",
        "SAGASHI_LOG_LEVEL": "WARNING",
    }


def index_run(
    root: Path, env: dict[str, str], preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """One ``sagashi index`` run to its end, output captured."""
    return subprocess.run(
        [SAGASHI, "index", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=preexec_fn,
        check=False,
    )


def finish(root: Path, env: dict[str, str]) -> None:
    result = index_run(root, env)
    assert result.returncode == 0, result.stderr
