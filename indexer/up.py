"""'sagashi up PATH...': the first run in one command. Downloads PixAI Tagger v0.9's ungated
ONNX export when no model is there yet, indexes the folders (a file that cannot be indexed
is listed in the summary and the run goes on), then serves what was indexed.

'sagashi index' exits 1 when any file fails, which is right for a script but meant that the
quick start's ``index && serve`` never served a real folder (they nearly always hold a
broken file). Here failures are reported and the server starts anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine

from app.errors import SagashiError
from app.settings import Settings
from app.tagger.fetch import PUBLISHED, fetch_model
from app.tagger.protocol import Tagger
from app.text import plural
from indexer import jobs
from indexer.pipeline import IndexSummary
from indexer.runs import abort, tracked
from indexer.summary import report

log = logging.getLogger("sagashi")

DEFAULT_MODEL = "pixai-v0.9-onnx"
DEFAULT_MODEL_DIR = Path("models") / DEFAULT_MODEL


class FirstRunError(SagashiError):
    """The first run cannot go on; the message says why."""

    http_status = 400
    error_code = "first_run"


def check_paths(paths: Sequence[Path]) -> None:
    """Refuse a path that does not exist before downloading a model for it."""
    for path in paths:
        if not path.exists():
            raise FirstRunError(f"no such file or folder: {path}")


def has_model(directory: Path) -> bool:
    """Whether ``directory`` holds anything a model could be (files, not hidden ones)."""
    return directory.is_dir() and any(
        not entry.name.startswith(".") for entry in directory.iterdir()
    )


def model_directory(settings: Settings) -> Path:
    """The model folder to use, downloading PixAI's ONNX export into it when it holds no
    model: SAGASHI_MODEL_DIR (or --model-dir) when set, else ./models/pixai-v0.9-onnx.
    Raises FetchError (offline, say) with its one-line reason."""
    directory = settings.model_dir or DEFAULT_MODEL_DIR
    if has_model(directory):
        return directory
    log.info(
        "no model in %s yet: downloading PixAI Tagger v0.9's ONNX export (%s) into it",
        directory,
        PUBLISHED[DEFAULT_MODEL].repo_id,
    )
    fetch_model(DEFAULT_MODEL, directory)
    log.info("downloaded %s to %s", DEFAULT_MODEL, directory)
    return directory


def index_paths(
    engine: Engine, settings: Settings, tagger: Tagger, paths: Sequence[Path], as_json: bool
) -> IndexSummary:
    """Index ``paths`` as 'sagashi index' does: a tracked run with a progress bar, each
    failed file logged with its reason, then the summary (a table, or JSON). Raises
    WriterBusy, or JobStopped after recording it on the run's job."""
    params = {"paths": [str(p) for p in paths], "model": tagger.info.name}
    with tracked(engine, "index", params, "indexing", "files") as run:
        try:
            summary = jobs.run_index(engine, settings, tagger, paths, run)
        except jobs.JobStopped as exc:
            abort(run, str(exc))
            raise
    for failure in summary.failures:
        log.warning("failed: %s: %s: %s", failure.path, failure.code, failure.message)
    report("indexed", run.job_id, run.elapsed(), summary.as_dict(), as_json)
    return summary


def say_failures(summary: IndexSummary) -> None:
    """One line before serving: the files left out, which the summary lists."""
    if summary.failed:
        log.warning(
            "%s could not be indexed (listed above); serving the rest",
            plural(summary.failed, "file"),
        )
