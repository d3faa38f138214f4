"""The ``sagashi`` command line."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast, get_args

import typer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.logs import configure_logging
from app.search.build import search_service
from app.search.service import EngineKind, SearchRequest, SearchService
from app.settings import Settings
from app.store import migrate
from app.store.db import database_url, safe_url, session_factory
from app.store.job_records import failure_records, get_job, job_record, recent_jobs
from app.store.repository import GenerationIdentity, GenerationMismatch, active_generation
from app.tagger import OutputPolicy
from app.tagger.caption import format_caption
from app.tagger.fetch import PUBLISHED, fetch_model
from app.tagger.vocab import TagVocabulary, load_pixai_vocabulary, load_wd_vocabulary
from app.text import plural
from indexer import jobs
from indexer import up as up_run
from indexer.cli_common import (
    ContradictionsOption,
    ExclusionsOption,
    fail,
    load_settings,
    load_tagger,
    log,
    open_store,
    split_list,
)
from indexer.cli_export import EPILOG as EXPORT_EPILOG
from indexer.cli_export import export_command
from indexer.cli_parsing import DashQueryCommand, SagashiTyper
from indexer.importer import Importer, ImportError_, ImportOptions
from indexer.jobs import first_line
from indexer.progress import migration_bar, progress_bar, rate_text
from indexer.reindex import drop_generation, list_generations
from indexer.runs import Run, abort, finish, tracked
from indexer.scan import iter_image_paths
from indexer.summary import report

if TYPE_CHECKING:  # torch and timm load only in the commands that run a model
    from app.tagger import Tagger
    from app.tagger.batching import TagOutcome
    from app.tagrules import TagRules
    from indexer.pipeline import IndexSummary


app = SagashiTyper(
    name="sagashi",
    help="Sagashi: a self-hosted search engine for anime image collections.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain usage errors: one "Error: ..." line, easy to grep
)
db_app = SagashiTyper(
    help="Create and migrate the database.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(db_app, name="db")
generations_app = SagashiTyper(
    help="List and drop model generations.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(generations_app, name="generations")
jobs_app = SagashiTyper(
    help="Index, import and reindex runs, with progress.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(jobs_app, name="jobs")
model_app = SagashiTyper(
    help="Download and inspect tagger models.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(model_app, name="model")


class OutputFormat(StrEnum):
    json = "json"
    caption = "caption"


class Preset(StrEnum):
    default = "default"
    coverage = "coverage"


ModelDirOption = Annotated[
    Path | None,
    typer.Option(
        "--model-dir", help="Model directory (else SAGASHI_MODEL_DIR).", show_default=False
    ),
]
SummaryJsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the summary as one JSON object on stdout instead of a table."
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Tag on Ray: 'local' (a Ray for this run), 'auto' (RAY_ADDRESS or the "
        "cluster on this node) or a cluster address; needs pip install 'sagashi[ray]'.",
    ),
]
RayActorsOption = Annotated[
    int, typer.Option(min=0, help="With --ray: tagger actors (0: one per GPU, else CPUs/4).")
]


@app.command(
    epilog="Example: sagashi tag ./images --model-dir ./models/pixai-v0.9 --format caption"
)
def tag(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Image files or folders (folders are searched recursively)."),
    ],
    model_dir: ModelDirOption = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="json: one object per file; caption: tags.")
    ] = OutputFormat.json,
    preset: Annotated[
        Preset,
        typer.Option(help="default (SAGASHI_THRESHOLD_*) or coverage (general 0.10)."),
    ] = Preset.default,
    threshold_general: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Keep general tags scoring >= this.")
    ] = None,
    threshold_character: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Keep character tags scoring >= this.")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(min=1, help="Most general+character tags kept.")
    ] = None,
    allow: Annotated[
        str | None, typer.Option(help="Only these tags: comma-separated, or @FILE (one per line).")
    ] = None,
    deny: Annotated[
        str | None, typer.Option(help="Never these tags: comma-separated, or @FILE.")
    ] = None,
    underscores: Annotated[
        bool, typer.Option(help="Captions keep underscores instead of spaces.")
    ] = False,
    embedding: Annotated[
        bool, typer.Option(help="json: include the L2-normalised pooled embedding.")
    ] = False,
    overlap: Annotated[
        bool | None,
        typer.Option(
            help="Drop a tag when a more specific tag implying it is kept (plaid_skirt keeps, "
            "skirt goes) [default: on for caption, off for json].",
            show_default=False,
        ),
    ] = None,
    contradictions: ContradictionsOption = True,
    exclusions: ExclusionsOption = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
) -> None:
    """Tag images with the model and print the results.

    Exit status: 0 when every file was tagged, 1 when some files failed (the others are
    still printed), 2 for a usage or model error.
    """
    settings = load_settings(model_dir=model_dir, batch_size=batch_size, device=device)
    from app.tagrules.configured import refinement

    caption = output_format is OutputFormat.caption
    refine = refinement(
        settings,
        overlap=caption if overlap is None else overlap,
        contradictions=contradictions,
        exclusion_file=exclusions,
    )
    policy = OutputPolicy.preset(
        preset.value,
        settings.tag_defaults(),
        top_k=top_k,
        threshold_general=threshold_general,
        threshold_character=threshold_character,
        allow=split_list(allow),
        deny=split_list(deny),
        refine=refine,
    )
    files = list(iter_image_paths(paths))
    if not files:
        fail("no image files found under the given paths")
    tagger = load_tagger(settings, embeddings=embedding)
    view = OutputView(policy, output_format, underscores, embedding, single=len(files) == 1)
    failures = _tag_and_print(tagger, files, settings, view)
    raise typer.Exit(1 if failures else 0)


@dataclass(frozen=True)
class OutputView:
    policy: OutputPolicy
    output_format: OutputFormat
    underscores: bool
    embedding: bool
    single: bool


def _tag_and_print(tagger: Tagger, files: list[Path], settings: Settings, view: OutputView) -> int:
    from app.tagger.batching import tag_sources

    started = time.perf_counter()
    errors: Counter[str] = Counter()
    outcomes = tag_sources(
        tagger,
        files,
        batch_size=settings.batch_size,
        workers=settings.effective_decode_workers(),
        max_pixels=settings.max_image_pixels,
        jpeg_draft=settings.jpeg_draft,
    )
    with progress_bar() as progress:
        task = progress.add_task("tagging", total=len(files), rate="")
        for done, outcome in enumerate(outcomes, start=1):
            if outcome.error is not None:
                errors[outcome.error.code] += 1
            _print_outcome(outcome, tagger, view)
            elapsed = time.perf_counter() - started
            progress.update(task, advance=1, rate=rate_text(done, elapsed, "img"))
    elapsed = time.perf_counter() - started
    tagged = len(files) - sum(errors.values())
    detail = ", ".join(f"{n} {code}" for code, n in errors.most_common())
    log.info(
        "tagged %d of %s in %.1fs (%s)%s",
        tagged,
        plural(len(files), "file"),
        elapsed,
        rate_text(tagged, elapsed, "img"),
        f"; failed: {detail}" if detail else "",
    )
    return sum(errors.values())


def _print_outcome(outcome: TagOutcome, tagger: Tagger, view: OutputView) -> None:
    path = str(outcome.source)
    tags = view.policy.select(outcome.probs, tagger.vocab) if outcome.probs is not None else []
    if view.output_format is OutputFormat.json:
        record: dict[str, object] = {"path": path, "results": [t.as_dict() for t in tags]}
        if view.embedding and outcome.embedding is not None:
            record["embedding"] = [round(float(v), 7) for v in outcome.embedding]
        if outcome.error is not None:
            record["error"] = outcome.error.as_dict()
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    if outcome.error is not None:
        typer.echo(f"{path}: {outcome.error.code}: {outcome.error.message}", err=True)
        return
    caption = format_caption(tags, underscores=view.underscores)
    sys.stdout.write(caption + "\n" if view.single else f"{path}\t{caption}\n")


@model_app.command(
    "fetch",
    epilog="Example: HF_TOKEN=hf_... sagashi model fetch pixai-v0.9 --dir ./models/pixai-v0.9",
)
def model_fetch(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(PUBLISHED)}.")],
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Target directory (default ./models/NAME).")
    ] = None,
) -> None:
    """Download a published model's files from the Hugging Face Hub.

    PixAI v0.9 is gated: accept its terms on the Hub, then set HF_TOKEN; its ONNX export
    (pixai-v0.9-onnx) is not gated and runs on ONNX Runtime.
    """
    configure_logging("INFO")
    target = directory or Path("models") / name
    fetch_model(name, target)
    log.info("downloaded %s to %s; use it with --model-dir %s", name, target, target)


@model_app.command("info", epilog="Example: sagashi model info --model-dir ./models/pixai-v0.9")
def model_info(model_dir: ModelDirOption = None) -> None:
    """Load a model directory and print what it is (layout, runtime, tags, embedding size)."""
    settings = load_settings(model_dir=model_dir)
    tagger = load_tagger(settings, embeddings=False)
    info = tagger.info
    vocab = tagger.vocab
    counts = Counter(vocab.group(i) for i in range(len(vocab)))
    record = {
        "name": info.name,
        "family": info.family,
        "layout": info.layout,
        "runtime": info.runtime,
        "num_tags": info.num_tags,
        "groups": dict(counts),
        "characters_with_copyright": len(vocab.char_to_copyrights),
        "embedding_dim": info.embedding_dim,
        "preprocess": info.preprocess_description(),
        "vocabulary_sha256": info.vocabulary_digest,
        "device": str(getattr(tagger, "device", "cpu")),
        "published_thresholds": getattr(tagger, "published_thresholds", {}),
    }
    sys.stdout.write(json.dumps(record, indent=2) + "\n")


@db_app.command("upgrade", epilog="Example: sagashi db upgrade")
def db_upgrade() -> None:
    """Create the database, or migrate it to this code's schema (Alembic)."""
    settings = load_settings()
    url = database_url(settings)
    try:
        with migration_bar() as progress:
            migrate.upgrade(url, progress=progress)
    except SQLAlchemyError as exc:
        fail(f"cannot migrate {safe_url(url)}: {first_line(exc)}")
    log.info("database %s is at schema %s", safe_url(url), migrate.head_revision())


