"""Which published layout a model directory holds, and so which runtime runs it.

Four layouts, two runtimes:

* PixAI v0.9 (``*.pth`` + ``tags*.json``) and WD v3 (``model.safetensors`` +
  ``selected_tags.csv``) run on torch (:mod:`app.tagger.model`).
* The ONNX export of deepghs (``model.onnx``, ``selected_tags.csv``, ``preprocess.json``,
  ``categories.json``, ``thresholds.csv``: ``deepghs/pixai-tagger-v0.9-onnx``) and WD v3's own
  ``model.onnx`` (+ ``selected_tags.csv``) run on ONNX Runtime.

A directory with both torch weights and ``model.onnx`` is read as the torch layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.tagger.errors import ModelLoadError
from app.tagger.model import ModelFiles, locate_model_files

OnnxFamily = Literal["pixai", "wd"]

TORCH_LAYOUTS = {"pixai": "PixAI v0.9 (.pth)", "wd": "WD v3 (safetensors)"}
ONNX_LAYOUTS = {"pixai": "PixAI v0.9 ONNX (deepghs export)", "wd": "WD v3 ONNX"}


@dataclass(frozen=True)
class OnnxFiles:
    family: OnnxFamily
    directory: Path
    model: Path
    tags: Path
    preprocess: Path | None  # deepghs export: preprocess.json
    categories: Path | None  # deepghs export: categories.json
    thresholds: Path | None  # deepghs export: thresholds.csv (optional)
    config: Path | None  # WD: config.json (optional; gives the interpolation)

    @property
    def layout(self) -> str:
        return ONNX_LAYOUTS[self.family]


def locate_layout(directory: Path) -> ModelFiles | OnnxFiles:
    """The directory's layout: torch files (:class:`ModelFiles`) or :class:`OnnxFiles`."""
    onnx = directory / "model.onnx"
    torch_weights = (directory / "model.safetensors").is_file() or any(directory.glob("*.pth"))
    if not onnx.is_file() or torch_weights or not directory.is_dir():
        return locate_model_files(directory)
    tags = directory / "selected_tags.csv"
    preprocess, categories = directory / "preprocess.json", directory / "categories.json"
    if preprocess.is_file() or categories.is_file():
        _require(directory, tags, preprocess, categories, layout=ONNX_LAYOUTS["pixai"])
        thresholds = directory / "thresholds.csv"
        return OnnxFiles(
            "pixai",
            directory,
            onnx,
            tags,
            preprocess,
            categories,
            thresholds if thresholds.is_file() else None,
            None,
        )
    _require(directory, tags, layout=ONNX_LAYOUTS["wd"])
    config = directory / "config.json"
    return OnnxFiles(
        "wd", directory, onnx, tags, None, None, None, config if config.is_file() else None
    )


def _require(directory: Path, *paths: Path, layout: str) -> None:
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ModelLoadError(
            f"{directory} looks like a {layout} model but lacks {', '.join(missing)}"
        )
