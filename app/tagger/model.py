"""Find a model directory's files and build the network from them, strictly and offline.

Two published layouts are supported:

* PixAI v0.9: ``*.pth`` holding the state_dict of ``nn.Sequential(encoder, head)``
  (encoder keys ``0.``, head ``1.head.0.weight`` / ``.bias``), ``tags_*.json`` and
  optionally ``char_ip_map.json``.
* WD v3: ``model.safetensors`` with timm key names, ``selected_tags.csv``, ``config.json``.

Either may carry a ``config.json`` in timm's pretrained-config format; without one the
architecture is WD v3 EVA02-Large's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from app.tagger.config import ModelConfig
from app.tagger.errors import ModelLoadError

log = logging.getLogger(__name__)

Family = Literal["pixai", "wd"]

PIXAI_HEAD_WEIGHT = "1.head.0.weight"
WD_HEAD_WEIGHT = "head.weight"


@dataclass(frozen=True)
class ModelFiles:
    family: Family
    directory: Path
    weights: Path
    tags: Path
    config: Path | None
    char_ip_map: Path | None


def locate_model_files(directory: Path) -> ModelFiles:
    """Identify the layout of a model directory, or say exactly what is missing."""
    if not directory.exists():
        raise ModelLoadError(
            f"model directory {directory} does not exist; "
            "download one with 'sagashi model fetch pixai-v0.9-onnx --dir DIR'"
        )
    if not directory.is_dir():
        raise ModelLoadError(f"model directory {directory} is not a directory")
    config = _optional(directory / "config.json")
    safetensors = directory / "model.safetensors"
    selected = directory / "selected_tags.csv"
    if safetensors.is_file() or selected.is_file():
        _require(directory, safetensors, selected, layout="WD v3")
        return ModelFiles("wd", directory, safetensors, selected, config, None)
    checkpoints = sorted(directory.glob("*.pth"))
    tag_files = sorted(p for p in directory.glob("tags*.json") if p.is_file())
    if checkpoints or tag_files:
        if len(checkpoints) > 1:
            preferred = [p for p in checkpoints if p.name.startswith("model")]
            checkpoints = preferred[:1] or checkpoints[:1]
        weights = checkpoints[0] if checkpoints else directory / "model_v0.9.pth"
        tags = tag_files[0] if tag_files else directory / "tags_v0.9_13k.json"
        _require(directory, weights, tags, layout="PixAI v0.9")
        char_map = _optional(directory / "char_ip_map.json")
        if char_map is None:
            log.warning("%s has no char_ip_map.json: no copyright tags will be derived", directory)
        return ModelFiles("pixai", directory, weights, tags, config, char_map)
    raise ModelLoadError(
        f"{directory} holds no known model: expected PixAI v0.9 (model_v0.9.pth, "
        "tags_v0.9_13k.json, char_ip_map.json), WD v3 (model.safetensors, "
        "selected_tags.csv, config.json) or an ONNX export (model.onnx, selected_tags.csv, "
        "preprocess.json, categories.json)"
    )


def _optional(path: Path) -> Path | None:
    return path if path.is_file() else None


def _require(directory: Path, *paths: Path, layout: str) -> None:
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ModelLoadError(
            f"{directory} looks like a {layout} model but lacks {', '.join(missing)}"
        )


class PixaiHead(nn.Module):
    """PixAI's head, laid out so its keys are ``head.0.weight`` / ``head.0.bias``."""

    def __init__(self, in_features: int, num_tags: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(in_features, num_tags))


class TaggerNet(nn.Module):
    """Encoder plus linear head; one pass gives logits and the pooled embedding."""

    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        # timm models are untyped; forward_features/forward_head are checked at build time
        self.encoder: Any = encoder
        self.head = head

    @property
    def embedding_dim(self) -> int:
        return int(self.head.in_features)

    @property
    def num_tags(self) -> int:
        return int(self.head.out_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder.forward_features(x)
        pooled = self.encoder.forward_head(features, pre_logits=True)
        return self.head(pooled), pooled


def create_encoder(config: ModelConfig, num_classes: int) -> Any:
    import timm  # imported here: timm's import is slow and only loading needs it

    try:
        model = timm.create_model(
            config.architecture, pretrained=False, num_classes=num_classes, **config.model_args
        )
    except RuntimeError as exc:
        raise ModelLoadError(f"cannot build architecture {config.architecture!r}: {exc}") from exc
    except TypeError as exc:
        raise ModelLoadError(f"config model_args rejected by {config.architecture}: {exc}") from exc
    if not hasattr(model, "forward_head") or not hasattr(model, "forward_features"):
        raise ModelLoadError(f"{config.architecture} has no forward_features/forward_head")
    return model


def build_network(files: ModelFiles, config: ModelConfig) -> TaggerNet:
    if files.family == "pixai":
        return _build_pixai(files.weights, config)
    return _build_wd(files.weights, config)


def _build_pixai(path: Path, config: ModelConfig) -> TaggerNet:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad pickles
        raise ModelLoadError(f"{path}: not a loadable torch checkpoint ({exc})") from exc
    state = _tensor_mapping(state, path)
    head_weight = state.get(PIXAI_HEAD_WEIGHT)
    if head_weight is None or head_weight.ndim != 2:
        raise ModelLoadError(
            f"{path}: not a PixAI checkpoint (no 2-d '{PIXAI_HEAD_WEIGHT}' tensor)"
        )
    num_tags, dim = head_weight.shape
    encoder = create_encoder(config, num_classes=0)
    if int(getattr(encoder, "num_features", dim)) != dim:
        raise ModelLoadError(
            f"{path}: head takes {dim}-d features but {config.architecture} gives "
            f"{encoder.num_features}-d; the checkpoint and config.json disagree"
        )
    head = PixaiHead(dim, num_tags)
    strict_load(nn.Sequential(encoder, head), state, path)
    return TaggerNet(encoder, cast(nn.Linear, head.head[0]))


def _build_wd(path: Path, config: ModelConfig) -> TaggerNet:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
    head_weight = state.get(WD_HEAD_WEIGHT)
    if head_weight is None or head_weight.ndim != 2:
        raise ModelLoadError(f"{path}: no 2-d '{WD_HEAD_WEIGHT}' tensor (classifier head)")
    num_tags = int(head_weight.shape[0])
    if config.num_classes is not None and config.num_classes != num_tags:
        raise ModelLoadError(
            f"{path}: head has {num_tags} outputs but config.json says num_classes "
            f"{config.num_classes}"
        )
    encoder = create_encoder(config, num_classes=num_tags)
    strict_load(encoder, state, path)
    head = encoder.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ModelLoadError(f"{config.architecture}: classifier is not a linear layer")
    encoder.reset_classifier(0)
    return TaggerNet(encoder, head)


def _tensor_mapping(state: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelLoadError(f"{path}: expected a plain state_dict (name -> tensor)")
    return dict(state)


def strict_load(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Load every tensor, or fail naming the keys and shapes that do not match."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} with wrong shape (e.g. {'; '.join(wrong[:3])})")
    if problems:
        raise ModelLoadError(
            f"{path}: checkpoint does not fit the architecture: {'; '.join(problems)}"
        )
    module.load_state_dict(state, strict=True)
