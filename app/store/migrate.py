"""Alembic, driven from code: ``sagashi db upgrade`` and the version check every command runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from app.errors import SagashiError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

# Alembic (and Mako and Pygments behind it) costs about 0.15 s to import and to read the
# scripts: most of a one-shot `sagashi search`. The check every command runs reads the
# revision identifiers from the scripts' own assignment lines instead, and hands anything
# unusual (no single head, no version table, a mismatch) to Alembic itself.
_REVISION = re.compile(r'^revision(?::[^=]*)? = "([^"]+)"', re.MULTILINE)
_DOWN = re.compile(r'^down_revision(?::[^=]*)? = (?:None|"([^"]+)")', re.MULTILINE)


class SchemaMismatch(SagashiError):
    """The database's schema revision is not the one this code expects."""

    http_status = 503
    error_code = "schema_mismatch"


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def scripted_head() -> str | None:
    """The head revision read from the scripts' assignments without Alembic; None unless
    they form one linear chain with one head (tests keep it equal to ``head_revision``)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        source = script.read_text(encoding="utf-8")
        revision, down = _REVISION.search(source), _DOWN.search(source)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        if down.group(1):
            parents.add(down.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _stored_revisions(engine: Engine) -> list[str] | None:
    """The rows of Alembic's version table; None when it cannot be read (no table yet)."""
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version"))
            return [row[0] for row in rows]
    except DBAPIError:
        return None


def _is_current(engine: Engine) -> bool:
    """The check every command runs, without Alembic: the version table holds the head."""
    head = scripted_head()
    return head is not None and _stored_revisions(engine) == [head]


# A migration that works through every image (0006's md5 backfill) reports (done, total).
MigrationProgress = Callable[[int, int], None]


def upgrade(url: str, revision: str = "head", progress: MigrationProgress | None = None) -> None:
    from alembic import command

    config = alembic_config(url)
    if progress is not None:
        config.attributes["progress"] = progress
    command.upgrade(config, revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def is_new(engine: Engine) -> bool:
    """Whether the database holds nothing yet: no table but (maybe) an empty version table,
    as a fresh SQLite file, a new PostgreSQL database or schema, or one migrated down to
    base leaves it."""
    tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    return not tables and not _stored_revisions(engine)


def prepare_schema(engine: Engine, url: str) -> bool:
    """Create this code's schema on a new database (True), or check an existing one as
    :func:`check_schema` does: an older or newer schema is still refused with its reason."""
    if _is_current(engine):
        return False
    if is_new(engine):
        upgrade(url)
        check_schema(engine)
        return True
    check_schema(engine)
    return False


def check_schema(engine: Engine) -> None:
    """Refuse a database older or newer than the code, saying what to do."""
    if _is_current(engine):
        return
    from alembic.script import ScriptDirectory

    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaMismatch("the database is not initialised; run 'sagashi db upgrade'")
    known = {s.revision for s in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}
    if current in known:
        raise SchemaMismatch(
            f"the database schema ({current}) is older than this code ({head}); "
            "run 'sagashi db upgrade'"
        )
    raise SchemaMismatch(
        f"the database schema ({current}) is newer than this code ({head}); "
        "upgrade Sagashi, or restore a matching backup"
    )
