"""The schema, as SQLAlchemy 2 typed models. Alembic migrations are generated from these.

Everything a search needs lives in the database, so one transaction makes an image, its
tags, its scores and its embedding visible together (or not at all). The FAISS index is
derived from the ``embeddings`` table and can always be rebuilt from it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ModelGeneration(Base):
    """One tagging of the collection by one model, vocabulary and preprocessing.

    Embeddings of different generations are never mixed in one FAISS index. Search serves
    the single ``active`` generation; a reindex builds a new one side by side.
    """

    __tablename__ = "model_generations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    family: Mapped[str] = mapped_column(String(40))
    vocabulary_digest: Mapped[str] = mapped_column(String(64))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    preprocess: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="building")  # building|active|retired
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        # at most one active generation
        Index(
            "uq_model_generations_active",
            "state",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
    )


class Image(Base):
    """A file in the collection. Moves keep the id; deletions keep the row, marked."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    # From the same bytes as sha256 (Danbooru's key); None for a row imported with a
    # given sha256 and no md5, or one whose file changed before migration 0006 read it.
    md5: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    generation_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_generations.id"), nullable=True
    )
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        # one live row per path; deleted rows may share a path with a later file
        Index(
            "uq_images_live_path",
            "path",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )


class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    group: Mapped[int] = mapped_column(SmallInteger)  # app.tagger.vocab.GROUPS index
    image_count: Mapped[int] = mapped_column(Integer, default=0)


class ImageTag(Base):
    """The inverted table. Clustered by (generation, tag, score, image) so the postings of
    one tag are read in score order and any threshold is a contiguous range. The foreign
    keys below exist on SQLite only: PostgreSQL checks each one per inserted row, which made
    bulk loads 4x slower (migration 0005)."""

    __tablename__ = "image_tags"

    generation_id: Mapped[int] = mapped_column(ForeignKey("model_generations.id"), primary_key=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id"), primary_key=True)
    score: Mapped[float] = mapped_column(Float(precision=24), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), primary_key=True)

    __table_args__ = (
        Index("ix_image_tags_image", "image_id", "generation_id"),
        {"sqlite_with_rowid": False},
    )


class Embedding(Base):
    """The store of record for embeddings: float16, L2-normalised, per generation."""

    __tablename__ = "embeddings"

    generation_id: Mapped[int] = mapped_column(ForeignKey("model_generations.id"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = ({"sqlite_with_rowid": False},)


class IndexState(Base):
    """A counter bumped by every write that changes embeddings of a generation, so a
    FAISS file can tell whether it is stale."""

    __tablename__ = "index_state"

    generation_id: Mapped[int] = mapped_column(ForeignKey("model_generations.id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class ImageChange(Base):
    """The change log: an image whose searchable state changed (indexed, re-tagged, moved,
    deleted), written in the same transaction as the change, so an in-memory posting engine
    can apply just those images. One writer at a time (the writer lock) keeps ``seq`` in
    commit order. Old entries are pruned; a reader that falls behind reloads in full."""

    __tablename__ = "image_changes"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    image_id: Mapped[int] = mapped_column(Integer)


class LibraryRoot(Base):
    """A folder 'sagashi index' was run on. Files are served only from inside these (and
    SAGASHI_MEDIA_ROOTS), so a path in the database can never expose the rest of the disk."""

    __tablename__ = "library_roots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Job(Base):
    """Index runs and queued admin jobs, with their progress."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # index|reindex|import|rebuild_faiss
    params: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    state: Mapped[str] = mapped_column(String(16), default="queued")
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # cli: a command's own run; queue: queued through the API for 'sagashi worker'
    origin: Mapped[str] = mapped_column(String(8), default="cli", server_default="cli")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class JobFailure(Base):
    """A file a job could not index, with the reason; reported in the job's summary."""

    __tablename__ = "job_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    code: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
