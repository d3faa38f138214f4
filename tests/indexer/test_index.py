"""The incremental indexer on real files, real databases and the tiny model."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from sqlalchemy import func, select

from app.store import migrate
from app.store.db import create_db_engine, session_factory
from app.store.models import Image
from app.tagger import TimmTagger
from indexer.pipeline import Indexer
from tests.support.cli import run_sagashi
from tests.support.index_helpers import make_image, small_options, snapshot


def indexer(url: str, tagger: TimmTagger) -> Indexer:
    return Indexer(create_db_engine(url), tagger, small_options())


def test_incremental_add_modify_move_delete(
    migrated_url: str, tagger: TimmTagger, tmp_path: Path
) -> None:
    root = tmp_path / "art"
    for i in range(6):
        make_image(root / f"{i}.png", seed=i)
    make_image(root / "sub" / "deep.png", seed=99)
    first = indexer(migrated_url, tagger).run([root])
    assert (first.new, first.unchanged, first.moved, first.deleted, first.failed) == (7, 0, 0, 0, 0)
    engine = create_db_engine(migrated_url)
    before = snapshot(engine)
    assert len(before) == 7
    assert all(state["tags"] for state in before.values())

    again = indexer(migrated_url, tagger).run([root])
    assert (again.new, again.modified, again.unchanged, again.moved, again.deleted) == (
        0,
        0,
        7,
        0,
        0,
    )
    assert snapshot(engine) == before

    make_image(root / "new.png", seed=50)  # added
    make_image(root / "1.png", seed=51)  # modified content
    os.rename(root / "2.png", root / "sub" / "moved.png")  # moved
    (root / "3.png").unlink()  # deleted
    os.utime(root / "4.png", ns=(1, 1))  # touched: same bytes, new mtime
    after = indexer(migrated_url, tagger).run([root])
    assert after.as_dict() == {
        "new": 1,
        "modified": 1,
        "unchanged": 4,
        "moved": 1,
        "deleted": 1,
        "failed": 0,
        "failed_by_reason": {},
    }
    state = snapshot(engine)
    assert set(state) == set(before) - {str(root / "2.png"), str(root / "3.png")} | {
        str(root / "new.png"),
        str(root / "sub" / "moved.png"),
    }
    moved = state[str(root / "sub" / "moved.png")]
    original = before[str(root / "2.png")]
    assert moved["id"] == original["id"] and moved["tags"] == original["tags"]
    assert moved["vector"] == original["vector"]
    assert state[str(root / "1.png")]["id"] == before[str(root / "1.png")]["id"]
    assert state[str(root / "1.png")]["sha256"] != before[str(root / "1.png")]["sha256"]
    with session_factory(engine)() as session:
        tombstones = session.scalar(select(func.count()).where(Image.deleted_at.is_not(None)))
        assert tombstones == 1
    engine.dispose()


def test_bad_files_are_recorded_and_the_run_goes_on(
    migrated_url: str, tagger: TimmTagger, tmp_path: Path
) -> None:
    root = tmp_path / "art"
    make_image(root / "good.png", seed=1)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "empty.png").write_bytes(b"")
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling.png").symlink_to(root / "nowhere.png")
    bad_name = os.fsencode(str(root)) + b"/caf\xe9.png"
    with open(bad_name, "wb") as handle:
        handle.write((root / "good.png").read_bytes())
    summary = indexer(migrated_url, tagger).run([root])
    reasons = {Path(p.path).name: p.code for p in summary.failures}
    assert summary.new == 1
    assert reasons == {
        "broken.jpg": "not_an_image",
        "empty.png": "empty",
        "loop": "symlink_loop",
        "dangling.png": "not_found",
        "caf\\xe9.png": "bad_name",
    }


run_cli = run_sagashi


def test_cli_refuses_an_unmigrated_database_then_indexes(
    db_url: str, tiny_pixai_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "art"
    for i in range(3):
        make_image(root / f"{i}.png", seed=i)
    env = {
        "SAGASHI_DATABASE_URL": db_url,
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
    }
    # reading commands never create the database ('index' and 'serve' do: test_first_use)
    refused = run_cli("search", "1girl", env=env)
    assert refused.returncode == 2
    assert (
        "sagashi: error: the database is not initialised; run 'sagashi db upgrade'"
        in refused.stderr
    )
    upgraded = run_cli("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    indexed = run_cli("index", str(root), "--json", env=env)
    assert indexed.returncode == 0, indexed.stderr
    assert json.loads(indexed.stdout)["new"] == 3
    assert (tmp_path / "data" / "faiss").is_dir()
    engine = create_db_engine(db_url)
    migrate.check_schema(engine)
    assert len(snapshot(engine)) == 3
    engine.dispose()

    (root / "broken.png").write_bytes(b"not a png")
    partial = run_cli("index", str(root), env=env)
    assert partial.returncode == 1
    jobs = [json.loads(line) for line in run_cli("jobs", "list", env=env).stdout.splitlines()]
    assert [(j["kind"], j["state"]) for j in jobs] == [("index", "done"), ("index", "done")]
    assert jobs[0]["summary"]["unchanged"] == 3 and jobs[0]["summary"]["failed"] == 1
    assert jobs[1]["summary"]["new"] == 3 and jobs[1]["done"] == 3
    shown = json.loads(run_cli("jobs", "show", str(jobs[0]["id"]), env=env).stdout)
    assert shown["failures"] == [
        {
            "path": str(root / "broken.png"),
            "code": "not_an_image",
            "message": "not a recognised image format",
        }
    ]
    missing = run_cli("jobs", "show", "999", env=env)
    assert missing.returncode == 2
    assert "sagashi: error: no job 999; see 'sagashi jobs list'" in missing.stderr


def test_a_second_writer_is_refused_while_one_runs(
    migrated_url: str, tiny_pixai_dir: Path, tmp_path: Path
) -> None:
    from app.store.locks import writer_lock

    make_image(tmp_path / "art" / "0.png", seed=0)
    env = {
        "SAGASHI_DATABASE_URL": migrated_url,
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
    }
    engine = create_db_engine(migrated_url)
    with writer_lock(engine):  # as a running index would hold it
        refused = run_cli("index", str(tmp_path / "art"), env=env)
    assert refused.returncode == 2
    assert (
        "sagashi: error: another index, import or reindex run is writing to this database; "
        "wait for it to finish (see 'sagashi jobs list')"
    ) in refused.stderr
    after = run_cli("index", str(tmp_path / "art"), env=env)  # released: runs normally
    assert after.returncode == 0, after.stderr
    engine.dispose()


def links_in_and_out(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A library folder ``art`` with links that stay in the library (to a file beside them,
    to the folder ``shelf`` indexed before) and links that leave it (to a file and a folder
    in ``outside``)."""
    shelf, art, outside = tmp_path / "shelf", tmp_path / "art", tmp_path / "outside"
    make_image(shelf / "kept.png", seed=1)
    make_image(art / "good.png", seed=2)
    make_image(outside / "secret.png", seed=3)
    make_image(outside / "deeper" / "more.png", seed=4)
    (art / "same.png").symlink_to(art / "good.png")
    (art / "shelf").symlink_to(shelf, target_is_directory=True)
    (art / "out.png").symlink_to(outside / "secret.png")
    (art / "outdir").symlink_to(outside, target_is_directory=True)
    return shelf, art, outside


