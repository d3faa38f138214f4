"""Lint, format and type checks are part of the suite, so CI enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_passes(command: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_app_never_imports_indexer() -> None:
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "app").rglob("*.py")
        if any(
            line.lstrip().startswith(("import indexer", "from indexer"))
            for line in path.read_text(encoding="utf-8").splitlines()
        )
    ]
    assert offenders == []


def test_only_the_cli_layer_imports_the_cli() -> None:
    """Commands live in indexer/cli*.py; the machinery they call never imports them back
    (the export module did, for its command's helpers: an import cycle)."""
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "indexer").glob("*.py")
        if not path.name.startswith("cli")
        and path.name != "docs_gen.py"  # documents the commands: it reads the CLI
        and any(
            line.lstrip().startswith(("from indexer.cli", "import indexer.cli"))
            for line in path.read_text(encoding="utf-8").splitlines()
        )
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "module", ["indexer.cli", "app.search.service", "app.store.repository", "app.api.app"]
)
def test_commands_without_a_model_start_without_torch(module: str) -> None:
    """torch and timm take seconds to import; 'sagashi search', 'db', 'import', '--help' and a
    server that has not tagged an upload yet (its /readyz)
    must not pay for them (they took 3.5 s to start when they did, 1.5 s after)."""
    probe = f"import sys, {module}; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
