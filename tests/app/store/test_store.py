"""The store on real SQLite and real PostgreSQL: schema, writes, aliases, FAISS files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import insert, select, text

from app.store import migrate, vectors
from app.store import repository as repo
from app.store.aliases import AliasError, canonical, load_aliases
from app.store.db import create_db_engine, session_factory
from app.store.job_records import JobRecorder, get_job
from app.store.models import Embedding, Image, ImageTag, Tag
from app.tagger.preprocess import Preprocess
from app.tagger.protocol import ModelInfo
from app.tagger.vocab import GROUP_CODE, TagVocabulary

INFO = ModelInfo(
    name="tiny",
    family="pixai",
    vocabulary_digest="d" * 64,
    embedding_dim=4,
    num_tags=5,
    preprocess=Preprocess(56, "stretch", "bilinear", (0.5,) * 3, (0.5,) * 3, "RGB"),
)
VOCAB = TagVocabulary(
    ("1girl", "doughnut", "donut", "hu_tao_(genshin_impact)", "amiya_(arknights)"),
    np.array([GROUP_CODE[g] for g in ("general",) * 3 + ("character",) * 2], dtype=np.int8),
    {"hu_tao_(genshin_impact)": ("genshin_impact",), "amiya_(arknights)": ("arknights",)},
)


def facts(path: str, sha: str = "a" * 64) -> repo.FileFacts:
    return repo.FileFacts(path, sha, 100, 1, 10, 20, "png")


def test_migrations_up_down_up(db_url: str) -> None:
    engine = create_db_engine(db_url)
    with pytest.raises(migrate.SchemaMismatch, match="not initialised; run 'sagashi db upgrade'"):
        migrate.check_schema(engine)
    migrate.upgrade(db_url)
    migrate.check_schema(engine)
    migrate.downgrade(db_url, "base")
    with engine.connect() as connection:
        assert connection.execute(text("select count(*) from alembic_version")).scalar() == 0
    migrate.upgrade(db_url)
    migrate.check_schema(engine)
    engine.dispose()


def test_the_scripted_head_is_alembics_head() -> None:
    # check_schema's fast path reads the head without Alembic; it must name the same one
    assert migrate.scripted_head() == migrate.head_revision() is not None


def test_database_older_than_the_code_is_refused(migrated_url: str) -> None:
    engine = create_db_engine(migrated_url)
    with engine.begin() as connection:
        connection.execute(text("update alembic_version set version_num = '0001'"))
    with pytest.raises(migrate.SchemaMismatch, match=r"\(0001\) is older than this code"):
        migrate.check_schema(engine)
    engine.dispose()


def test_database_newer_than_the_code_is_refused(migrated_url: str) -> None:
    engine = create_db_engine(migrated_url)
    with engine.begin() as connection:
        connection.execute(text("update alembic_version set version_num = 'ffff_future'"))
    with pytest.raises(migrate.SchemaMismatch, match="newer than this code"):
        migrate.check_schema(engine)
    engine.dispose()


def test_sqlite_is_in_wal_mode_with_16k_pages(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    migrate.upgrade(url)
    engine = create_db_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("pragma journal_mode")).scalar() == "wal"
        # set when the file is created, so a 2 KiB embedding fits in its page
        assert connection.execute(text("pragma page_size")).scalar() == 16384
    engine.dispose()


def test_a_job_heartbeat_never_waits_for_its_runs_open_transaction(migrated_url: str) -> None:
    """SQLite has one writer: a heartbeat from its own connection used to wait out the busy
    timeout behind the run's uncommitted batch, then fail the run as 'database is locked'."""
    engine = create_db_engine(migrated_url)
    recorder = JobRecorder(engine, "import", {"file": "x.jsonl"})
    sqlite = migrated_url.startswith("sqlite")
    with session_factory(engine)() as run:
        run.execute(insert(Tag).values(name="held", group=0, image_count=0))  # not committed
        assert recorder.progress(5, 10, 0) is not sqlite  # skipped on SQLite, written else
        run.commit()
    assert recorder.progress(6, 10, 0) is True
    job = get_job(engine, recorder.id)
    assert job is not None and (job.done, job.total) == (6, 10)
    if sqlite:  # the skipped heartbeat left its connection's busy timeout as it was
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 60000
    engine.dispose()