@app.command(epilog="Example: sagashi index ~/Pictures/art --model-dir ./models/pixai-v0.9")
def index(
    paths: Annotated[list[str], typer.Argument(help="Folders (or files) to index, recursively.")],
    model_dir: ModelDirOption = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    as_json: SummaryJsonOption = False,
    ray: RayAddressOption = None,
    ray_actors: RayActorsOption = 0,
) -> None:
    """Index images: tag new and changed files, follow moves, mark deletions.

    Unchanged files (same size and mtime, or same content) are skipped; moved files keep
    their tags; safe to interrupt at any moment and run again. Exit status 1 when some
    files could not be indexed (the summary lists why).
    """
    local_paths(paths)
    settings = load_settings(model_dir=model_dir, batch_size=batch_size, device=device)
    folders = [Path(p) for p in paths]
    if ray is not None:
        summary = _index_on_ray(settings, folders, as_json, ray, ray_actors)
    else:
        summary = _index(settings, folders, as_json)
    raise typer.Exit(1 if summary.failed else 0)


def local_paths(paths: list[str]) -> None:
    """An index serves its files from disk: an object-store URI is refused, pointing to
    the path that tags objects without an index."""
    from indexer.object_store import is_uri

    uri = next((p for p in paths if is_uri(p)), None)
    if uri is not None:
        fail(
            f"sagashi index takes local paths only (an index serves files from disk), not "
            f"{uri}: tag objects with 'sagashi tag-dataset {uri} --out DIR', then "
            "'sagashi import DIR'"
        )


