"""The documentation stays true: the generated references equal the code, every command has
an example, the docs name only settings that exist, the query language documents every
metatag, order and error code, the architecture page names only paths that exist, and the
site builds with strict link checking."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from app.query.errors import ErrorCode
from app.query.metatags import KNOWN_METATAGS, ORDERS
from app.settings import Settings
from indexer import docs_gen
from indexer.cli import app
from tests.support.paths import REPO_ROOT

DOCS = REPO_ROOT / "docs"
CLI_MD = DOCS / "reference" / "cli.md"
SETTINGS_MD = DOCS / "reference" / "settings.md"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("relative", sorted(str(p) for p in docs_gen.pages()))
def test_generated_reference_equals_the_code(relative: str) -> None:
    expected = docs_gen.pages()[Path(relative)]
    path = REPO_ROOT / relative
    assert path.exists(), f"{relative} is missing: run python -m indexer.docs_gen"
    assert read(path) == expected, f"{relative} is out of date: run python -m indexer.docs_gen"


def test_every_command_is_documented_with_a_heading_and_has_an_example() -> None:
    reference = read(CLI_MD)
    root: Any = typer.main.get_command(app)
    paths = docs_gen.command_paths()
    assert {"index", "search", "serve", "up", "db upgrade"} <= set(paths)
    for path in paths:
        assert f"## `sagashi {path}`" in reference, f"the CLI reference lacks 'sagashi {path}'"
        command = root
        for part in path.split():
            command = command.commands[part]
        assert f"sagashi {path}" in (command.epilog or ""), f"'{path}' --help has no example"
        assert (command.epilog or "").startswith("Example: ")


def test_help_lists_each_argument_as_its_usage_line_names_it() -> None:
    # Typer 0.27 lists an argument without a metavar by its parameter name ("paths..." under
    # "Usage: sagashi tag [OPTIONS] PATHS..."), so SagashiCommand gives each argument one.
    root: Any = typer.main.get_command(app)
    checked = 0
    for path in docs_gen.command_paths():
        command = root
        for part in path.split():
            command = command.commands[part]
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        if not arguments:
            continue
        result = CliRunner().invoke(app, [*path.split(), "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        usage, _, listed = result.output.partition("Arguments")
        for argument in arguments:
            where = f"'sagashi {path}' argument {argument.name}"
            assert argument.metavar, f"{where} has no metavar"
            assert argument.metavar in usage, where
            assert re.search(rf"^\W*{re.escape(argument.metavar)}\s", listed, re.M), where
            checked += 1
    assert checked >= 9


def test_every_setting_is_documented() -> None:
    reference = read(SETTINGS_MD)
    for name in Settings.model_fields:
        assert f"`SAGASHI_{name.upper()}`" in reference, f"settings.md lacks SAGASHI_{name.upper()}"


def doc_pages() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_the_docs_mention_no_unknown_setting() -> None:
    known = {f"SAGASHI_{name.upper()}" for name in Settings.model_fields}
    for page in doc_pages():
        if page.name in ("benchmarks.md", "changelog.md"):
            continue  # history: settings as they were named then
        text = read(page)
        mentioned = {
            match[0].rstrip("_")
            for match in re.finditer(r"SAGASHI_[A-Z_]+", text)
            if not text.startswith("*", match.end())  # SAGASHI_THRESHOLD_*: a family
        }
        unknown = mentioned - known - {"SAGASHI_TEST_PG_URL"}
        assert not unknown, (
            f"{page.relative_to(REPO_ROOT)} names settings that do not exist: {unknown}"
        )


def test_the_query_language_documents_every_metatag_order_and_error() -> None:
    page = read(DOCS / "query-language.md")
    for name in sorted(KNOWN_METATAGS):
        assert f"`{name}:`" in page, f"query-language.md lacks the metatag {name}:"
    for order in sorted(ORDERS):
        assert f"`order:{order}`" in page, f"query-language.md lacks order:{order}"
    assert "`order:score:TAG`" in page
    for code in ErrorCode:
        assert f"| `{code.value}` |" in page, f"query-language.md lacks the error code {code.value}"


PATH_IN_BACKTICKS = re.compile(r"`((?:app|indexer|tests|bench|migrations|docs)/[\w./-]*)`")


@pytest.mark.parametrize("page", ["docs/architecture.md", "README.md", "docs/contributing.md"])
def test_every_path_named_exists(page: str) -> None:
    named = set(PATH_IN_BACKTICKS.findall(read(REPO_ROOT / page)))
    assert named, f"{page} names no paths: is the pattern still right?"
    missing = sorted(path for path in named if not (REPO_ROOT / path).exists())
    assert not missing, f"{page} names paths that do not exist: {missing}"


def test_the_readme_links_resolve() -> None:
    readme = read(REPO_ROOT / "README.md")
    targets = re.findall(r"\]\(((?:docs/)[^)#\s]*)(?:#[^)]*)?\)", readme)
    assert targets
    missing = sorted(target for target in targets if not (REPO_ROOT / target).exists())
    assert not missing, f"README links to files that do not exist: {missing}"


def test_ci_builds_the_docs_strictly() -> None:
    ci = read(REPO_ROOT / ".ci" / "run")
    assert re.search(r"mkdocs build --strict", ci), ".ci/run must build the docs with --strict"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs.yml sets strict mode and turns broken links and anchors into errors."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (the dev extra installs it)")
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
