"""Reindex with another model side by side, resume, switch atomically; manage generations."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.store import vectors
from app.store.db import create_db_engine, session_factory
from app.store.models import Embedding, ImageTag, ModelGeneration
from app.tagger import TimmTagger
from indexer.pipeline import Indexer
from indexer.reindex import Reindexer, ReindexError, drop_generation, list_generations
from tests.support.index_helpers import make_image, small_options
from tests.support.tiny_models import build_tiny_pixai

OPTIONS = small_options(batch_size=3)


def loaded(directory: Path) -> TimmTagger:
    tagger = TimmTagger(directory, device="cpu")
    tagger.load()
    return tagger


@pytest.fixture(scope="module")
def pixai(tiny_pixai_dir: Path) -> TimmTagger:
    return loaded(tiny_pixai_dir)


@pytest.fixture(scope="module")
def wd(tiny_wd_dir: Path) -> TimmTagger:
    return loaded(tiny_wd_dir)


def states(url: str) -> dict[int, str]:
    engine = create_db_engine(url)
    with session_factory(engine)() as session:
        result = dict(session.execute(select(ModelGeneration.id, ModelGeneration.state)).all())
    engine.dispose()
    return result


def embeddings_in(url: str, generation_id: int) -> int:
    engine = create_db_engine(url)
    with session_factory(engine)() as session:
        count = session.scalar(select(func.count()).where(Embedding.generation_id == generation_id))
    engine.dispose()
    return int(count or 0)


class Interrupt(Exception):
    pass


def test_reindex_side_by_side_resume_and_switch(
    migrated_url: str, pixai: TimmTagger, wd: TimmTagger, tmp_path: Path
) -> None:
    root = tmp_path / "art"
    for i in range(10):
        make_image(root / f"{i}.png", seed=i)
    engine = create_db_engine(migrated_url)
    Indexer(engine, pixai, OPTIONS).run([root])
    assert states(migrated_url) == {1: "active"}

    def stop_after_nine(done: int, total: int) -> None:
        # Files read, not written: two batches of three are kept in flight, so the ninth
        # file's read is the first with a batch written behind it.
        if done >= 9:
            raise Interrupt

    with pytest.raises(Interrupt):
        Reindexer(engine, wd, OPTIONS, tmp_path / "data").run(stop_after_nine)
    # Interrupted: the old generation still serves; the new one holds the committed part.
    assert states(migrated_url) == {1: "active", 2: "building"}
    assert 0 < embeddings_in(migrated_url, 2) < 10
    assert embeddings_in(migrated_url, 1) == 10

    summary = Reindexer(engine, wd, OPTIONS, tmp_path / "data").run()
    assert summary.switched and summary.generation_id == 2
    assert summary.already_done + summary.retagged == 10
    assert states(migrated_url) == {1: "retired", 2: "active"}
    assert embeddings_in(migrated_url, 2) == 10
    index = vectors.load_fresh(engine, tmp_path / "data", 2)
    assert index.meta.count == 10 and index.meta.dim == 32
    with session_factory(engine)() as session:
        rating = session.scalar(
            select(func.count()).select_from(ImageTag).where(ImageTag.generation_id == 2)
        )
        assert rating and rating > 0

    # The old model no longer matches the index; drop the retired generation.
    from app.store.repository import GenerationMismatch

    with pytest.raises(GenerationMismatch):
        Indexer(engine, pixai, OPTIONS).run([root])
    rows = {row.id: row for row in list_generations(engine)}
    assert (rows[1].state, rows[1].images, rows[2].state, rows[2].images) == (
        "retired",
        10,
        "active",
        10,
    )
    with pytest.raises(ReindexError, match="generation 2 is active and serving searches"):
        drop_generation(engine, tmp_path / "data", 2)
    drop_generation(engine, tmp_path / "data", 1)
    assert states(migrated_url) == {2: "active"}
    assert embeddings_in(migrated_url, 1) == 0
    with pytest.raises(ReindexError, match="no generation 1"):
        drop_generation(engine, tmp_path / "data", 1)
    engine.dispose()


def test_unreadable_images_hold_the_switch_until_fixed(
    migrated_url: str, pixai: TimmTagger, wd: TimmTagger, tmp_path: Path
) -> None:
    root = tmp_path / "art"
    for i in range(4):
        make_image(root / f"{i}.png", seed=i)
    engine = create_db_engine(migrated_url)
    Indexer(engine, pixai, OPTIONS).run([root])
    (root / "2.png").unlink()
    summary = Reindexer(engine, wd, OPTIONS, tmp_path / "data").run()
    assert not summary.switched
    assert [(Path(p.path).name, p.code) for p in summary.failures] == [("2.png", "not_found")]
    assert states(migrated_url) == {1: "active", 2: "building"}
    Indexer(engine, pixai, OPTIONS).run([root])  # marks 2.png deleted
    finished = Reindexer(engine, wd, OPTIONS, tmp_path / "data").run()
    assert finished.switched and finished.retagged == 0 and finished.already_done == 3
    assert states(migrated_url) == {1: "retired", 2: "active"}
    engine.dispose()


def test_reindex_refuses_an_empty_index_and_a_second_model(
    migrated_url: str, pixai: TimmTagger, wd: TimmTagger, tmp_path: Path
) -> None:
    engine = create_db_engine(migrated_url)
    with pytest.raises(ReindexError, match="the index is empty; run 'sagashi index' first"):
        Reindexer(engine, wd, OPTIONS, tmp_path / "data").run()
    make_image(tmp_path / "art" / "0.png", seed=0)
    Indexer(engine, pixai, OPTIONS).run([tmp_path / "art"])
    (tmp_path / "art" / "0.png").unlink()
    Reindexer(engine, wd, OPTIONS, tmp_path / "data").run()  # leaves generation 2 building
    # A third model (PixAI layout, other weights) cannot start while the WD one is unfinished.
    third = loaded(build_tiny_pixai(tmp_path / "other", seed=3))
    with pytest.raises(ReindexError, match="another reindex \\(generation 2\\) is unfinished"):
        Reindexer(engine, third, OPTIONS, tmp_path / "data").run()
    engine.dispose()


def test_reindex_where_retags_only_the_matching_images_in_place(
    migrated_url: str, pixai: TimmTagger, wd: TimmTagger, tmp_path: Path
) -> None:
    from sqlalchemy import delete

    from app.query import QueryError
    from app.search.postings import PostingEngine
    from app.store.models import Image
    from tests.support.index_helpers import snapshot

    for folder in ("old", "new"):
        for i in range(4):
            make_image(
                tmp_path / "art" / folder / f"{i}.png", seed=i + (10 if folder == "new" else 0)
            )
    engine = create_db_engine(migrated_url)
    Indexer(engine, pixai, OPTIONS).run([tmp_path / "art"])
    before = snapshot(engine)
    with session_factory(engine)() as session:  # scores lost: as if tagged by a broken build
        everything = session.scalars(select(Image.id)).all()
        session.execute(delete(ImageTag).where(ImageTag.image_id.in_(everything)))
        session.commit()
        memory = PostingEngine.load(session, 1)
    summary = Reindexer(engine, pixai, OPTIONS, tmp_path / "data", where="path:*/new/*").run()
    assert (summary.retagged, summary.switched, summary.failures) == (4, False, [])
    after = snapshot(engine)
    for path, state in after.items():
        if "/new/" in path:
            assert state == before[path]  # the same model gives back the same scores
        else:
            assert state["tags"] == {} and state["vector"] == before[path]["vector"]
    assert states(migrated_url) == {1: "active"}
    with session_factory(engine)() as session:  # searches see the new scores
        assert len(memory.refresh(session).segments) == 2

    with pytest.raises(ReindexError, match="must re-tag every image"):
        Reindexer(engine, wd, OPTIONS, tmp_path / "data", where="path:*").run()
    for bad in ("path:*/new/* (", "similar:1", "order:random"):
        with pytest.raises(QueryError):
            Reindexer(engine, pixai, OPTIONS, tmp_path / "data", where=bad).run()
    engine.dispose()


def test_a_finished_reindex_records_every_image_done(
    tiny_pixai_dir: Path, tiny_wd_dir: Path, tmp_path: Path
) -> None:
    import json

    from tests.support.cli import run_sagashi

    for i in range(7):  # batches of 3: the last one is partial
        make_image(tmp_path / "art" / f"{i}.png", seed=i)
    env = {"SAGASHI_DATA_DIR": str(tmp_path / "data"), "SAGASHI_BATCH_SIZE": "3"}
    indexed = run_sagashi(
        "index", str(tmp_path / "art"), "--model-dir", str(tiny_pixai_dir), env=env
    )
    assert indexed.returncode == 0, indexed.stderr
    retagged = run_sagashi("reindex", "--model-dir", str(tiny_wd_dir), env=env)
    assert retagged.returncode == 0, retagged.stderr
    listed = run_sagashi("jobs", "list", env=env)
    jobs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(j["kind"], j["state"], j["done"], j["total"]) for j in jobs] == [
        ("reindex", "done", 7, 7),
        ("index", "done", 7, 7),
    ]
    for job in jobs:  # a run is created as it starts, never after
        assert job["created_at"] == job["started_at"], job
