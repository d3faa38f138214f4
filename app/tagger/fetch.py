"""Download the published model files with huggingface_hub.

This is the only code that touches the network; loading never does. A fetch first asks the
Hub once, without retries, for the first file's metadata, so offline, unauthorised or gated
fails at once with one line. Files download into a hidden folder beside the target and are
moved in only when every file has arrived: an interrupted or failed fetch leaves no lock,
no ``.incomplete`` and no partial model in the target.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from app.errors import SagashiError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedModel:
    repo_id: str
    files: tuple[str, ...]
    gated: bool


PUBLISHED: dict[str, PublishedModel] = {
    "pixai-v0.9": PublishedModel(
        "pixai-labs/pixai-tagger-v0.9",
        ("model_v0.9.pth", "tags_v0.9_13k.json", "char_ip_map.json"),
        gated=True,
    ),
    "pixai-v0.9-onnx": PublishedModel(
        "deepghs/pixai-tagger-v0.9-onnx",
        ("model.onnx", "selected_tags.csv", "preprocess.json", "categories.json", "thresholds.csv"),
        gated=False,
    ),
    "wd-eva02-large-v3": PublishedModel(
        "SmilingWolf/wd-eva02-large-tagger-v3",
        ("model.safetensors", "selected_tags.csv", "config.json"),
        gated=False,
    ),
    "wd-eva02-large-v3-onnx": PublishedModel(
        "SmilingWolf/wd-eva02-large-tagger-v3",
        ("model.onnx", "selected_tags.csv", "config.json"),
        gated=False,
    ),
}
UNGATED_ALTERNATIVE = "pixai-v0.9-onnx"


class FetchError(SagashiError):
    """A download failed; the message says why and what to do next."""

    http_status = 502
    error_code = "fetch_failed"


def fetch_model(name: str, directory: Path, token: str | None = None) -> Path:
    """Download every file of a published model into ``directory``, all or nothing."""
    if name not in PUBLISHED:
        raise FetchError(f"unknown model {name!r}; choose one of: {', '.join(PUBLISHED)}")
    model = PUBLISHED[name]
    for client in ("httpx", "httpx2"):  # one line per request at INFO: the answer is ours
        logging.getLogger(client).setLevel(logging.WARNING)
    if _offline_mode():
        raise FetchError(explain_offline())
    try:
        probe(model, token)
        directory.parent.mkdir(parents=True, exist_ok=True)
        with _staging(directory) as staging, _interrupt_on_sigterm():
            for filename in model.files:
                log.info("downloading %s/%s", model.repo_id, filename)
                _download(model, filename, staging, token)
            _move_in(staging, directory, model.files)
    except FetchError:
        raise
    except (Exception, _Terminated) as exc:
        raise FetchError(explain_failure(exc, model)) from exc
    return directory


def probe(model: PublishedModel, token: str | None) -> None:
    """One metadata request, no retries: offline, unauthorised and gated fail here at once."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(model.repo_id, model.files[0])
    # huggingface_hub 1.2 and later retry this request unless told not to; before 1.2 it
    # retried none of its errors and had no such parameter
    takes_it = "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters
    once: dict[str, Any] = {"retry_on_errors": False} if takes_it else {}
    get_hf_file_metadata(url, token=token, **once)


def _download(model: PublishedModel, filename: str, staging: Path, token: str | None) -> None:
    from huggingface_hub import hf_hub_download

    hf_hub_download(model.repo_id, filename, local_dir=staging, token=token)


@contextlib.contextmanager
def _staging(directory: Path) -> Iterator[Path]:
    """A hidden folder beside ``directory``, removed whatever happens."""
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_in(staging: Path, directory: Path, files: tuple[str, ...]) -> None:
    """Move the downloaded files into ``directory`` (created if absent), each atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    for filename in files:
        os.replace(staging / filename, directory / filename)


class _Terminated(BaseException):
    """SIGTERM during a fetch: unwinds like Ctrl-C (a BaseException, so no library's
    ``except Exception`` retries through it) and the staging folder is removed."""


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Terminated("terminated")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def explain_offline() -> str:
    return "offline mode is on (HF_HUB_OFFLINE=1); unset it, or copy the files in by hand"


def explain_failure(exc: BaseException, model: PublishedModel) -> str:
    """Map huggingface_hub's exceptions to one line: what went wrong, what to do next."""
    from huggingface_hub import errors

    repo = model.repo_id
    page = f"https://huggingface.co/{repo}"
    alternative = (
        f"; or fetch the ungated ONNX export: sagashi model fetch {UNGATED_ALTERNATIVE}"
        if model.gated
        else ""
    )
    if isinstance(exc, _Terminated | KeyboardInterrupt):
        return f"download of {repo} interrupted; nothing was written to the target folder"
    if isinstance(exc, errors.GatedRepoError):
        return (
            f"{repo} is gated: accept its terms at {page} with your account, then set "
            f"HF_TOKEN to a token of that account{alternative}"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        hint = (
            "set HF_TOKEN to a token whose account accepted the terms at " + page
            if model.gated
            else "check the token in HF_TOKEN"
        )
        return f"{repo}: not found or not authorised (HTTP 401/404); {hint}{alternative}"
    if isinstance(exc, errors.OfflineModeIsEnabled) or (
        isinstance(exc, errors.LocalEntryNotFoundError) and _offline_mode()
    ):
        return explain_offline()
    if isinstance(exc, errors.LocalEntryNotFoundError) or _network_error(exc):
        return (
            f"cannot reach the Hugging Face Hub to download {repo}; check the network, or "
            f"download {', '.join(model.files)} elsewhere and copy them into the directory"
        )
    if isinstance(exc, errors.EntryNotFoundError):
        return f"{repo} has no file the download expected ({exc}); the repo layout changed"
    if isinstance(exc, errors.HfHubHTTPError):
        return f"download from {repo} failed: {str(exc).splitlines()[0]}"
    if isinstance(exc, OSError):
        return f"cannot write the model files: {exc}"
    return f"download from {repo} failed: {type(exc).__name__}: {exc}"


def _network_error(exc: BaseException) -> bool:
    """Connection refused, DNS, timeouts, by name, since huggingface_hub's HTTP client package
    differs between versions: httpx's (or httpx2's) TransportError from 1.0, requests'
    ConnectionError and Timeout (not the built-in classes) before."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "Timeout"}) or isinstance(
        exc, ConnectionError | TimeoutError
    )


def _offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)