def _index_on_ray(
    settings: Settings, paths: list[Path], as_json: bool, address: str, actors: int
) -> IndexSummary:
    from indexer import ray_tagging

    options = ray_tagging.ray_options(settings, address, actors)
    ray_tagging.preflight(options)
    engine = open_store(settings, create=True)
    tagger = load_tagger(settings)
    ray_tagging.start(options)
    return ray_tagging.index_paths(engine, settings, tagger, paths, as_json, options)


def _index(settings: Settings, paths: list[Path], as_json: bool) -> IndexSummary:
    engine = open_store(settings, create=True)
    tagger = load_tagger(settings)
    return up_run.index_paths(engine, settings, tagger, paths, as_json)


@app.command(
    "tag-dataset",
    epilog="Example: sagashi tag-dataset ~/Pictures/art --out ./art-tags --captions",
)
def tag_dataset(
    sources: Annotated[
        list[str],
        typer.Argument(
            metavar="SRC...",
            help="Folders (or files) to tag, recursively, or object-store URIs (s3://BUCKET/"
            "PREFIX, gs://..., file://...; any pyarrow filesystem URI).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Folder of Parquet shards in the import format (created if missing).",
        ),
    ],
    captions: Annotated[
        bool,
        typer.Option(
            "--captions",
            help="Also a caption per image under DIR/captions, mirroring the folders below "
            "the sources' common folder (as sagashi export --captions).",
        ),
    ] = False,
    allow: Annotated[
        str | None, typer.Option(help="Captions: only these tags (comma-separated, or @FILE).")
    ] = None,
    deny: Annotated[
        str | None, typer.Option(help="Captions: never these tags (comma-separated, or @FILE).")
    ] = None,
    order: Annotated[
        str, typer.Option(help="Captions: groups in caption order, comma-separated.")
    ] = "character,copyright,general",
    model_dir: ModelDirOption = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    ray: RayAddressOption = None,
    ray_actors: RayActorsOption = 0,
    shard_rows: Annotated[int, typer.Option(min=1, help="Rows per Parquet shard.")] = 4096,
    as_json: SummaryJsonOption = False,
) -> None:
    """Tag files into Parquet shards in the import format, without an index.

    For dataset curation: predictions (tags, scores, embeddings) that 'sagashi import DIR
    --model-dir M' turns into the index 'sagashi index' would build. Run it again into the
    same DIR to resume: files a whole shard describes as they are (path, size, mtime) are
    skipped, rows of changed or vanished files dropped. Exit status 1 when some files could
    not be tagged (the summary lists why).
    """
    from indexer import tag_dataset as dataset
    from indexer.ray_tagging import start

    settings = load_settings(model_dir=model_dir, batch_size=batch_size, device=device)
    index, options = dataset.plan(settings, sources, out, shard_rows, ray, ray_actors, captions)
    if captions:
        caption = dataset.caption_options(
            settings, index.aliases, split_list(allow), split_list(deny), order
        )
        options = replace(options, captions=caption)
    tagger = load_tagger(settings)
    if options.ray is not None:
        start(options.ray)
    summary = dataset.run_command(tagger, index, sources, options, as_json)
    raise typer.Exit(1 if summary.failed else 0)


