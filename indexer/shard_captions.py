"""Caption sidecars of ``sagashi tag-dataset --captions``: one ``IMAGE-STEM.txt`` per tagged
image, made from the shard row's postings exactly as ``sagashi export --captions`` makes
them from the stored ones (:mod:`indexer.export`: the same thresholds, top-k, allow/deny
lists, tag rules and group order), in its mirror layout: ``OUT/captions/`` keeps the
folders below the sources' common folder (``/art/a/b.png`` -> ``OUT/captions/a/b.txt``).

Two images that would share a caption name (``b.png`` and ``b.jpg``) both get one, as in
the export: the first by path ``b.txt``, the other its whole file name, ``b.jpg.txt``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.store.roots import root_folder
from app.tagger.policy import TagScore
from app.tagger.vocab import GENERAL
from indexer.export import (
    CaptionOptions,
    Destination,
    Layout,
    caption_key,
    caption_text,
    os_problem,
    write_caption,
)
from indexer.export import Problem as ExportProblem
from indexer.scan import Problem

FOLDER = "captions"


def caption_renames(paths: Iterable[str]) -> dict[str, str]:
    """The caption key (path without ``.txt``) of each image whose stem another image has
    too, but the first by path: its whole file name, then ``NAME.2``, ... if taken."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for path in sorted(paths):
        by_key[caption_key(path)].append(path)
    taken = set(by_key)
    renames: dict[str, str] = {}
    for group in by_key.values():
        for path in group[1:]:
            candidate, number = path, 1
            while candidate in taken:
                number += 1
                candidate = f"{path}.{number}"
            taken.add(candidate)
            renames[path] = candidate
    return renames


def common_folder(sources: Sequence[Path]) -> str:
    """The deepest folder holding every source (a file source stands for its folder)."""
    return os.path.commonpath([root_folder(source) for source in sources])


@dataclass
class CaptionWriter:
    """Writes one shard row's caption where the mirror layout puts it."""

    destination: Destination
    options: CaptionOptions
    groups: dict[str, str]  # stored tag name -> group
    renames: dict[str, str]  # image path -> caption key, for names taken
    keys: set[str]  # the caption keys of the files found
    written: int = 0
    removed: int = 0

    @classmethod
    def create(
        cls,
        out: Path,
        sources: Sequence[Path],
        options: CaptionOptions,
        groups: dict[str, str],
        paths: Iterable[str],
    ) -> CaptionWriter:
        folder = out / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        destination = Destination(Layout.mirror, os.path.realpath(folder), common_folder(sources))
        paths = list(paths)
        renames = caption_renames(paths)
        keys = {renames.get(path) or caption_key(path) for path in paths}
        return cls(destination, options, groups, renames, keys)

    def text(self, row: dict[str, Any]) -> str:
        """The caption of a row (``tag``/``score`` lists as a shard holds them)."""
        tags = [
            TagScore(name, score, self.groups.get(name, GENERAL))
            for name, score in zip(row["tag"], row["score"], strict=True)
        ]
        return caption_text(tags, self.options)

    def write(self, row: dict[str, Any], overwrite: bool) -> Problem | None:
        """Write the caption of a row (``tag``/``score`` lists as a shard holds them); an
        existing one is kept unless ``overwrite``. Why it could not be, or None."""
        path = row["path"]
        key = self.renames.get(path) or caption_key(path)
        target = self.destination.target(path, key)
        if isinstance(target, ExportProblem):
            return Problem(target.path, target.code, target.message)
        try:
            self.written += write_caption(target, self.text(row), overwrite)
        except OSError as exc:
            problem = os_problem(path, exc)
            return Problem(path, problem.code, f"caption not written: {problem.message}")
        return None

    def remove(self, row: dict[str, Any]) -> None:
        """Remove the caption a vanished file's row was given, when it still holds that
        row's caption and no file found now is captioned under its name."""
        path = row["path"]
        for key in (caption_key(path), path):  # its own name, or the one a rename gave
            target = self.destination.target(path, key)
            if key in self.keys or isinstance(target, ExportProblem):
                continue
            try:
                with open(target, encoding="utf-8") as handle:
                    same = handle.read() == self.text(row)
                if same:
                    os.unlink(target)
                    self.removed += 1
            except OSError:
                continue  # not there (or not readable): nothing of this run's to remove
