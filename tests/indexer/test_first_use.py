"""A first run as a new user makes it: 'sagashi index' and 'sagashi serve' on a data folder
with no database yet create it (the migrations, as 'sagashi db upgrade' runs them), while a
database of an older or newer schema is still refused with its reason; a server without a
model never imports torch and stays small."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from app.store import migrate
from app.store.db import create_db_engine
from tests.support.cli import run_sagashi
from tests.support.index_helpers import make_image
from tests.support.network import free_port
from tests.support.serve_helpers import serving

HEAD = migrate.scripted_head()


def environment(root: Path, url: str | None, **extra: str) -> dict[str, str]:
    values = {"SAGASHI_DATA_DIR": str(root / "data"), "SAGASHI_WORKERS": "1", **extra}
    if url is not None:
        values["SAGASHI_DATABASE_URL"] = url
    return values


def schema_of(url: str) -> list[str]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version"))
            return [row[0] for row in rows]
    finally:
        engine.dispose()


def test_index_creates_the_database_on_first_use(
    db_url: str, tiny_pixai_dir: Path, tmp_path: Path
) -> None:
    for i in range(3):
        make_image(tmp_path / "art" / f"{i}.png", seed=i)
    env = environment(tmp_path, db_url, SAGASHI_MODEL_DIR=str(tiny_pixai_dir))
    first = run_sagashi("index", str(tmp_path / "art"), env=env)
    assert first.returncode == 0, first.stderr
    assert "INFO sagashi: created the database" in first.stderr
    assert f"(schema {HEAD})" in first.stderr
    assert schema_of(db_url) == [HEAD]
    found = run_sagashi("search", "", env=env)
    assert sorted(Path(p).name for p in found.stdout.split()) == ["0.png", "1.png", "2.png"]
    # the second run finds the database and says nothing about creating it
    again = run_sagashi("index", str(tmp_path / "art"), env=env)
    assert again.returncode == 0, again.stderr
    assert "created the database" not in again.stderr


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ("older", "the database schema (0004) is older than this code"),
        ("newer", "the database schema (ffffffff) is newer than this code"),
        ("foreign", "the database is not initialised; run 'sagashi db upgrade'"),
    ],
)
def test_an_existing_database_of_another_schema_is_still_refused(
    db_url: str, tiny_pixai_dir: Path, tmp_path: Path, state: str, reason: str
) -> None:
    engine = create_db_engine(db_url)
    if state == "foreign":  # tables, but no Sagashi version: never migrated over
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY)"))
    else:
        migrate.upgrade(db_url, "0004" if state == "older" else "head")
        if state == "newer":
            with engine.begin() as connection:
                connection.execute(text("UPDATE alembic_version SET version_num = 'ffffffff'"))
    before = schema_of(db_url) if state != "foreign" else None
    make_image(tmp_path / "art" / "0.png", seed=0)
    env = environment(tmp_path, db_url, SAGASHI_MODEL_DIR=str(tiny_pixai_dir))
    for command in (["index", str(tmp_path / "art")], ["serve", "--port", str(free_port())]):
        refused = run_sagashi(*command, env=env)
        assert refused.returncode == 2, refused.stderr
        errors = [line for line in refused.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith(f"sagashi: error: {reason}"), errors
        assert "created the database" not in refused.stderr
    if before is not None:
        assert schema_of(db_url) == before  # nothing was migrated behind the user's back
    engine.dispose()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def mapped_torch(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in maps if "torch" in line.split()[-1]})


def test_serve_creates_the_database_and_serves_without_torch(tmp_path: Path) -> None:
    env = environment(tmp_path, None)
    with serving(tmp_path, env) as served:
        base, pid = served.base, served.process.pid
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["checks"]["index"] == "empty"
        assert ready["checks"]["engine"] == "segments"
        assert ready["checks"]["model"].startswith("none ")
        assert httpx.get(f"{base}/api/search").json()["count"] == 0
        assert mapped_torch(pid) == []
    assert schema_of(f"sqlite:///{tmp_path / 'data' / 'sagashi.db'}") == [HEAD]
    assert "created the database" in (tmp_path / "serve.log").read_text()


def test_serve_without_a_model_never_loads_torch_and_stays_small(
    tiny_pixai_dir: Path, tmp_path: Path
) -> None:
    for i in range(8):
        make_image(tmp_path / "art" / f"{i}.png", seed=i)
    indexed = run_sagashi(
        "index",
        str(tmp_path / "art"),
        env=environment(tmp_path, None, SAGASHI_MODEL_DIR=str(tiny_pixai_dir)),
    )
    assert indexed.returncode == 0, indexed.stderr
    with serving(tmp_path, environment(tmp_path, None)) as served:
        base, pid = served.base, served.process.pid
        ready = httpx.get(f"{base}/readyz").json()["checks"]
        assert ready["index"] == "8 images" and ready["vectors"] == "flat, 8 vectors"
        hits = httpx.get(f"{base}/api/search", params={"q": "order:id"}).json()["items"]
        similar = httpx.post(f"{base}/api/similar", json={"image_id": hits[0]["id"]})
        assert similar.status_code == 200 and len(similar.json()["items"]) == 7
        image = (tmp_path / "art" / "0.png").read_bytes()
        upload = httpx.post(f"{base}/api/similar", files={"file": ("a.png", image)})
        # no model: the upload is refused, and torch still stays out
        assert upload.status_code == 503 and upload.json()["error"]["code"] == "model_unavailable"
        assert mapped_torch(pid) == []
        assert rss_kib(pid) < 200 * 1024, rss_kib(pid)


def test_import_and_worker_create_the_database_on_first_use(tmp_path: Path) -> None:
    from tests.support.import_records import record, write_jsonl

    file = write_jsonl(tmp_path / "p.jsonl", [record(0), record(1)])
    imported = run_sagashi("import", str(file), "--json", env=environment(tmp_path / "a", None))
    assert imported.returncode == 0, imported.stderr
    assert "INFO sagashi: created the database" in imported.stderr
    assert json.loads(imported.stdout)["new"] == 2
    worked = run_sagashi("worker", "--once", env=environment(tmp_path / "b", None))
    assert worked.returncode == 0, worked.stderr
    assert "INFO sagashi: created the database" in worked.stderr
    assert "INFO sagashi: worker ran 0 jobs" in worked.stderr
    assert schema_of(f"sqlite:///{tmp_path / 'b' / 'data' / 'sagashi.db'}") == [HEAD]