def stop(run: Run, message: str) -> NoReturn:
    """Record why the run stopped on its job, then exit with the same one-line reason."""
    abort(run, message)
    fail(message)


@app.command(
    "import",
    epilog="Example: sagashi import predictions.jsonl --vocabulary tags_v0.9_13k.json",
)
def import_(
    file: Annotated[Path, typer.Argument(help="Predictions: .jsonl/.ndjson or .parquet.")],
    embeddings: Annotated[
        Path | None,
        typer.Option(
            help="Row-aligned .npy (N x D) for a JSONL without embeddings "
            "(default: FILE.npy when it exists)."
        ),
    ] = None,
    vocabulary: Annotated[
        Path | None,
        typer.Option(
            help="Tag vocabulary giving each tag's group: PixAI tags_*.json or WD "
            "selected_tags.csv. Other tags are stored as general."
        ),
    ] = None,
    model_name: Annotated[str, typer.Option(help="Name of the model that made them.")] = "imported",
    model_dir: ModelDirOption = None,
    strict: Annotated[
        bool, typer.Option(help="Reject rows with tags not in the vocabulary.")
    ] = False,
    as_json: SummaryJsonOption = False,
) -> None:
    """Import predictions computed elsewhere (formats: docs/operations.md, sagashi import).

    With --model-dir the rows join that model's index (the model is loaded to identify it);
    otherwise they form a generation named by --model-name. Bad rows are reported with their
    line number and skipped; exit status 1 when any row failed.
    """
    settings = load_settings(model_dir=model_dir)
    engine = open_store(settings, create=True)
    aliases = _aliases(settings)
    vocab, identity = _import_vocabulary(settings, vocabulary, model_dir is not None)
    options = ImportOptions(
        model_name,
        vocab,
        aliases,
        settings.score_floor,
        strict,
        identity=identity,
        count_thresholds=settings.tag_defaults().thresholds(),
    )
    params = {"file": str(file), "model": model_name}
    with tracked(engine, "import", params, "importing", "rows") as run:
        try:
            summary = Importer(engine, options).run_file(file, embeddings, run.update)
        except (ImportError_, GenerationMismatch) as exc:
            stop(run, str(exc))
        except SQLAlchemyError as exc:
            stop(run, str(jobs.database_stop(exc)))
        try:
            jobs.refresh_faiss(engine, settings.data_dir)
        except jobs.JobStopped as exc:
            stop(run, str(exc))
        jobs.refresh_segments(engine, settings)
        finish(
            run,
            summary.as_dict(),
            [(f"{file}:{number}", "bad_row", reason) for number, reason in summary.failures],
        )
    for number, reason in summary.failures[:50]:
        log.warning("%s:%d: %s", file, number, reason)
    if summary.failed > 50:
        log.warning("... and %d more failed rows", summary.failed - 50)
    done = summary.new + summary.updated
    rate = rate_text(done, run.elapsed(), "rows")
    report(f"imported ({rate})", run.job_id, run.elapsed(), summary.as_dict(), as_json)
    raise typer.Exit(1 if summary.failed else 0)


