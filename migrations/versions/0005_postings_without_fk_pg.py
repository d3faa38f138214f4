"""image_tags on PostgreSQL: no foreign keys, so bulk loads are not throttled by per-row
trigger lookups

image_tags holds about 60 rows per image. On PostgreSQL each of its three foreign keys is
checked by a trigger per inserted row; measured on this project's bench machine, a COPY of
postings ran at 27k rows/s with them and 109k rows/s without (docs/benchmarks.md). The
store's writers insert postings only in the transaction that inserts or holds their image,
tag and generation, and delete them before those, so the keys guarded nothing the writers do
not. SQLite keeps its keys: there they cost about 4% and dropping one rebuilds the table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = (
    ("fk_image_tags_generation_id_model_generations", "generation_id", "model_generations"),
    ("fk_image_tags_tag_id_tags", "tag_id", "tags"),
    ("fk_image_tags_image_id_images", "image_id", "images"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _column, _table in KEYS:
        op.drop_constraint(name, "image_tags", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, column, table in KEYS:
        op.create_foreign_key(name, "image_tags", table, [column], ["id"])
