"""Database engines: SQLite (default, a WAL-mode file in the data directory) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings

SQLITE_FILE = "sagashi.db"


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return normalise_url(settings.database_url)
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / SQLITE_FILE).resolve()}"


def normalise_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use psycopg 3, the driver Sagashi ships with."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_db_engine(url: str, statement_timeout: float | None = None, **kwargs: Any) -> Engine:
    """An engine; on PostgreSQL ``statement_timeout`` (seconds) caps every statement, so one
    pathological query cannot hold a pooled connection (the server sets it; writers don't)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": 10}
    if statement_timeout:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    if "options" in parsed.query and "options" in connect_args:
        # a URL that sets options itself (a search_path, say) keeps them, plus the timeout
        connect_args["options"] = f"{parsed.query['options']} {connect_args['options']}"
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        pool_timeout=10,
        connect_args=connect_args,
        **kwargs,
    )


SQLITE_PAGE_SIZE = 16384


def sqlite_page_size(dbapi_connection: Any, _record: Any = None) -> None:
    """Takes effect only on a new, empty file (a no-op on others), so the migrations'
    engine sets it too: they create the file. 16 KiB pages hold a 1024-d float16
    embedding (2 KiB) inline, where 4 KiB pages spill each into an overflow page."""
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
    cursor.close()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    sqlite_page_size(dbapi_connection)
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the indexer's writer; NORMAL is durable at checkpoints and
    # never corrupts on power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)
