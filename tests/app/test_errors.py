"""One error hierarchy: every error Sagashi raises for a person or a program is a
:class:`~app.errors.SagashiError` that names its HTTP status, error code and exit status."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.errors import SagashiError
from indexer.cli import app
from tests.support.paths import REPO_ROOT

# Not errors for people: an HTTP exception Starlette itself answers, and the signal a
# download's child process is stopped with.
OUTSIDE = {"BodyTooLarge", "_Terminated"}


def error_classes() -> list[tuple[str, str]]:
    """(module, class) of every exception class defined in app/ and indexer/."""
    found = []
    for path in sorted([*REPO_ROOT.glob("app/**/*.py"), *REPO_ROOT.glob("indexer/**/*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name not in OUTSIDE:
                bases = [ast.unparse(base) for base in node.bases]
                if any(b.endswith(("Error", "Exception")) or b == "LookupError" for b in bases):
                    found.append((module, node.name))
    return found


def test_the_scan_finds_the_errors() -> None:
    names = {name for _module, name in error_classes()}
    assert {"QueryError", "ImageDecodeError", "WriterBusy", "ApiError", "SagashiError"} <= names


@pytest.mark.parametrize(("module", "name"), error_classes())
def test_every_error_is_a_sagashi_error_with_a_status_code_and_exit(module: str, name: str) -> None:
    error = getattr(importlib.import_module(module), name)
    assert issubclass(error, SagashiError), f"{module}.{name} does not derive from SagashiError"
    assert 400 <= error.http_status <= 599
    assert error.error_code and error.error_code == error.error_code.lower()
    assert error.exit_code not in (0, 1)  # 1 means "some files failed", not a refusal


def test_a_command_ends_on_the_errors_own_line_and_exit_status(tmp_path: Path) -> None:
    env = {"SAGASHI_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "NO_COLOR": "1"}
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"], env=env).exit_code == 0
    result = runner.invoke(app, ["generations", "drop", "7"], env=env)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["sagashi: error: no generation 7; see 'sagashi generations list'"]
    bad = runner.invoke(app, ["search", "(", "--engine", "sql"], env=env)
    assert bad.exit_code == 2
    assert bad.stderr.strip() == (
        "sagashi: error: bad query at character 0 (unbalanced_parens): this '(' is never closed"
    )
