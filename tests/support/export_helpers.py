"""An index written through the repository from chosen scores, so every caption an export
writes is known exactly and no model is needed; and 'sagashi export' run in this process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import typer
from sqlalchemy import Engine
from typer.testing import CliRunner

from app.store import migrate
from app.store import repository as repo
from app.store.db import session_factory
from app.tagger.preprocess import Preprocess
from app.tagger.protocol import ModelInfo
from app.tagger.vocab import GROUP_CODE, TagVocabulary
from indexer.cli_export import EPILOG, export_command

NAMES = (
    "1girl",
    "long_hair",
    "twintails",
    "doughnut",
    "^_^",
    "hatsune_miku",
    "hu_tao_(genshin_impact)",
    "general",
    "sensitive",
)


GROUPS = ("general",) * 5 + ("character",) * 2 + ("rating",) * 2


VOCAB = TagVocabulary(
    NAMES,
    np.array([GROUP_CODE[g] for g in GROUPS], dtype=np.int8),
    {"hatsune_miku": ("vocaloid",), "hu_tao_(genshin_impact)": ("genshin_impact",)},
)


ALIASES = {"doughnut": "donut"}


INFO = ModelInfo(
    name="tiny-wd",
    family="wd",
    vocabulary_digest="e" * 64,
    embedding_dim=4,
    num_tags=len(NAMES),
    preprocess=Preprocess(56, "pad", "bicubic", (0.5,) * 3, (0.5,) * 3, "BGR"),
)


MIKU = {
    "hatsune_miku": 0.9,
    "1girl": 0.99,
    "long_hair": 0.8,
    "twintails": 0.5,
    "doughnut": 0.4,
    "^_^": 0.35,
    "general": 0.8,
    "sensitive": 0.3,
}


MIKU_CAPTION = "hatsune miku, vocaloid, 1girl, long hair, twintails, donut, ^_^\n"


# On the thresholds exactly: they are inclusive.
HU_TAO = {"hu_tao_(genshin_impact)": 0.75, "1girl": 0.3, "long_hair": 0.29}


# Nothing reaches a threshold: miku's 0.7 also gives vocaloid 0.7, under 0.75.
NOTHING = {"hatsune_miku": 0.7, "1girl": 0.2}


def add_images(engine: Engine, images: Mapping[Path | str, Mapping[str, float]]) -> list[int]:
    """Index the given paths with the given scores; real files where the path allows."""
    items = []
    with session_factory(engine)() as session:
        generation = repo.generation_for_index(session, INFO)
        tag_map = repo.TagMap.ensure(session, VOCAB, ALIASES)
        for n, (path, scores) in enumerate(images.items()):
            if os.path.isabs(path) and ".." not in str(path):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_bytes(b"")
            probs = np.zeros(len(NAMES), dtype=np.float32)
            for name, score in scores.items():
                probs[NAMES.index(name)] = score
            tag_ids, tag_scores = tag_map.postings(probs, floor=0.05)
            facts = repo.FileFacts(str(path), f"{n:064x}", 1, 1, 8, 8, "png")
            prediction = repo.StoredPrediction(tag_ids, tag_scores, np.full(4, 0.5, np.float32))
            items.append((facts, prediction, None))
        ids = repo.write_images(session, generation.id, items)
        session.commit()
    return ids


@cache
def export_app() -> typer.Typer:
    """A Typer app with the real 'export' command alone (built once: it holds no state)."""
    cli = typer.Typer(rich_markup_mode=None)

    @cli.callback()
    def main() -> None:
        """Sagashi."""

    cli.command("export", epilog=EPILOG)(export_command)
    return cli


@dataclass(frozen=True)
class ExportCli:
    """'sagashi export' through Typer's runner, on a migrated SQLite database (``url``)."""

    url: str
    data_dir: Path

    @classmethod
    def under(cls, root: Path) -> ExportCli:
        url = f"sqlite:///{root / 'sagashi.db'}"
        migrate.upgrade(url)
        return cls(url, root / "data")

    def __call__(self, *args: str) -> tuple[int, str]:
        """The exit code and the output (stdout and stderr) of ``sagashi export *args``."""
        env = {"SAGASHI_DATABASE_URL": self.url, "SAGASHI_DATA_DIR": str(self.data_dir)}
        result = CliRunner().invoke(export_app(), ["export", *args], env=env)
        return result.exit_code, result.output