def _aliases(settings: Settings) -> dict[str, str]:
    return jobs.aliases_of(settings)


def _tag_rules(settings: Settings) -> TagRules:
    """The implication and exclusion rules the settings name, or a one-line exit."""
    from app.tagrules.configured import tag_rules

    return tag_rules(settings)


def _import_vocabulary(
    settings: Settings, vocabulary: Path | None, use_model: bool
) -> tuple[TagVocabulary | None, GenerationIdentity | None]:
    if use_model:
        tagger = load_tagger(settings)
        return tagger.vocab, GenerationIdentity.of(tagger.info)
    if vocabulary is None:
        return None, None
    if vocabulary.suffix.lower() == ".csv":
        return load_wd_vocabulary(vocabulary), None
    return load_pixai_vocabulary(vocabulary, None), None


@app.command(
    epilog="Example: sagashi reindex --model-dir ./models/pixai-v0.9 "
    "(or: sagashi reindex --where 'path:/art/new/*')"
)
def reindex(
    model_dir: ModelDirOption = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    where: Annotated[
        str | None,
        typer.Option(help="Re-tag only what this search matches, in place (same model)."),
    ] = None,
    as_json: SummaryJsonOption = False,
) -> None:
    """Re-tag every indexed image with a new or updated model, side by side.

    Search keeps serving the current generation until the new one is complete, then
    switches in one transaction. Interrupt it and run it again to resume. Exit status 1
    when some images could not be re-tagged (the switch then waits for a rerun).

    With --where QUERY, only the images the query matches are re-tagged, in place, by the
    model that built the index (another model must re-tag everything).
    """
    settings = load_settings(model_dir=model_dir, batch_size=batch_size, device=device)
    engine = open_store(settings)
    tagger = load_tagger(settings)
    params = {"model": tagger.info.name, "where": where}
    with tracked(engine, "reindex", params, "reindexing", "img") as run:
        try:
            summary = jobs.run_reindex(engine, settings, tagger, where, run)
        except jobs.JobStopped as exc:
            stop(run, str(exc))
    for problem in summary.failures:
        log.warning("failed: %s: %s: %s", problem.path, problem.code, problem.message)
    if summary.failures:
        log.warning(
            "generation %d is not active yet: %d images could not be re-tagged; fix them (or "
            "run 'sagashi index' to mark deleted files), then run reindex again to finish",
            summary.generation_id,
            len(summary.failures),
        )
    report("reindexed", run.job_id, run.elapsed(), summary.as_dict(), as_json)
    raise typer.Exit(1 if summary.failures else 0)


@generations_app.command("list", epilog="Example: sagashi generations list")
def generations_list() -> None:
    """List model generations: which model, state (active, building, retired), images."""
    settings = load_settings()
    engine = open_store(settings)
    for row in list_generations(engine):
        sys.stdout.write(json.dumps(row.__dict__) + "\n")


@generations_app.command("drop", epilog="Example: sagashi generations drop 1")
def generations_drop(
    generation_id: Annotated[int, typer.Argument(help="Generation id (see 'generations list').")],
) -> None:
    """Delete a retired or unfinished generation: its scores, embeddings and FAISS files."""
    settings = load_settings()
    engine = open_store(settings)
    drop_generation(engine, settings.data_dir, generation_id)
    log.info("dropped generation %d", generation_id)


app.command("export", epilog=EXPORT_EPILOG)(export_command)


@jobs_app.command("list", epilog="Example: sagashi jobs list --limit 5")
def jobs_list(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Most recent jobs shown.")] = 20,
) -> None:
    """One JSON object per job, newest first: kind, state, progress, summary."""
    engine = open_store(load_settings())
    for job in recent_jobs(engine, limit):
        sys.stdout.write(json.dumps(job_record(job)) + "\n")


