"""Danbooru tag aliases: outdated names map to their current ones (doughnut -> donut).

Applied when tags are stored (so the index holds current names) and when queries are
parsed (so old names still find images). The package ships the subset that touches the
supported models' vocabularies; SAGASHI_ALIAS_FILE adds a full Danbooru alias dump.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from app.errors import SagashiError

PACKAGED = Path(__file__).resolve().parents[1] / "data" / "tag_aliases.csv"


class AliasError(SagashiError):
    """The alias file is unreadable or malformed."""

    http_status = 500
    error_code = "bad_aliases"


def load_aliases(extra: Path | None = None) -> dict[str, str]:
    aliases = _read(PACKAGED)
    if extra is not None:
        aliases.update(_read(extra))
    return _resolve_chains(aliases)


def _read(path: Path) -> dict[str, str]:
    """Two columns antecedent,consequent; Danbooru's dump (with a status column) also works."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = set(reader.fieldnames or ())
            if not {"antecedent_name", "consequent_name"} <= fields:
                raise AliasError(f"{path}: needs columns antecedent_name,consequent_name")
            return {
                row["antecedent_name"]: row["consequent_name"]
                for row in reader
                if row.get("status", "active") == "active"
            }
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AliasError(f"{path}: unreadable alias file ({exc})") from exc


def _resolve_chains(aliases: Mapping[str, str]) -> dict[str, str]:
    resolved: dict[str, str] = {}
    for name in aliases:
        seen = {name}
        target = aliases[name]
        while target in aliases and target not in seen:
            seen.add(target)
            target = aliases[target]
        if target != name:
            resolved[name] = target
    return resolved


def canonical(name: str, aliases: Mapping[str, str]) -> str:
    return aliases.get(name, name)
