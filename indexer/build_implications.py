"""Regenerate app/data/tag_implications.csv, the implication subset Sagashi ships.

    cd ../shared/data && python -m indexer.build_implications \
        aliases/danbooru_tag_implications_2025-05-01.csv \
        aliases/danbooru_tag_aliases_2025-05-01.csv \
        tags/pixai_v0.9_tags_v0.9_13k.json tags/wd_v3_selected_tags.csv

Keeps Danbooru's active implications that lie on a path from one tag of a supported model's
vocabulary (its name put through the alias table, as the index stores it) to another: an
edge ``a -> b`` is kept when ``a`` is such a tag or implied by one, and ``b`` is such a tag
or implies one. So chains through tags the models do not know (``a -> x -> b``) survive,
and the table answers for every vocabulary tag exactly what the whole dump answers.
Written as the alias subset is: two columns, sorted.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from pathlib import Path

from indexer.build_aliases import vocabulary

OUTPUT = Path(__file__).resolve().parents[1] / "app" / "data" / "tag_implications.csv"
log = logging.getLogger(__name__)


def reachable(starts: Iterable[str], graph: Mapping[str, set[str]]) -> set[str]:
    seen = set(starts)
    queue = deque(seen)
    while queue:
        for node in graph.get(queue.popleft(), ()):
            if node not in seen:
                seen.add(node)
                queue.append(node)
    return seen


def subset(edges: list[tuple[str, str]], names: set[str]) -> list[tuple[str, str]]:
    down: dict[str, set[str]] = defaultdict(set)
    up: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        down[a].add(b)
        up[b].add(a)
    from_vocab = reachable(names, down)  # vocabulary tags and what they imply
    to_vocab = reachable(names, up)  # vocabulary tags and what implies them
    return sorted({(a, b) for a, b in edges if a in from_vocab and b in to_vocab})


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    implications_path, aliases_path, *vocab_paths = (Path(a) for a in argv)
    with aliases_path.open(newline="", encoding="utf-8") as handle:
        aliases = {
            r["antecedent_name"]: r["consequent_name"]
            for r in csv.DictReader(handle)
            if r["status"] == "active"
        }
    names = {aliases.get(n, n) for p in vocab_paths for n in vocabulary(p)}
    with implications_path.open(newline="", encoding="utf-8") as handle:
        edges = [
            (r["antecedent_name"], r["consequent_name"])
            for r in csv.DictReader(handle)
            if r["status"] == "active"
        ]
    rows = subset(edges, names)
    with OUTPUT.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["antecedent_name", "consequent_name"])
        writer.writerows(rows)
    log.info("wrote %d of %d active implications to %s", len(rows), len(edges), OUTPUT)


if __name__ == "__main__":
    main(sys.argv[1:])
