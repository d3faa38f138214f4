"""The end-of-run summary of ``index``, ``import`` and ``reindex``: a small table on stderr
for a person, or one JSON object on stdout with ``--json`` for a script."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

import typer

# Counts by reason, shown beside the count they break down.
_BREAKDOWNS = {"failed_by_reason": "failed"}


def report(
    heading: str, job_id: int, seconds: float, summary: Mapping[str, object], as_json: bool
) -> None:
    """Print the summary of a finished run (the job's own record holds the same)."""
    if as_json:
        record = {"job": job_id, "seconds": round(seconds, 3), **summary}
        sys.stdout.write(json.dumps(record) + "\n")
        return
    typer.echo(render(f"{heading} in {seconds:.1f}s (job {job_id})", summary), err=True)


def render(heading: str, summary: Mapping[str, object]) -> str:
    """``heading``, then one aligned row per count: its name, the number, and for a count
    broken down by reason (failed), the reasons by frequency."""
    notes: dict[str, str] = {}
    for key, total in _BREAKDOWNS.items():
        reasons = summary.get(key)
        if isinstance(reasons, Mapping) and reasons:
            ranked = sorted(reasons.items(), key=lambda item: (-int(item[1]), str(item[0])))
            notes[total] = ", ".join(f"{reason} {count}" for reason, count in ranked)
    rows = [(str(k), _value(v)) for k, v in summary.items() if k not in _BREAKDOWNS]
    name_width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    lines = [heading]
    for name, value in rows:
        line = f"  {name.replace('_', ' '):<{name_width}}  {value:>{value_width}}"
        lines.append(f"{line}  ({notes[name]})" if name in notes else line)
    return "\n".join(lines)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