def test_aliases_normalise_stored_tags_and_merge_duplicates(migrated_url: str) -> None:
    engine = create_db_engine(migrated_url)
    aliases = load_aliases()
    assert canonical("doughnut", aliases) == "donut"
    with session_factory(engine)() as session:
        generation = repo.generation_for_index(session, INFO)
        tag_map = repo.TagMap.ensure(session, VOCAB, aliases)
        assert tag_map.has_duplicates
        probs = np.array([0.9, 0.6, 0.4, 0.8, 0.01], dtype=np.float32)
        tag_ids, scores = tag_map.postings(probs, floor=0.05)
        names = dict(session.execute(select(Tag.id, Tag.name)).all())
        got = {names[int(t)]: round(float(s), 4) for t, s in zip(tag_ids, scores, strict=True)}
        # doughnut (0.6) and donut (0.4) are one tag with the higher score; hu tao brings
        # genshin_impact with her score; amiya is under the floor, so no arknights.
        assert got == {
            "1girl": 0.9,
            "donut": 0.6,
            "hu_tao_(genshin_impact)": 0.8,
            "genshin_impact": 0.8,
        }
        assert "doughnut" not in names.values()
        groups = dict(session.execute(select(Tag.name, Tag.group)).all())
        assert groups["genshin_impact"] == GROUP_CODE["copyright"]
        embedding = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
        prediction = repo.StoredPrediction(tag_ids, scores, embedding)
        ids = repo.write_images(session, generation.id, [(facts("/x/a.png"), prediction, None)])
        session.commit()
        stored = session.execute(
            select(ImageTag.tag_id, ImageTag.score).where(ImageTag.image_id == ids[0])
        ).all()
        assert len(stored) == 4
        assert repo.index_version(session, generation.id) == 1
    engine.dispose()


def test_retag_replaces_postings_and_delete_removes_them(migrated_url: str) -> None:
    engine = create_db_engine(migrated_url)
    with session_factory(engine)() as session:
        generation = repo.generation_for_index(session, INFO)
        tag_map = repo.TagMap.ensure(session, VOCAB, {})
        first = repo.StoredPrediction(
            *tag_map.postings(np.array([0.9, 0, 0, 0, 0], np.float32), 0.05),
            np.ones(4, np.float32) / 2,
        )
        second = repo.StoredPrediction(
            *tag_map.postings(np.array([0, 0, 0.7, 0, 0], np.float32), 0.05),
            np.ones(4, np.float32) / 2,
        )
        [image_id] = repo.write_images(session, generation.id, [(facts("/x/a.png"), first, None)])
        repo.write_images(session, generation.id, [(facts("/x/a.png", "b" * 64), second, image_id)])
        session.commit()
        postings = session.execute(select(ImageTag.tag_id).where(ImageTag.image_id == image_id))
        donut = session.scalar(select(Tag.id).where(Tag.name == "donut"))
        assert [row[0] for row in postings] == [donut]
        repo.mark_deleted(session, [image_id])
        session.commit()
        assert session.scalar(select(Image.deleted_at).where(Image.id == image_id)) is not None
        assert session.scalar(select(text("count(*)")).select_from(ImageTag)) == 0
        assert session.scalar(select(text("count(*)")).select_from(Embedding)) == 0
    engine.dispose()


def test_one_live_row_per_path(migrated_url: str) -> None:
    from sqlalchemy.exc import IntegrityError

    engine = create_db_engine(migrated_url)
    with session_factory(engine)() as session:
        generation = repo.generation_for_index(session, INFO)
        prediction = repo.StoredPrediction(
            np.zeros(0, np.int64), np.zeros(0, np.float32), np.ones(4, np.float32) / 2
        )
        repo.write_images(session, generation.id, [(facts("/x/a.png"), prediction, None)])
        session.commit()
        with pytest.raises(IntegrityError):
            repo.write_images(session, generation.id, [(facts("/x/a.png"), prediction, None)])
        session.rollback()
    engine.dispose()


def test_a_different_model_is_refused(migrated_url: str) -> None:
    engine = create_db_engine(migrated_url)
    other = ModelInfo("other", "wd", "e" * 64, 4, 5, INFO.preprocess)
    with session_factory(engine)() as session:
        repo.generation_for_index(session, INFO)
        with pytest.raises(
            repo.GenerationMismatch, match="Use 'sagashi reindex --model-dir DIR' to switch models"
        ):
            repo.generation_for_index(session, other)
    engine.dispose()