def test_links_out_of_the_library_are_failures_not_images(
    migrated_url: str, tagger: TimmTagger, tmp_path: Path
) -> None:
    shelf, art, _outside = links_in_and_out(tmp_path)
    assert indexer(migrated_url, tagger).run([shelf]).new == 1  # shelf is a library root now
    summary = indexer(migrated_url, tagger).run([art])
    assert {Path(p.path).name: p.code for p in summary.failures} == {
        "out.png": "outside_library",
        "outdir": "outside_library",
    }
    assert summary.as_dict()["failed_by_reason"] == {"outside_library": 2}
    engine = create_db_engine(migrated_url)
    assert set(snapshot(engine)) == {
        str(shelf / "kept.png"),
        str(art / "good.png"),
        str(art / "same.png"),
        str(art / "shelf" / "kept.png"),
    }
    engine.dispose()


def test_media_roots_let_links_into_them_be_indexed(
    migrated_url: str, tagger: TimmTagger, tmp_path: Path
) -> None:
    _shelf, art, outside = links_in_and_out(tmp_path)
    base = indexer(migrated_url, tagger)
    options = replace(base.options, media_roots=(str(outside),))
    summary = Indexer(base.engine, tagger, options).run([art])
    assert [(Path(p.path).name, p.code) for p in summary.failures] == [
        ("shelf", "outside_library")  # neither indexed before nor a media root
    ]
    assert summary.new == 5
    assert str(art / "outdir" / "deeper" / "more.png") in snapshot(base.engine)
    without = base.run([art])  # no longer a media root: what the links led to is deleted
    assert (without.deleted, without.as_dict()["failed_by_reason"]) == (3, {"outside_library": 3})
    assert set(snapshot(base.engine)) == {str(art / "good.png"), str(art / "same.png")}
    base.engine.dispose()


def test_cli_reports_links_out_of_the_library(
    migrated_url: str, tiny_pixai_dir: Path, tmp_path: Path
) -> None:
    shelf, art, _outside = links_in_and_out(tmp_path)
    env = {
        "SAGASHI_DATABASE_URL": migrated_url,
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
    }
    # shelf was never indexed: outside too
    indexed = run_cli("index", str(art), "--json", env=env)
    assert indexed.returncode == 1, indexed.stderr
    for link in ("out.png", "outdir", "shelf"):
        assert f"failed: {art / link}: outside_library: symlink to " in indexed.stderr
    summary = json.loads(indexed.stdout)
    assert (summary["new"], summary["failed_by_reason"]) == (2, {"outside_library": 3})
    listed = [json.loads(line) for line in run_cli("jobs", "list", env=env).stdout.splitlines()]
    shown = json.loads(run_cli("jobs", "show", str(listed[0]["id"]), env=env).stdout)
    assert {(f["path"], f["code"]) for f in shown["failures"]} == {
        (str(art / "out.png"), "outside_library"),
        (str(art / "outdir"), "outside_library"),
        (str(art / "shelf"), "outside_library"),
    }
    engine = create_db_engine(migrated_url)
    assert set(snapshot(engine)) == {str(art / "good.png"), str(art / "same.png")}
    assert str(shelf) not in str(snapshot(engine))
    engine.dispose()


def test_a_file_replaced_by_a_moved_one_counts_as_deleted_beside_other_deletions(
    migrated_url: str, tagger: TimmTagger, tmp_path: Path
) -> None:
    root = tmp_path / "art"
    for i in range(3):
        make_image(root / f"{i}.png", seed=i)
    indexer(migrated_url, tagger).run([root])
    os.replace(root / "0.png", root / "1.png")  # 0's content moves onto 1's path
    (root / "2.png").unlink()
    after = indexer(migrated_url, tagger).run([root])
    assert (after.new, after.moved, after.deleted, after.unchanged) == (0, 1, 2, 0)
    live = snapshot(create_db_engine(migrated_url))
    assert list(live) == [str(root / "1.png")]