@jobs_app.command("show", epilog="Example: sagashi jobs show 12")
def jobs_show(job_id: Annotated[int, typer.Argument(help="Job id (see 'jobs list').")]) -> None:
    """A job as JSON, with the files it could not process and why."""
    engine = open_store(load_settings())
    job = get_job(engine, job_id)
    if job is None:
        fail(f"no job {job_id}; see 'sagashi jobs list'")
    record = job_record(job)
    record["failures"] = failure_records(engine, job_id)
    sys.stdout.write(json.dumps(record, indent=2) + "\n")


@app.command(
    cls=DashQueryCommand,
    epilog='Example: sagashi search "1girl solo -monochrome hu_tao_(genshin_impact),>=0.9" '
    '(or: sagashi search "1girl" --like cover.png)',
)
def search(
    query: Annotated[str, typer.Argument(help="Danbooru-syntax query (quote it).")],
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Most hits printed.")] = 100,
    cursor: Annotated[
        str | None, typer.Option(help="Continue after a page: the 'next' cursor it printed.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines: id, path, size, similarity.")
    ] = False,
    engine_kind: Annotated[
        str | None,
        typer.Option("--engine", help="segments, memory or sql [SAGASHI_SEARCH_ENGINE: segments]."),
    ] = None,
    hide_duplicates: Annotated[
        bool, typer.Option(help="With similar: or --like, hide near-duplicates of the query.")
    ] = False,
    like: Annotated[
        Path | None,
        typer.Option(help="Images that look like this file, filtered by QUERY (needs the model)."),
    ] = None,
    model_dir: ModelDirOption = None,
) -> None:
    """Search the index with Danbooru's syntax and print matching paths, newest first.

    Tag terms take confidence thresholds (tag,>=0.9; tag,0.5..0.8); a term without one uses
    its group's default. order: sorts (order:filesize, order:score:1girl, order:random);
    similar:ID (or --like FILE) finds the images most like image ID (or FILE), filtered by
    the rest of the query. The count and the cursor of the next page go to stderr. A
    malformed query exits 2 with the reason and its position. A query may start with "-"
    (sagashi search "-monochrome 1girl"); "--" before it also works.
    """
    kinds = get_args(EngineKind)
    if engine_kind is not None and engine_kind not in kinds:
        fail(f"--engine must be {', '.join(kinds)}, not {engine_kind!r}")
    settings = load_settings(model_dir=model_dir)
    engine = open_store(settings)
    service = search_service(engine, settings, cast(EngineKind | None, engine_kind))
    embedding = query_embedding(engine, settings, like) if like is not None else None
    request = SearchRequest(
        query, limit, cursor, embedding=embedding, hide_duplicates=hide_duplicates
    )
    result = service.search(request)
    _say_unknown_tags(service, query)
    for hit in result.hits:
        if as_json:
            record = {k: v for k, v in hit.__dict__.items() if v is not None}
            sys.stdout.write(json.dumps(record) + "\n")
        else:
            sys.stdout.write(hit.path + "\n")
    log.info("%s; %d shown", plural(result.count, "match", "matches"), len(result.hits))
    if result.next_cursor:
        log.info("next page: --cursor %s", result.next_cursor)


def _say_unknown_tags(service: SearchService, query: str) -> None:
    """Tags of the query the index does not know (they match nothing), with the closest
    known ones."""
    from app.query import parse
    from app.search.suggest import describe, unknown_tags

    root = parse(query, max_terms=service.max_terms).root
    for line in describe(unknown_tags(root, service.catalog())):
        log.warning("%s", line)


def query_embedding(engine: Engine, settings: Settings, image: Path) -> Any:
    """The embedding of a query image, by the model that built the index."""
    from app.tagger.batching import tag_sources

    tagger = load_tagger(settings)
    with session_factory(engine)() as session:
        active = active_generation(session)
        if active is None:
            fail("the index is empty; run 'sagashi index' or 'sagashi import'")
        if not GenerationIdentity.of(tagger.info).matches(active):
            fail(
                f"--like needs the model that built the index ('{active.model_name}'); "
                f"'{tagger.info.name}' embeds images differently"
            )
    outcome = next(
        tag_sources(
            tagger,
            [image],
            batch_size=1,
            workers=1,
            max_pixels=settings.max_image_pixels,
            jpeg_draft=settings.jpeg_draft,
        )
    )
    if outcome.error is not None or outcome.embedding is None:
        reason = outcome.error.message if outcome.error else "no embedding"
        code = outcome.error.code if outcome.error else "corrupt"
        fail(f"{image}: {code}: {reason}")
    return outcome.embedding


