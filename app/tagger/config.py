"""The model's architecture and normalisation, read from timm's pretrained-config format.

WD v3 ships ``config.json`` in this format; PixAI v0.9 does not, and uses WD v3
EVA02-Large's encoder, so that config is its default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.tagger.errors import ModelLoadError

# SmilingWolf/wd-eva02-large-tagger-v3 config.json (the fields this code reads).
# ref_feat_shape matters: timm's default (16, 16) silently changes every RoPE table.
WD_EVA02_LARGE_V3_CONFIG: dict[str, Any] = {
    "architecture": "eva02_large_patch14_448",
    "num_classes": 10861,
    "num_features": 1024,
    "global_pool": "avg",
    "model_args": {"img_size": 448, "ref_feat_shape": [32, 32]},
    "pretrained_cfg": {
        "custom_load": False,
        "input_size": [3, 448, 448],
        "fixed_input_size": False,
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "num_classes": 10861,
        "pool_size": None,
        "first_conv": None,
        "classifier": None,
    },
}


@dataclass(frozen=True)
class ModelConfig:
    """What building and feeding the network needs, from one config file."""

    architecture: str
    num_classes: int | None
    model_args: dict[str, Any] = field(default_factory=dict)
    input_size: int = 448
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> ModelConfig:
        if not isinstance(raw, dict) or not isinstance(raw.get("architecture"), str):
            raise ModelLoadError(f"{source}: not a timm pretrained config (no 'architecture')")
        pre = raw.get("pretrained_cfg") or {}
        model_args = dict(raw.get("model_args") or {})
        for key in ("ref_feat_shape",):
            if isinstance(model_args.get(key), list):
                model_args[key] = tuple(model_args[key])
        size = _input_size(pre, model_args, source)
        try:
            mean = _triple(pre.get("mean", (0.5, 0.5, 0.5)))
            std = _triple(pre.get("std", (0.5, 0.5, 0.5)))
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{source}: mean/std must be three numbers ({exc})") from exc
        num_classes = raw.get("num_classes", pre.get("num_classes"))
        return cls(
            architecture=raw["architecture"],
            num_classes=int(num_classes) if num_classes is not None else None,
            model_args=model_args,
            input_size=size,
            mean=mean,
            std=std,
            interpolation=str(pre.get("interpolation", "bicubic")),
        )

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{path}: unreadable config.json ({exc})") from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def wd_eva02_large_v3(cls) -> ModelConfig:
        return cls.from_dict(WD_EVA02_LARGE_V3_CONFIG, source="built-in WD v3 EVA02-Large config")


def _input_size(pre: dict[str, Any], model_args: dict[str, Any], source: str) -> int:
    size = pre.get("input_size")
    if size is not None:
        if not (isinstance(size, list | tuple) and len(size) == 3 and size[1] == size[2]):
            raise ModelLoadError(f"{source}: input_size must be [3, N, N], got {size!r}")
        return int(size[1])
    img_size = model_args.get("img_size", 448)
    if isinstance(img_size, list | tuple):
        img_size = img_size[0]
    return int(img_size)


def _triple(value: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in value)
    return (a, b, c)
