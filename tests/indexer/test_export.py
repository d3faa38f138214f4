"""Caption export on the real store (SQLite and PostgreSQL) and real files.

The index is written through the repository directly, from chosen scores, so every
caption is known exactly and no model is needed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from app.store import repository as repo
from app.store.db import create_db_engine, session_factory
from app.store.models import Image
from indexer.export import (
    CaptionOptions,
    EmptyIndexError,
    ExportSummary,
    Layout,
    export_captions,
    parse_order,
    tag_names,
)
from tests.support.export_helpers import (
    ALIASES,
    HU_TAO,
    MIKU,
    MIKU_CAPTION,
    NOTHING,
    ExportCli,
    add_images,
)


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    created = create_db_engine(migrated_url)
    yield created
    created.dispose()


def files_under(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes().decode("utf-8")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def export(engine: Engine, out: Path | None, **options: Any) -> ExportSummary:
    return export_captions(engine, out, CaptionOptions(**options))


def test_default_captions_mirror_the_folders(engine: Engine, tmp_path: Path) -> None:
    art = tmp_path / "art"
    add_images(
        engine,
        {
            art / "ミク.png": MIKU,
            art / "sub" / "deep" / "hutao.jpg": HU_TAO,
            art / "sub" / "nothing.webp": NOTHING,
            art / "gone.png": MIKU,
        },
    )
    with session_factory(engine)() as session:
        gone = session.scalar(select(Image.id).where(Image.path == str(art / "gone.png")))
        assert gone is not None
        repo.mark_deleted(session, [gone])
        session.commit()
    out = tmp_path / "captions"
    done: list[tuple[int, int]] = []
    summary = export_captions(engine, out, CaptionOptions(), lambda d, t: done.append((d, t)))
    assert files_under(out) == {
        "ミク.txt": MIKU_CAPTION,
        "sub/deep/hutao.txt": "hu tao (genshin impact), genshin impact, 1girl\n",
        "sub/nothing.txt": "\n",
    }
    assert summary.as_dict() == {
        "written": 3,
        "empty": 1,
        "skipped": 0,
        "renamed": 0,
        "failed": 0,
        "failed_by_reason": {},
    }
    assert summary.root == str(art)
    assert done == [(3, 3)]


def test_underscores_and_group_order(engine: Engine, tmp_path: Path) -> None:
    add_images(engine, {tmp_path / "art" / "miku.png": MIKU})
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "underscores": (
            {"underscores": True},
            "hatsune_miku, vocaloid, 1girl, long_hair, twintails, donut, ^_^\n",
        ),
        "rating": (
            {"order": ("rating", "general", "character")},
            "general, 1girl, long hair, twintails, donut, ^_^, hatsune miku\n",
        ),
        "copyright": ({"order": ("copyright",)}, "vocaloid\n"),
    }
    for name, (options, caption) in cases.items():
        export(engine, tmp_path / name, **options)
        assert files_under(tmp_path / name) == {"miku.txt": caption}, name


def test_thresholds_top_k_allow_and_deny(engine: Engine, tmp_path: Path) -> None:
    add_images(engine, {tmp_path / "art" / "miku.png": MIKU})
    cases: dict[str, tuple[dict[str, Any], str]] = {
        # 0.8 and 0.9 are stored as float32 just below; the thresholds still keep them.
        "exact": (
            {"threshold_general": 0.8, "threshold_character": 0.9},
            "hatsune miku, vocaloid, 1girl, long hair\n",
        ),
        "top_k": ({"threshold_general": 0.45, "top_k": 2}, "hatsune miku, vocaloid, 1girl\n"),
        "deny": (
            {"deny": tag_names(frozenset({"doughnut", "long hair", "vocaloid"}), ALIASES)},
            "hatsune miku, 1girl, twintails, ^_^\n",
        ),
        "allow": (
            {"allow": frozenset({"1girl", "hatsune_miku"}), "order": ("character", "rating")},
            "hatsune miku\n",
        ),
        "denied_rating": (
            {"deny": frozenset({"general"}), "order": ("rating", "character")},
            "hatsune miku\n",
        ),
    }
    for name, (options, caption) in cases.items():
        export(engine, tmp_path / name, **options)
        assert files_under(tmp_path / name) == {"miku.txt": caption}, name


def test_colliding_names_are_resolved_in_path_order(engine: Engine, tmp_path: Path) -> None:
    art = tmp_path / "art"
    add_images(
        engine,
        {
            art / "a" / "b.png": {"twintails": 0.9},
            art / "a" / "b.jpg": {"long_hair": 0.9},
            art / "a" / "b": {"1girl": 0.9},  # no extension: found by its first bytes
            art / "a" / "b.jpg.png": {"doughnut": 0.9},  # its own name is b.jpg.txt
            art / "c.png": {"^_^": 0.9},
        },
    )
    out = tmp_path / "captions"
    summary = export(engine, out)
    assert files_under(out) == {
        "a/b.txt": "1girl\n",
        "a/b.jpg.txt": "donut\n",
        "a/b.jpg.2.txt": "long hair\n",
        "a/b.png.txt": "twintails\n",
        "c.txt": "^_^\n",
    }
    assert summary.renamed == 2
    assert sorted(summary.renames) == [
        (str(art / "a" / "b.jpg"), str(out / "a" / "b.jpg.2.txt")),
        (str(art / "a" / "b.png"), str(out / "a" / "b.png.txt")),
    ]
    # a re-run skips every caption and reports no rename again: it made none
    again = export(engine, out)
    assert (again.written, again.skipped, again.renamed, again.renames) == (0, 5, 0, [])


def test_paths_that_would_escape_are_refused(engine: Engine, tmp_path: Path) -> None:
    art, out, elsewhere = tmp_path / "art", tmp_path / "captions", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    add_images(
        engine,
        {
            art / "ok.png": MIKU,
            art / "link" / "y.png": MIKU,  # out/link is a symlink leading out
            f"{art}/../escape.png": MIKU,
            "relative/x.png": MIKU,
        },
    )
    summary = export(engine, out)
    assert files_under(out) == {"ok.txt": MIKU_CAPTION}
    assert not any(elsewhere.iterdir())
    assert summary.failed == 3
    assert summary.failed_by_reason == {"bad_path": 2, "outside": 1}
    beside = export(engine, None, layout=Layout.beside)
    assert beside.failed_by_reason == {"bad_path": 2}
    assert (art / "ok.txt").read_text(encoding="utf-8") == MIKU_CAPTION
    assert (art / "link" / "y.txt").read_text(encoding="utf-8") == MIKU_CAPTION
    assert not (tmp_path / "escape.txt").exists()


def test_existing_captions_are_skipped_unless_overwrite(engine: Engine, tmp_path: Path) -> None:
    art, out = tmp_path / "art", tmp_path / "captions"
    add_images(engine, {art / "miku.png": MIKU, art / "hutao.png": HU_TAO})
    out.mkdir()
    (out / "miku.txt").write_text("hand-written\n", encoding="utf-8")
    first = export(engine, out)
    assert (first.written, first.skipped) == (1, 1)
    assert (out / "miku.txt").read_text(encoding="utf-8") == "hand-written\n"
    again = export(engine, out)
    assert (again.written, again.skipped) == (0, 2)
    replaced = export(engine, out, overwrite=True)
    assert (replaced.written, replaced.skipped) == (2, 0)
    assert files_under(out) == {
        "miku.txt": MIKU_CAPTION,
        "hutao.txt": "hu tao (genshin impact), genshin impact, 1girl\n",
    }


def test_beside_layout_writes_next_to_each_image(engine: Engine, tmp_path: Path) -> None:
    art = tmp_path / "art"
    add_images(
        engine,
        {art / "x.png": MIKU, art / "x.jpg": HU_TAO, art / "sub" / "y.png": NOTHING},
    )
    (art / "sub" / "y.txt").write_text("mine\n", encoding="utf-8")
    summary = export(engine, None, layout=Layout.beside)
    assert files_under(art) == {
        "x.png": "",
        "x.jpg": "",
        "x.png.txt": MIKU_CAPTION,
        "x.txt": "hu tao (genshin impact), genshin impact, 1girl\n",
        "sub/y.png": "",
        "sub/y.txt": "mine\n",
    }
    assert (summary.written, summary.skipped, summary.renamed) == (2, 1, 1)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((art / "x.txt").stat().st_mode) == 0o666 & ~umask


def test_an_empty_index_is_refused(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(EmptyIndexError):
        export(engine, tmp_path / "out")
    [image_id] = add_images(engine, {tmp_path / "art" / "a.png": MIKU})
    with session_factory(engine)() as session:
        repo.mark_deleted(session, [image_id])
        session.commit()
    with pytest.raises(EmptyIndexError):
        export(engine, tmp_path / "out")


def test_caption_options_are_checked() -> None:
    assert parse_order(" character , rating,general ") == ("character", "rating", "general")
    for bad in ("character,bogus", "general,general", " , "):
        with pytest.raises(ValueError):
            parse_order(bad)
    with pytest.raises(ValueError, match="top_k"):
        CaptionOptions(top_k=0)
    with pytest.raises(ValueError, match="threshold_copyright"):
        CaptionOptions(threshold_copyright=1.5)


def test_cli_exit_codes_and_messages(tmp_path: Path, export_cli: ExportCli) -> None:
    out, art = tmp_path / "captions", tmp_path / "art"
    assert "Example: sagashi export --captions ./captions" in export_cli("--help")[1]
    code, output = export_cli("--captions", str(out))
    assert code == 2
    assert "sagashi: error: the index is empty; run 'sagashi index' first" in output
    engine = create_db_engine(export_cli.url)
    add_images(engine, {art / "miku.png": MIKU, art / "sub" / "hutao.png": HU_TAO})
    engine.dispose()

    code, output = export_cli("--captions", str(out), "--order", "character,bogus")
    assert code == 2
    assert "sagashi: error: --order: unknown group 'bogus'" in output
    code, output = export_cli("--layout", "beside", "--captions", str(out))
    assert code == 2 and "leave out --captions DIR" in output

    args = ("--deny", "doughnut,long hair", "--underscores", "--order", "character,general")
    code, output = export_cli("--captions", str(out), *args)
    assert code == 0, output
    assert files_under(out) == {
        "miku.txt": "hatsune_miku, 1girl, twintails, ^_^\n",
        "sub/hutao.txt": "hu_tao_(genshin_impact), 1girl\n",
    }
    assert '"written": 2' in output

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    code, output = export_cli("--captions", str(broken))
    assert code == 1
    assert f"failed: {art / 'sub' / 'hutao.png'}: outside" in output
