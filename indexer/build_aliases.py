"""Regenerate app/data/tag_aliases.csv, the alias subset Sagashi ships.

    cd ../shared/data && python -m indexer.build_aliases \
        aliases/danbooru_tag_aliases_2025-05-01.csv \
        tags/pixai_v0.9_tags_v0.9_13k.json tags/wd_v3_selected_tags.csv

Keeps Danbooru's active aliases whose antecedent or consequent is in a supported model's
vocabulary: outdated names the models emit (48 in PixAI v0.9, 104 in WD v3, such as
doughnut -> donut) and old names users may type for tags the models know.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[1] / "app" / "data" / "tag_aliases.csv"
log = logging.getLogger(__name__)


def vocabulary(path: Path) -> set[str]:
    if path.suffix == ".json":
        return set(json.loads(path.read_text(encoding="utf-8"))["tag_map"])
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["name"] for row in csv.DictReader(handle)}


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    aliases_path, *vocab_paths = (Path(a) for a in argv)
    names: set[str] = set().union(*(vocabulary(p) for p in vocab_paths))
    with aliases_path.open(newline="", encoding="utf-8") as handle:
        rows = sorted(
            (r["antecedent_name"], r["consequent_name"])
            for r in csv.DictReader(handle)
            if r["status"] == "active"
            and (r["antecedent_name"] in names or r["consequent_name"] in names)
        )
    with OUTPUT.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["antecedent_name", "consequent_name"])
        writer.writerows(rows)
    log.info("wrote %d aliases to %s", len(rows), OUTPUT)


if __name__ == "__main__":
    main(sys.argv[1:])
