"""Tag vocabularies: which output index is which tag, in which group.

Three published formats: PixAI's ``tags_v0.9_13k.json`` (+ ``char_ip_map.json``), WD v3's
``selected_tags.csv``, and the ONNX exports' ``selected_tags.csv`` (+ ``categories.json``),
whose ``ips`` column lists each character's copyrights as JSON. All load into the same
:class:`TagVocabulary`.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.tagger.errors import ModelLoadError

GENERAL, CHARACTER, COPYRIGHT, RATING = "general", "character", "copyright", "rating"
GROUPS: tuple[str, ...] = (GENERAL, CHARACTER, COPYRIGHT, RATING)
GROUP_CODE = {name: code for code, name in enumerate(GROUPS)}

# WD's selected_tags.csv category numbers (Danbooru's, plus 9 for rating).
_WD_CATEGORIES = {0: GENERAL, 4: CHARACTER, 9: RATING}


@dataclass(frozen=True, eq=False)
class TagVocabulary:
    """Output index -> tag name and group, plus the character -> copyright map."""

    names: tuple[str, ...]
    group_codes: np.ndarray = field(repr=False)
    char_to_copyrights: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.group_codes):
            raise ValueError("names and groups differ in length")

    def __len__(self) -> int:
        return len(self.names)

    def group(self, index: int) -> str:
        return GROUPS[int(self.group_codes[index])]

    def indices(self, group: str) -> np.ndarray:
        return np.flatnonzero(self.group_codes == GROUP_CODE[group])

    @property
    def has_ratings(self) -> bool:
        return bool((self.group_codes == GROUP_CODE[RATING]).any())

    def digest(self) -> str:
        """A stable hash of names, groups and copyright map: identifies a vocabulary."""
        h = hashlib.sha256()
        for name, code in zip(self.names, self.group_codes.tolist(), strict=True):
            h.update(f"{code}\t{name}\n".encode())
        for char in sorted(self.char_to_copyrights):
            h.update(f"ip\t{char}\t{','.join(self.char_to_copyrights[char])}\n".encode())
        return h.hexdigest()


def load_pixai_vocabulary(tags_path: Path, char_ip_path: Path | None) -> TagVocabulary:
    raw = _read_json(tags_path)
    tag_map = raw.get("tag_map") if isinstance(raw, dict) else None
    split = raw.get("tag_split") if isinstance(raw, dict) else None
    if not isinstance(tag_map, dict) or not tag_map:
        raise ModelLoadError(f"{tags_path}: no 'tag_map' object (tag name -> output index)")
    if not isinstance(split, dict) or not isinstance(split.get("gen_tag_count"), int):
        raise ModelLoadError(f"{tags_path}: no integer 'tag_split.gen_tag_count'")
    size = len(tag_map)
    names: list[str | None] = [None] * size
    for name, index in tag_map.items():
        if not isinstance(index, int) or not 0 <= index < size or names[index] is not None:
            raise ModelLoadError(
                f"{tags_path}: tag_map indices must be 0..{size - 1}, each once; "
                f"{name!r} has {index!r}"
            )
        names[index] = name
    general_count = split["gen_tag_count"]
    if not 0 <= general_count <= size:
        raise ModelLoadError(f"{tags_path}: gen_tag_count {general_count} outside 0..{size}")
    codes = np.full(size, GROUP_CODE[CHARACTER], dtype=np.int8)
    codes[:general_count] = GROUP_CODE[GENERAL]
    char_map = _load_char_ip_map(char_ip_path) if char_ip_path else {}
    return TagVocabulary(tuple(n for n in names if n is not None), codes, char_map)


def load_wd_vocabulary(csv_path: Path) -> TagVocabulary:
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"name", "category"} - set(reader.fieldnames or ())
            if missing:
                raise ModelLoadError(
                    f"{csv_path}: missing column(s) {', '.join(sorted(missing))}; "
                    "expected tag_id,name,category,count"
                )
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ModelLoadError(f"{csv_path}: unreadable ({exc})") from exc
    if not rows:
        raise ModelLoadError(f"{csv_path}: no tags")
    names: list[str] = []
    codes = np.empty(len(rows), dtype=np.int8)
    for line, row in enumerate(rows, start=2):
        try:
            group = _WD_CATEGORIES[int(row["category"])]
        except (KeyError, ValueError, TypeError):
            raise ModelLoadError(
                f"{csv_path}:{line}: category {row.get('category')!r} is not 0, 4 or 9"
            ) from None
        codes[len(names)] = GROUP_CODE[group]
        names.append(row["name"])
    return TagVocabulary(tuple(names), codes, {})


_GROUP_NAMES = {GENERAL: GENERAL, CHARACTER: CHARACTER, RATING: RATING, COPYRIGHT: COPYRIGHT}


def load_categories(path: Path) -> dict[int, str]:
    """``categories.json``: ``[{"category": 0, "name": "general"}, ...]`` -> number: group."""
    raw = _read_json(path)
    if not isinstance(raw, list) or not raw:
        raise ModelLoadError(f'{path}: expected a list of {{"category": N, "name": ...}}')
    result: dict[int, str] = {}
    for item in raw:
        number = item.get("category") if isinstance(item, dict) else None
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(number, int) or not isinstance(name, str):
            raise ModelLoadError(f"{path}: {item!r} needs an integer 'category' and a 'name'")
        if name not in _GROUP_NAMES:
            raise ModelLoadError(
                f"{path}: category {number} is named {name!r}; known: {', '.join(_GROUP_NAMES)}"
            )
        result[number] = _GROUP_NAMES[name]
    return result


def load_onnx_vocabulary(csv_path: Path, categories: dict[int, str]) -> TagVocabulary:
    """An ONNX export's ``selected_tags.csv``: ``name``, ``category`` and ``ips`` columns."""
    rows = _read_csv(csv_path, {"name", "category"})
    names: list[str] = []
    codes = np.empty(len(rows), dtype=np.int8)
    char_map: dict[str, tuple[str, ...]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            group = categories[int(row["category"])]
        except (KeyError, ValueError, TypeError):
            raise ModelLoadError(
                f"{csv_path}:{line}: category {row.get('category')!r} is not one of "
                f"{sorted(categories)} (categories.json)"
            ) from None
        codes[len(names)] = GROUP_CODE[group]
        names.append(row["name"])
        ips = _ips(row.get("ips"), csv_path, line)
        if ips:
            char_map[row["name"]] = ips
    return TagVocabulary(tuple(names), codes, char_map)


def _ips(cell: str | None, path: Path, line: int) -> tuple[str, ...]:
    if cell is None or cell.strip() == "":
        return ()
    try:
        value = json.loads(cell)
    except json.JSONDecodeError:
        # imgutils reads the column with json.loads; pandas writes a list column as its
        # Python repr, so accept that literal form too (literal_eval evaluates no code).
        try:
            value = ast.literal_eval(cell)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ModelLoadError(f"{path}:{line}: ips {cell!r} is not a JSON list") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelLoadError(f"{path}:{line}: ips {cell!r} is not a JSON list of strings")
    return tuple(value)


def load_thresholds(path: Path, categories: dict[int, str]) -> dict[str, float]:
    """``thresholds.csv`` (``category,name,threshold``): the export's defaults, per group."""
    result: dict[str, float] = {}
    for line, row in enumerate(_read_csv(path, {"category", "threshold"}), start=2):
        try:
            group = categories[int(row["category"])]
            value = float(row["threshold"])
        except (KeyError, ValueError, TypeError):
            raise ModelLoadError(
                f"{path}:{line}: expected a known category and a number, got {row!r}"
            ) from None
        if not 0.0 <= value <= 1.0:
            raise ModelLoadError(f"{path}:{line}: threshold {value} outside 0..1")
        result.setdefault(group, value)
    return result


def _read_csv(path: Path, required: set[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = required - set(reader.fieldnames or ())
            if missing:
                raise ModelLoadError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ModelLoadError(f"{path}: unreadable ({exc})") from exc
    if not rows:
        raise ModelLoadError(f"{path}: no rows")
    return rows


def _load_char_ip_map(path: Path) -> dict[str, tuple[str, ...]]:
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected an object of character -> [copyright, ...]")
    result: dict[str, tuple[str, ...]] = {}
    for char, ips in raw.items():
        if isinstance(ips, str):
            ips = [ips]
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise ModelLoadError(f"{path}: {char!r} must map to a list of copyright tags")
        result[char] = tuple(ips)
    return result


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: unreadable JSON ({exc})") from exc