def test_faiss_index_is_rebuilt_when_stale(migrated_url: str, tmp_path: Path) -> None:
    engine = create_db_engine(migrated_url)
    rng = np.random.default_rng(0)
    with session_factory(engine)() as session:
        generation = repo.generation_for_index(session, INFO)
        items = []
        for i in range(5):
            vector = rng.normal(size=4).astype(np.float32)
            vector /= np.linalg.norm(vector)
            empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
            items.append(
                (facts(f"/x/{i}.png", f"{i:064d}"), repo.StoredPrediction(*empty, vector), None)
            )
        ids = repo.write_images(session, generation.id, items)
        session.commit()
    index = vectors.load_fresh(engine, tmp_path, generation.id)
    assert index.meta.count == 5 and index.meta.kind == "flat"
    query = np.frombuffer(repo.encode_vector(items[2][1].embedding), dtype="<f2").astype(np.float32)
    scores, found = index.search(query[None, :], 1)
    assert found[0, 0] == ids[2]
    assert scores[0, 0] == pytest.approx(1.0, abs=2e-3)
    # Unchanged database: the file on disk is used as is.
    assert vectors.load_fresh(engine, tmp_path, generation.id).meta == index.meta
    with session_factory(engine)() as session:
        repo.mark_deleted(session, [ids[0]])
        session.commit()
    fresh = vectors.load_fresh(engine, tmp_path, generation.id)
    assert fresh.meta.count == 4
    assert fresh.meta.version > index.meta.version
    # A corrupt file is rebuilt, not trusted.
    index_path, _ = vectors.index_paths(tmp_path, generation.id)
    index_path.write_bytes(b"garbage")
    assert vectors.load_fresh(engine, tmp_path, generation.id).meta.count == 4
    engine.dispose()


def test_choose_kind_by_collection_size() -> None:
    assert vectors.choose_kind(99_999) == ("flat", {})
    kind, params = vectors.choose_kind(1_000_000)
    assert kind == "ivf" and params == {"nlist": 4000, "nprobe": 250, "codes": "fp16"}


def test_alias_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "aliases.csv"
    bad.write_text("a,b\nx,y\n")
    with pytest.raises(AliasError, match="needs columns antecedent_name,consequent_name"):
        load_aliases(bad)
    with pytest.raises(AliasError, match="unreadable alias file"):
        load_aliases(tmp_path / "missing.csv")
    good = tmp_path / "more.csv"
    good.write_text(
        "antecedent_name,consequent_name,status\nkitty,kitten,active\nkitten,cat,active\n"
        "old,new,deleted\n"
    )
    aliases = load_aliases(good)
    assert aliases["kitty"] == "cat"  # chains resolve
    assert "old" not in aliases


def test_empty_vocabulary_names_are_never_stored(migrated_url: str) -> None:
    """PixAI v0.9's real vocabulary has one empty tag name (index 8968)."""
    engine = create_db_engine(migrated_url)
    vocab = TagVocabulary(
        ("1girl", "", "solo"), np.array([GROUP_CODE["general"]] * 3, dtype=np.int8), {}
    )
    with session_factory(engine)() as session:
        tag_map = repo.TagMap.ensure(session, vocab, {})
        tag_ids, scores = tag_map.postings(np.array([0.9, 0.99, 0.5], np.float32), 0.05)
        names = set(session.scalars(select(Tag.name)).all())
    assert "" not in names
    assert len(tag_ids) == 2 and sorted(scores.tolist()) == [0.5, pytest.approx(0.9)]
    engine.dispose()


def _posting_keys(url: str) -> set[str]:
    from sqlalchemy import inspect

    engine = create_db_engine(url)
    try:
        return {fk["referred_table"] for fk in inspect(engine).get_foreign_keys("image_tags")}
    finally:
        engine.dispose()


def test_postings_keep_foreign_keys_on_sqlite_only_and_the_migration_reverses(
    migrated_url: str,
) -> None:
    from app.store import migrate

    all_keys = {"model_generations", "tags", "images"}
    sqlite = migrated_url.startswith("sqlite")
    assert _posting_keys(migrated_url) == (all_keys if sqlite else set())
    migrate.downgrade(migrated_url, "0004")
    assert _posting_keys(migrated_url) == all_keys
    migrate.upgrade(migrated_url)
    assert _posting_keys(migrated_url) == (all_keys if sqlite else set())
