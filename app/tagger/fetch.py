"""Download the published model files with huggingface_hub.

This is the only code that touches the network; loading never does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

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
    "wd-eva02-large-v3": PublishedModel(
        "SmilingWolf/wd-eva02-large-tagger-v3",
        ("model.safetensors", "selected_tags.csv", "config.json"),
        gated=False,
    ),
}


class FetchError(Exception):
    """A download failed; the message says why and what to do next."""


def fetch_model(name: str, directory: Path, token: str | None = None) -> Path:
    """Download every file of a published model into ``directory``."""
    if name not in PUBLISHED:
        raise FetchError(f"unknown model {name!r}; choose one of: {', '.join(PUBLISHED)}")
    model = PUBLISHED[name]
    from huggingface_hub import hf_hub_download

    directory.mkdir(parents=True, exist_ok=True)
    for filename in model.files:
        log.info("downloading %s/%s", model.repo_id, filename)
        try:
            hf_hub_download(model.repo_id, filename, local_dir=directory, token=token)
        except Exception as exc:
            raise FetchError(explain_failure(exc, model)) from exc
    return directory


def explain_failure(exc: Exception, model: PublishedModel) -> str:
    """Map huggingface_hub's exceptions to one line: what went wrong, what to do next."""
    from huggingface_hub import errors

    repo = model.repo_id
    page = f"https://huggingface.co/{repo}"
    if isinstance(exc, errors.GatedRepoError):
        return (
            f"{repo} is gated: accept its terms at {page} with your account, then set "
            "HF_TOKEN to a token of that account"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        hint = (
            "set HF_TOKEN to a token whose account accepted the terms at " + page
            if model.gated
            else "check the token in HF_TOKEN"
        )
        return f"{repo}: not found or not authorised (HTTP 401/404); {hint}"
    if isinstance(exc, errors.OfflineModeIsEnabled) or (
        isinstance(exc, errors.LocalEntryNotFoundError) and _offline_mode()
    ):
        return "offline mode is on (HF_HUB_OFFLINE=1); unset it, or copy the files in by hand"
    if isinstance(exc, errors.LocalEntryNotFoundError):
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


def _offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)
