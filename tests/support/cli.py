"""The installed ``sagashi`` command, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
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
