"""What every ``sagashi`` command shares: settings, the one-line failure, the database and
the model. The command modules (:mod:`indexer.cli`, :mod:`indexer.cli_export`) import from
here, never from each other."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.logs import configure_logging
from app.settings import Settings
from app.store import migrate
from app.store.db import create_db_engine, database_url, safe_url
from app.store.migrate import check_schema
from indexer.jobs import first_line

if TYPE_CHECKING:  # torch and timm load only in the commands that run a model
    from app.tagger import Tagger

log = logging.getLogger("sagashi")


# Options two commands share (tag and export), defined once.
ContradictionsOption = Annotated[
    bool,
    typer.Option(
        help="Keep only the highest-scored tag's side of each rule of mutually exclusive "
        "tags (1girl against multiple_girls, ...)."
    ),
]
ExclusionsOption = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        help="Rules file of mutually exclusive tags [default: SAGASHI_EXCLUSION_FILE, "
        "else the shipped one].",
    ),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """One-line reason on stderr, non-zero exit."""
    typer.echo(f"sagashi: error: {message}", err=True)
    raise typer.Exit(code)


def load_settings(**overrides: object) -> Settings:
    try:
        values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        settings = Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        fail(f"invalid setting SAGASHI_{where.upper()}: {first['msg']}")
    configure_logging(settings.log_level)
    return settings


def load_tagger(settings: Settings, embeddings: bool = True) -> Tagger:
    """The model directory's tagger, on the runtime its layout needs (torch or ONNX Runtime);
    ``embeddings=False`` also admits a tag-only model (WD's own model.onnx)."""
    if settings.model_dir is None:
        fail("no model directory: pass --model-dir DIR or set SAGASHI_MODEL_DIR")
    from app.tagger.factory import tagger_from_settings

    return tagger_from_settings(settings, settings.model_dir, embeddings=embeddings)


def split_list(value: str | None) -> frozenset[str] | None:
    """Comma-separated tags, or @FILE with one tag per line."""
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read tag list {path}: {exc}")
        items = text.splitlines()
    else:
        items = value.split(",")
    return frozenset(i.strip() for i in items if i.strip())


def open_store(settings: Settings, create: bool = False) -> Engine:
    """The database engine, refusing a schema older or newer than this code; with
    ``create``, a database with nothing in it yet gets this code's schema first (the
    migrations, as 'sagashi db upgrade' runs them)."""
    url = database_url(settings)
    engine = create_db_engine(url)
    try:
        if not create:
            check_schema(engine)
        elif migrate.prepare_schema(engine, url):
            log.info("created the database %s (schema %s)", safe_url(url), migrate.head_revision())
    except SQLAlchemyError as exc:
        fail(f"cannot open the database {safe_url(url)}: {first_line(exc)}")
    return engine
