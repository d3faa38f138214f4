"""``sagashi export``: the command's options, checks, progress and summary; the export
itself (captions beside the images, or a dataset folder) is :mod:`indexer.export` and
:mod:`indexer.dataset`."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.store.aliases import AliasError, load_aliases
from app.tagger.caption import DEFAULT_ORDER
from app.tagrules.implications import Implications
from indexer.cli_common import (
    ContradictionsOption,
    ExclusionsOption,
    fail,
    load_settings,
    open_store,
    split_list,
)
from indexer.export import (
    CaptionOptions,
    EmptyIndexError,
    ExportSummary,
    ImageMode,
    Layout,
    export_captions,
    parse_order,
    tag_names,
)
from indexer.jobs import first_line
from indexer.progress import progress_bar, rate_text

log = logging.getLogger("sagashi")

T = TypeVar("T")

EPILOG = (
    "Example: sagashi export --captions ./captions\n\n"
    "Example: sagashi export --where 'hatsune_miku -monochrome' --images hardlink ./miku"
)


def export_command(
    folder: Annotated[
        Path | None,
        typer.Argument(
            metavar="[DIR]",
            help="A dataset folder: the matching images (see --images) beside their captions "
            "(IMAGE-STEM.txt), and metadata.jsonl.",
            show_default=False,
        ),
    ] = None,
    where: Annotated[
        str | None,
        typer.Option(
            metavar="QUERY",
            help="Only the images this search matches (Danbooru syntax, at the thresholds "
            "below) [default: every image].",
        ),
    ] = None,
    images: Annotated[
        ImageMode | None,
        typer.Option(
            help="With DIR: copy the images, hard-link them (copied when on another "
            "filesystem), symlink them, or none (captions and metadata only) [default: copy].",
            show_default=False,
        ),
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option(
            "--captions",
            metavar="DIR",
            help="Write captions under DIR, mirroring the folders below the images' common "
            "root (/data/art/a/b.png -> DIR/a/b.txt). Required unless --layout beside.",
            show_default=False,
        ),
    ] = None,
    threshold_general: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Keep general tags scoring >= this [default: SAGASHI_THRESHOLD_GENERAL, 0.30].",
        ),
    ] = None,
    threshold_character: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Keep character tags scoring >= this "
            "[default: SAGASHI_THRESHOLD_CHARACTER, 0.75].",
        ),
    ] = None,
    threshold_copyright: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Keep copyright tags scoring >= this "
            "[default: SAGASHI_THRESHOLD_COPYRIGHT, 0.75].",
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            min=1, help="Most general+character tags per caption [default: SAGASHI_TOP_K, 128]."
        ),
    ] = None,
    allow: Annotated[
        str | None,
        typer.Option(
            help="Only these tags: comma-separated, or @FILE (one per line). Spaces or "
            "underscores, old names too (doughnut means donut)."
        ),
    ] = None,
    deny: Annotated[
        str | None, typer.Option(help="Never these tags: comma-separated, or @FILE.")
    ] = None,
    underscores: Annotated[
        bool,
        typer.Option(
            "--underscores/--spaces",
            help="Keep underscores in tags, or write spaces (emoticons such as ^_^ keep theirs).",
        ),
    ] = False,
    order: Annotated[
        str,
        typer.Option(
            help="Groups in caption order, comma-separated, from general, character, copyright, "
            "rating; groups left out are not written."
        ),
    ] = ",".join(DEFAULT_ORDER),
    layout: Annotated[
        Layout,
        typer.Option(
            help="mirror: under --captions DIR, keeping the folders below the images' common "
            "root; beside: IMAGE-STEM.txt next to each image (give no --captions).",
        ),
    ] = Layout.mirror,
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing caption files (else they are skipped).")
    ] = False,
    overlap: Annotated[
        bool,
        typer.Option(
            help="Drop a tag when a more specific tag implying it is kept (plaid_skirt "
            "keeps, skirt goes)."
        ),
    ] = True,
    contradictions: ContradictionsOption = True,
    exclusions: ExclusionsOption = None,
) -> None:
    """Export a search as a training set (DIR), or caption files for the indexed images.

    sagashi export --where QUERY DIR puts the images QUERY matches into DIR with a caption
    beside each (kohya-ss's layout) and metadata.jsonl; a re-run skips what is there and
    adds what is new. Without DIR, --captions DIR (or --layout beside) writes captions only.

    The captions come from the stored scores of the active model, as training tools such
    as kohya-ss expect: one line, characters, then copyrights, then general tags (see
    --order), each by score. Images with no tag above the thresholds get an empty caption;
    existing caption files are skipped unless --overwrite. Two images that
    would share a caption name (b.png and b.jpg) are both written: the first by path gets
    b.txt, the other b.jpg.txt, and both are reported.

    Exit status: 0 when every caption was written or skipped, 1 when some failed (the
    summary lists why), 2 for a usage error or an empty index.
    """

    settings = load_settings()
    if folder is not None:
        if captions is not None or layout is not Layout.mirror:
            fail("give either DIR (a dataset folder) or --captions DIR / --layout beside")
        if folder.exists() and not folder.is_dir():
            fail(f"{folder} is not a folder")
    elif images is not None:
        fail("--images needs a dataset folder: sagashi export --images MODE DIR")
    out_dir = _output_dir(captions, layout, fail) if folder is None else None
    try:
        groups = parse_order(order)
    except ValueError as exc:
        fail(f"--order: {exc}")
    aliases = _aliases(settings.alias_file, fail)
    defaults = settings.tag_defaults()
    from app.tagrules import RulesError
    from app.tagrules.configured import refinement, search_implications

    try:
        refine = refinement(
            settings, overlap=overlap, contradictions=contradictions, exclusion_file=exclusions
        )
        implications = search_implications(settings)
    except RulesError as exc:
        fail(str(exc))
    options = CaptionOptions(
        threshold_general=_given(threshold_general, defaults.general),
        threshold_character=_given(threshold_character, defaults.character),
        threshold_copyright=_given(threshold_copyright, defaults.copyright),
        top_k=_given(top_k, defaults.top_k),
        allow=tag_names(split_list(allow), aliases),
        deny=tag_names(split_list(deny), aliases) or frozenset(),
        underscores=underscores,
        order=groups,
        layout=layout,
        overwrite=overwrite,
        refine=refine,
    )
    engine = open_store(settings)
    if where is not None:
        _check_where(where, fail)
    if folder is not None:
        _export_dataset(
            engine, folder, options, aliases, where or "", images or ImageMode.copy, implications
        )
    matched = None if where is None else _matched_by(engine, where, options, aliases, implications)
    try:
        summary = _run_with_progress(engine, out_dir, options, matched)
    except EmptyIndexError:
        fail("the index is empty; run 'sagashi index' first")
    except SQLAlchemyError as exc:
        fail(f"database error: {first_line(exc)}")
    except OSError as exc:
        fail(f"cannot use the output folder {out_dir}: {exc.strerror or exc}")
    _log_summary(summary, out_dir)
    raise typer.Exit(1 if summary.failed else 0)


def _check_where(where: str, fail: Fail) -> None:
    from app.query import QueryError, parse

    try:
        parse(where)
    except QueryError as exc:
        fail(f"bad --where query at character {exc.position} ({exc.code}): {exc.message}")


def _matched_by(
    engine: Engine,
    where: str,
    options: CaptionOptions,
    aliases: dict[str, str],
    implications: Implications | None,
) -> Callable[[int], Sequence[int]]:
    from indexer.dataset import matching_ids, query_thresholds

    def matched(generation_id: int) -> Sequence[int]:
        thresholds = query_thresholds(options)
        return matching_ids(engine, generation_id, where, aliases, thresholds, implications)

    return matched


def _export_dataset(
    engine: Engine,
    folder: Path,
    options: CaptionOptions,
    aliases: dict[str, str],
    where: str,
    images: ImageMode,
    implications: Implications | None,
) -> NoReturn:
    from app.query import QueryError
    from indexer.dataset import DatasetOptions, export_dataset
    from indexer.summary import render

    started = time.perf_counter()
    try:
        with progress_bar() as bar:
            task = bar.add_task("exporting", total=None, rate="")

            def report(done: int, total: int) -> None:
                rate = rate_text(done, time.perf_counter() - started, "img")
                bar.update(task, completed=done, total=total, rate=rate)

            dataset = DatasetOptions(options, images, where)
            summary = export_dataset(engine, folder, dataset, aliases, report, implications)
    except EmptyIndexError:
        fail("the index is empty; run 'sagashi index' first")
    except QueryError as exc:
        fail(f"bad --where query at character {exc.position} ({exc.code}): {exc.message}")
    except SQLAlchemyError as exc:
        fail(f"database error: {first_line(exc)}")
    except OSError as exc:
        fail(f"cannot use the folder {folder}: {exc.strerror or exc}")
    for problem in summary.failures:
        log.warning("failed: %s: %s: %s", problem.path, problem.code, problem.message)
    for image, name in summary.renames:
        log.warning("name taken: %s exported as %s", image, name)
    if summary.copied_not_linked:
        log.warning(
            "%d images lie on another filesystem than %s and were copied, not hard-linked",
            summary.copied_not_linked,
            folder,
        )
    heading = f"exported {summary.matched} matching images to {folder} in {summary.elapsed:.1f}s"
    if not summary.matched:
        heading = f"no image matches {where!r}; nothing exported to {folder}"
    typer.echo(render(heading, summary.as_dict()), err=True)
    raise typer.Exit(1 if summary.failed else 0)


Fail = Callable[[str], NoReturn]


def _aliases(extra: Path | None, fail: Fail) -> dict[str, str]:
    try:
        return load_aliases(extra)
    except AliasError as exc:
        fail(str(exc))


def _output_dir(captions: Path | None, layout: Layout, fail: Fail) -> Path | None:
    if layout is Layout.beside and captions is not None:
        fail("--layout beside writes each caption next to its image; leave out --captions DIR")
    if layout is Layout.mirror and captions is None:
        fail("nothing to export: pass --captions DIR (or --layout beside)")
    if captions is not None and captions.exists() and not captions.is_dir():
        fail(f"--captions {captions} is not a folder")
    return captions


def _run_with_progress(
    engine: Engine,
    out_dir: Path | None,
    options: CaptionOptions,
    where: Callable[[int], Sequence[int]] | None = None,
) -> ExportSummary:
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("exporting", total=None, rate="")

        def report(done: int, total: int) -> None:
            elapsed = time.perf_counter() - started
            bar.update(task, completed=done, total=total, rate=rate_text(done, elapsed, "img"))

        return export_captions(engine, out_dir, options, report, where)


def _log_summary(summary: ExportSummary, out_dir: Path | None) -> None:
    for problem in summary.failures:
        log.warning("failed: %s: %s: %s", problem.path, problem.code, problem.message)
    for image, caption in summary.renames:
        log.warning("name taken: %s -> %s (a training tool will not pair it)", image, caption)
    where = f"under {out_dir}" if out_dir is not None else "beside the images"
    log.info(
        "exported captions %s in %.1fs (root %s): %s",
        where,
        summary.elapsed,
        summary.root,
        json.dumps(summary.as_dict()),
    )


def _given(value: T | None, default: T) -> T:
    """An option's value, or the settings' default when it was not given."""
    return default if value is None else value
