"""images.md5: the digest Danbooru and its clients key files by, backfilled from the files

Adds a nullable, indexed ``md5`` to ``images`` and fills it for every live image by reading
its file once (sha256 and md5 from the same bytes): a file whose sha256 no longer matches
the stored one changed since it was indexed, and one that cannot be read is left empty, as
are rows imported without their files; 'sagashi index' fills those in when it next reads
them. 'sagashi db upgrade' shows the backfill as a progress bar (the caller's Alembic
config carries it as the ``progress`` attribute: ``progress(done, total)``).

Safe to run again after an interruption: the column and index are added only when missing
and only empty rows are read (on PostgreSQL the whole migration is one transaction anyway).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08

"""

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from alembic import op

from app.store.digests import Digests, of_file

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("sagashi.migrations")

BATCH = 1000
READERS = 4  # files read at once: the hashing releases the GIL, the disk likes a queue

Progress = Callable[[int, int], None]


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if "md5" not in {column["name"] for column in inspector.get_columns("images")}:
        op.add_column("images", sa.Column("md5", sa.String(length=32), nullable=True))
    if "ix_images_md5" not in {index["name"] for index in inspector.get_indexes("images")}:
        op.create_index(op.f("ix_images_md5"), "images", ["md5"], unique=False)
    config = op.get_context().config
    progress: Progress | None = config.attributes.get("progress") if config else None
    backfill(bind, progress)


def downgrade() -> None:
    op.drop_index(op.f("ix_images_md5"), table_name="images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("md5")


def backfill(bind: sa.Connection, progress: Progress | None) -> None:
    query = sa.text(
        "SELECT id, path, sha256 FROM images WHERE md5 IS NULL AND deleted_at IS NULL ORDER BY id"
    )
    rows: Rows = [(int(i), str(path), str(sha)) for i, path, sha in bind.execute(query)]
    total = len(rows)
    if progress is not None:
        progress(0, total)
    if not total:
        return
    update = sa.text("UPDATE images SET md5 = :md5 WHERE id = :id")
    done = unreadable = changed = 0
    for batch in _batches(rows):
        values = []
        for (image_id, _path, sha256), found in batch:
            if found is None:
                unreadable += 1
            elif found.sha256 != sha256:
                changed += 1
            else:
                values.append({"id": image_id, "md5": found.md5})
        if values:
            bind.execute(update, values)
        done += len(batch)
        if progress is not None:
            progress(done, total)
    if unreadable or changed:
        log.warning(
            "md5 left empty for %d images whose file cannot be read and %d whose file changed "
            "since it was indexed; 'sagashi index' fills them in when it reads them again",
            unreadable,
            changed,
        )


Rows = Sequence[tuple[int, str, str]]  # (id, path, sha256)


def _batches(rows: Rows) -> Iterator[list[tuple[tuple[int, str, str], Digests | None]]]:
    with ThreadPoolExecutor(READERS, thread_name_prefix="md5-backfill") as pool:
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            yield list(zip(chunk, pool.map(_digests, [row[1] for row in chunk]), strict=True))


def _digests(path: str) -> Digests | None:
    try:
        return of_file(path)
    except OSError:
        return None
