"""The generated references of the documentation site: every ``sagashi`` command and every
``SAGASHI_`` setting, read from the code itself (the Typer app of :mod:`indexer.cli` and
:class:`app.settings.Settings`), so the pages cannot drift from what the program does.

    python -m indexer.docs_gen            # rewrite docs/reference/cli.md and settings.md
    python -m indexer.docs_gen --check    # exit 1 when a committed page differs

``tests/project/test_docs.py`` asserts the committed pages equal this output.
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any

import typer.main
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from app.settings import Settings
from indexer.cli import app
from indexer.cli_parsing import usage_name

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path("docs") / "reference"
GENERATOR = "python -m indexer.docs_gen"


def _cell(text: str) -> str:
    """Text inside one Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    """Inline code that may itself hold backticks."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _paragraphs(text: str) -> list[str]:
    """A docstring's paragraphs, each joined into one line (click's ``\\b`` markers dropped)."""
    blocks = [block for block in text.strip().split("\n\n") if block.strip()]
    return [
        " ".join(line.strip() for line in block.splitlines() if line.strip() != "\b")
        for block in blocks
    ]


# ---------------------------------------------------------------------------------- commands


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for name in sorted(group.commands):
        command = group.commands[name]
        if command.hidden:
            continue
        if hasattr(command, "commands"):
            found.extend(_commands(command, f"{prefix}{name} "))
        else:
            found.append((f"{prefix}{name}", command))
    return found


def command_paths() -> list[str]:
    """Every command as typed after ``sagashi`` (``index``, ``db upgrade``, ...)."""
    return [path for path, _ in _commands(typer.main.get_command(app), "")]


# Parameters are read by their attributes: Typer builds them on a click of its own (typer._click
# in recent versions), so isinstance checks against an imported click would not hold.


def _is_flag(param: Any) -> bool:
    return bool(getattr(param, "is_flag", False))


def _default(param: Any) -> str:
    default = param.default
    if _is_flag(param) and param.secondary_opts:
        if default is None:
            return "see help"
        return _code(param.opts[0] if default else param.secondary_opts[0])
    if _is_flag(param):
        return "on" if default else "off"
    if default is None or default == ():
        return ""
    if isinstance(default, enum.Enum):
        default = default.value
    return _code(str(default))


def _type(param: Any) -> str:
    if _is_flag(param):
        return "flag"
    kind = param.type
    if hasattr(kind, "choices"):
        return " \\| ".join(_code(str(choice)) for choice in kind.choices)
    if hasattr(kind, "min") and hasattr(kind, "max"):
        base = "integer" if type(kind).__name__.startswith("Int") else "number"
        bounds = []
        if kind.min is not None:
            bounds.append(f"{'>' if kind.min_open else '≥'} {kind.min}")
        if kind.max is not None:
            bounds.append(f"{'<' if kind.max_open else '≤'} {kind.max}")
        return f"{base} ({', '.join(bounds)})" if bounds else base
    names = {"int": "integer", "integer": "integer", "float": "number", "path": "path"}
    return names.get(str(kind.name), "text")


def _command_section(path: str, command: Any) -> list[str]:
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    options = [p for p in command.params if p.param_type_name == "option" and not p.hidden]
    usage = " ".join(["sagashi", path, "[OPTIONS]", *(usage_name(a) for a in arguments)])
    lines = [f"## `sagashi {path}`", "", "```text", usage, "```", ""]
    for paragraph in _paragraphs(command.help or ""):
        lines += [paragraph, ""]
    if arguments:
        lines += ["| argument | help |", "|---|---|"]
        for argument in arguments:
            help_text = _cell(getattr(argument, "help", None) or "")
            lines.append(f"| {_code(usage_name(argument))} | {help_text} |")
        lines.append("")
    if options:
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        for option in options:
            names = " / ".join(_code(name) for name in [*option.opts, *option.secondary_opts])
            help_text = _cell(option.help or "")
            lines.append(f"| {names} | {_type(option)} | {_default(option)} | {help_text} |")
        lines.append("")
    for example in _paragraphs(command.epilog or ""):
        lines += ["Example:", "", "```sh", example.removeprefix("Example: "), "```", ""]
    return lines


def cli_reference() -> str:
    root = typer.main.get_command(app)
    lines = [
        "# Command-line reference",
        "",
        f"<!-- Generated by `{GENERATOR}` from indexer/cli.py: edit the code, not this file. -->",
        "",
        "Every `sagashi` command with its arguments and options, generated from the command",
        f"line's own definitions (`indexer/cli.py`) by `{GENERATOR}`; a test fails when this",
        "page and the code differ. `sagashi COMMAND --help` prints the same. Exit status is 0 on",
        "success and non-zero with a one-line reason (`sagashi: error: ...`) on bad input.",
        "Options fall back on the [settings](settings.md) (`SAGASHI_...`) they override.",
        "What each command does in depth is in the guides: [getting started]"
        "(../getting-started.md), [the query language](../query-language.md),",
        "[tagging and datasets](../tagging-and-datasets.md), [operations](../operations.md).",
        "",
        f"{_cell(root.help or '')}",
        "",
        "| command | what |",
        "|---|---|",
    ]
    commands = _commands(root, "")
    for path, command in commands:
        anchor = "sagashi-" + path.replace(" ", "-")
        summary = _paragraphs(command.help or "")[0] if command.help else ""
        lines.append(f"| [`sagashi {path}`](#{anchor}) | {_cell(summary)} |")
    lines.append("")
    for path, command in commands:
        lines += _command_section(path, command)
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------- settings


def _annotation(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(_code(str(arg)) for arg in args)
    if origin in (types.UnionType, typing.Union):
        rest = [arg for arg in args if arg is not type(None)]
        text = " \\| ".join(_annotation(arg) for arg in rest)
        return f"{text} (optional)" if len(rest) < len(args) else text
    if origin is list:
        return f"comma-separated list of {_annotation(args[0])}"
    if origin is typing.Annotated:
        return _annotation(args[0])
    names = {
        "Path": "path",
        "str": "text",
        "int": "integer",
        "float": "number",
        "bool": "boolean",
        "SecretStr": "secret text",
    }
    return names.get(getattr(annotation, "__name__", ""), str(annotation))


def _bounds(field: FieldInfo) -> str:
    bounds = []
    for item in field.metadata:
        for attribute, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attribute, None)
            if value is not None:
                bounds.append(f"{sign} {value}")
    return f" ({', '.join(bounds)})" if bounds else ""


def _setting_default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        return "(empty)" if value in ([], (), {}, "") else _code(str(value))
    default = field.default
    if default is None or default is PydanticUndefined:
        return "(unset)"
    if isinstance(default, bool):
        return _code(str(default).lower())
    if isinstance(default, Path) and not default.is_absolute():
        return _code(f"./{default}")
    return _code(str(default))


def settings_reference() -> str:
    prefix = Settings.model_config.get("env_prefix", "")
    lines = [
        "# Settings reference",
        "",
        f"<!-- Generated by `{GENERATOR}` from app/settings.py: edit the code, not this file. -->",
        "",
        "Every setting, generated from the settings class itself (`app.settings.Settings`) by",
        f"`{GENERATOR}`; a test fails when this page and the code differ.",
        "",
        f"Settings are read at start-up from environment variables with the prefix `{prefix}`",
        "(the field's name in upper case), validated, and an invalid value stops the command with",
        "a one-line reason. Command-line options override them. A variable set to an empty",
        "string (`VAR=` in an environment file or Compose) leaves an optional path or token",
        "unset; lists are comma-separated (or a JSON list). How the settings fit together is",
        "in [deployment](../deployment.md) (devices, workers, limits) and",
        "[operations](../operations.md).",
        "",
        "| variable | type | default | description |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        kind = _annotation(field.annotation) + _bounds(field)
        description = _cell(field.description or "")
        lines.append(f"| `{variable}` | {kind} | {_setting_default(field)} | {description} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- files


def pages() -> dict[Path, str]:
    """Each generated page (relative to the repository root) and its text."""
    return {REFERENCE / "cli.md": cli_reference(), REFERENCE / "settings.md": settings_reference()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=GENERATOR, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report pages that differ")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    stale = []
    for relative, text in pages().items():
        path = args.root / relative
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(relative))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        sys.stderr.write(f"out of date (run {GENERATOR}): {', '.join(stale)}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
