"""The README stays true: commands, settings and the CI test command."""

from __future__ import annotations

import re
from typing import Any

import typer.main

from app.settings import Settings
from indexer.cli import app
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def command_paths() -> list[str]:
    root = typer.main.get_command(app)
    paths: list[str] = []

    def walk(group: Any, prefix: str) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                paths.append(f"{prefix}{name}")

    walk(root, "")
    return paths


def test_every_command_is_documented_with_a_heading_and_has_an_example() -> None:
    root = typer.main.get_command(app)
    for path in command_paths():
        assert f"### `sagashi {path}" in README, f"README lacks a section for 'sagashi {path}'"
        command = root
        for part in path.split():
            command = command.commands[part]  # type: ignore[attr-defined]
        assert f"sagashi {path}" in (command.epilog or ""), f"'{path}' --help has no example"
        assert (command.epilog or "").startswith("Example: ")


def test_every_setting_is_documented() -> None:
    for name in Settings.model_fields:
        assert f"`SAGASHI_{name.upper()}`" in README, f"README lacks SAGASHI_{name.upper()}"


def test_readme_documents_no_unknown_setting() -> None:
    known = {f"SAGASHI_{name.upper()}" for name in Settings.model_fields}
    mentioned = set(re.findall(r"SAGASHI_[A-Z_]+[A-Z]", README))
    assert mentioned <= known, f"README mentions settings that do not exist: {mentioned - known}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = re.findall(r"\*\*Test\*\*.*?```sh\n(.+?)\n```", README, flags=re.S)
    assert len(blocks) == 1
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert blocks[0] in ci, "the README's test command must be a line of .ci/run"
