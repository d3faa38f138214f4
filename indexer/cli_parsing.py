"""How ``sagashi`` reads its command lines: usage lines in click's plain style (``QUERY``,
``PATHS...``, not Typer's ``{query}``), and a query argument that may start with ``-``
(``sagashi search "-monochrome"``), which click alone takes for an unknown option."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand
from typer.models import CommandFunctionType

from app.errors import SagashiError

if TYPE_CHECKING:
    from typer._click.core import Context

# Typer carries its own copy of click: its parameter classes are told apart by
# ``param_type_name``, click's public marker, rather than by importing that copy.


def usage_name(argument: Any) -> str:
    """An argument as the usage line names it: its metavar, else its name in capitals, with
    ``...`` when it takes several and in brackets when it may be left out (``PATHS...``,
    ``[DIR]``)."""
    name = (argument.metavar or (argument.name or "").upper()).strip("[]").removesuffix("...")
    name = f"{name}..." if argument.nargs != 1 else name
    return name if argument.required else f"[{name}]"


class SagashiCommand(TyperCommand):
    """A command whose usage line and --help name its arguments in capitals, as click's own
    do, and that ends on a :class:`~app.errors.SagashiError` with the error's one-line reason
    on stderr and its exit status: the one place the CLI maps errors to exit codes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # --help's list of arguments then names each as the usage line does: Typer 0.27 lists
        # an argument without a metavar by its name in lower case ("paths...").
        for param in self.params:
            if param.param_type_name == "argument" and param.metavar is None:
                param.metavar = usage_name(param)

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except SagashiError as exc:
            typer.echo(f"sagashi: error: {exc.reason()}", err=True)
            raise typer.Exit(exc.exit_code) from None

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        arguments = (p for p in self.get_params(ctx) if p.param_type_name == "argument")
        return pieces + [usage_name(argument) for argument in arguments]


class DashQueryCommand(SagashiCommand):
    """A command with one positional argument, a search query, that may begin with ``-``.

    Before click parses the line, the first word that starts with a single ``-`` and is not
    one of the command's options (nor an option's value) is taken as the query: it moves
    after a ``--``, so ``sagashi search "-tag" --limit 5`` reads as
    ``sagashi search --limit 5 -- "-tag"``. Options keep working wherever they stand; an
    unknown ``--long`` word stays an unknown option, so a mistyped option is still reported
    as one.
    """

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self._query_after_dashes(ctx, args))

    def _query_after_dashes(self, ctx: Context, args: list[str]) -> list[str]:
        takes_value: set[str] = set()
        flags: set[str] = set()
        for param in self.get_params(ctx):
            if param.param_type_name == "option":
                names = [*param.opts, *param.secondary_opts]
                is_flag = getattr(param, "is_flag", False) or getattr(param, "count", False)
                (flags if is_flag else takes_value).update(names)
        kept: list[str] = []
        query: str | None = None
        index = 0
        while index < len(args):
            word = args[index]
            if word == "--":
                kept.extend(args[index:])
                break
            if word in takes_value:
                kept.extend(args[index : index + 2])
                index += 2
                continue
            if word.startswith("--") or word in flags or word.split("=", 1)[0] in takes_value:
                kept.append(word)
            elif (
                word.startswith("-")
                and len(word) > 1
                and query is None
                and not _has_positional(kept, takes_value)
            ):
                query = word
            else:
                kept.append(word)
            index += 1
        if query is None:
            return args
        if "--" in kept:
            at = kept.index("--")
            return [*kept[: at + 1], query, *kept[at + 1 :]]
        return [*kept, "--", query]


def _has_positional(kept: list[str], takes_value: set[str]) -> bool:
    """Whether a positional word was already kept (then a dash word is not the query)."""
    index = 0
    while index < len(kept):
        word = kept[index]
        if word in takes_value:
            index += 2
            continue
        if not word.startswith("-") or word == "-":
            return True
        index += 1
    return False


class SagashiTyper(typer.Typer):
    """A Typer whose commands are :class:`SagashiCommand` unless they name another class."""

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(name, cls=cls or SagashiCommand, **kwargs)