@app.command(
    epilog="Example: SAGASHI_READ_TOKEN=$(cat read.token) SAGASHI_ADMIN_TOKEN=s3cret "
    "sagashi serve --host 0.0.0.0 --port 8000"
)
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address [SAGASHI_HOST].")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Listen port [SAGASHI_PORT].")
    ] = None,
    model_dir: ModelDirOption = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="Server processes [SAGASHI_WORKERS; 0: by engine]."),
    ] = None,
) -> None:
    """Serve the web gallery and the HTTP API (OpenAPI docs at /docs) with uvicorn.

    The index loads in the background (GET /readyz answers 503 until it is ready); the
    model loads on the first upload, or at start with SAGASHI_MODEL_LOAD=startup. With
    several workers each process answers requests on the same port; with the segments
    engine they share one copy of the index files in the page cache.
    """
    settings = load_settings(host=host, port=port, model_dir=model_dir, workers=workers)
    _serve(settings)


def _serve(settings: Settings) -> None:
    import uvicorn

    from app.api import create_app
    from app.api.serving import PARENT_VARIABLE, uvicorn_options

    # a new database gets its schema; an older or newer one is refused before listening
    open_store(settings, create=True).dispose()
    _aliases(settings)
    _tag_rules(settings)
    count = settings.effective_workers()
    log.info(
        "serving on http://%s:%d with %d worker(s) (API docs at /docs)",
        settings.host,
        settings.port,
        count,
    )
    if count == 1:
        uvicorn.run(create_app(settings), **uvicorn_options(settings))
        return
    # Worker processes read their settings from the environment: hand them these options.
    if settings.model_dir is not None:
        os.environ["SAGASHI_MODEL_DIR"] = str(settings.model_dir)
    os.environ["SAGASHI_WORKERS"] = str(count)
    os.environ[PARENT_VARIABLE] = str(os.getpid())
    target = "app.api.serving:app_from_environment"
    uvicorn.run(target, factory=True, workers=count, **uvicorn_options(settings, count))


@app.command(epilog="Example: sagashi up ~/Pictures/art")
def up(
    paths: Annotated[list[Path], typer.Argument(help="Folders (or files) to index, recursively.")],
    model_dir: ModelDirOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address [SAGASHI_HOST].")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Listen port [SAGASHI_PORT].")
    ] = None,
) -> None:
    """Index folders, then serve the gallery and the API: the first run in one command.

    With no model in --model-dir (or SAGASHI_MODEL_DIR; default ./models/pixai-v0.9-onnx),
    downloads PixAI Tagger v0.9's ungated ONNX export into it first. Files that cannot be
    indexed are listed in the summary and the rest is served; run it again to pick up new
    and changed files.
    """
    settings = load_settings(model_dir=model_dir, host=host, port=port)
    up_run.check_paths(paths)
    settings = settings.model_copy(update={"model_dir": up_run.model_directory(settings)})
    up_run.say_failures(_index(settings, paths, as_json=False))
    gc.collect()  # the indexing model's memory goes back before serving
    _serve(settings)


@app.command(epilog="Example: SAGASHI_MODEL_DIR=./models/pixai-v0.9 sagashi worker")
def worker(
    once: Annotated[
        bool, typer.Option(help="Run the jobs queued now, then exit (for cron or tests).")
    ] = False,
    model_dir: ModelDirOption = None,
) -> None:
    """Run the index, reindex and FAISS-rebuild jobs queued through the admin API.

    Runs on any host that reaches the database (a GPU machine, say), one job at a time,
    under the same writer lock as the CLI commands. Stop it with Ctrl-C or SIGTERM: a job
    cut short goes back to the queue and resumes where it stopped.
    """
    from indexer.worker import Worker

    settings = load_settings(model_dir=model_dir)
    engine = open_store(settings, create=True)
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, _interrupt)
    log.info("worker waiting for jobs (every %.1fs)", settings.worker_poll_seconds)
    try:
        ran = Worker(engine, settings).serve(stop_event, once=once)
    except KeyboardInterrupt:
        log.info("worker stopped")
        raise typer.Exit(130) from None
    log.info("worker ran %s", plural(ran, "job"))


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    app()


if __name__ == "__main__":
    main()
