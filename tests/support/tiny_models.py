"""Build tiny EVA02 taggers in the two published file layouts (PixAI v0.9, WD v3).

They load through exactly the code path of the real models; only the config's
architecture arguments make them small. Weights are random, so their tags mean nothing.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.eva import Eva
from torch import nn

TINY_SIZE = 56
TINY_DIM = 32


class TinyModelArgs(TypedDict):
    img_size: int
    embed_dim: int
    depth: int
    num_heads: int
    ref_feat_shape: list[int]


class TinyConfig(TypedDict):
    """The config.json of the tiny models, as the published repositories lay it out."""

    architecture: str
    num_features: int
    global_pool: str
    model_args: TinyModelArgs
    pretrained_cfg: dict[str, object]


TINY_CONFIG: TinyConfig = {
    "architecture": "eva02_tiny_patch14_224",
    "num_features": TINY_DIM,
    "global_pool": "avg",
    # 56 / 14 = a 4x4 patch grid; ref_feat_shape must follow it, as (32, 32) does for 448.
    "model_args": {
        "img_size": TINY_SIZE,
        "embed_dim": TINY_DIM,
        "depth": 2,
        "num_heads": 2,
        "ref_feat_shape": [4, 4],
    },
    "pretrained_cfg": {
        "input_size": [3, TINY_SIZE, TINY_SIZE],
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
}

GENERAL_TAGS = [
    "1girl",
    "solo",
    "long_hair",
    "smile",
    "blush",
    "monochrome",
    "doughnut",
    "^_^",
    "open_mouth",
    "looking_at_viewer",
    "star_(symbol)",
    "hat",
]
CHARACTER_TAGS = [
    "hu_tao_(genshin_impact)",
    "amiya_(arknights)",
    "surtr_(arknights)",
    "hatsune_miku",
]
CHAR_IP_MAP = {
    "hu_tao_(genshin_impact)": ["genshin_impact"],
    "amiya_(arknights)": ["arknights"],
    "surtr_(arknights)": ["arknights"],
    "hatsune_miku": ["vocaloid"],
}
RATING_TAGS = ["general", "sensitive", "questionable", "explicit"]


def tiny_encoder(num_classes: int, seed: int) -> Eva:
    torch.manual_seed(seed)
    model_args = TINY_CONFIG["model_args"]
    # timm's model keyword arguments are untyped (**kwargs: Any).
    args: dict[str, Any] = {**model_args, "ref_feat_shape": tuple(model_args["ref_feat_shape"])}
    model = timm.create_model(
        TINY_CONFIG["architecture"], pretrained=False, num_classes=num_classes, **args
    )
    assert isinstance(model, Eva)
    return model


def _spread(linear: nn.Linear, seed: int) -> None:
    # timm initialises heads near zero, which would put every score at 0.5.
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.6)
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=generator) * 0.8)


class _PixaiHead(nn.Module):
    def __init__(self, dim: int, num_tags: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim, num_tags))


def tiny_pixai_network(seed: int = 0) -> nn.Sequential:
    """The tiny PixAI network: ``nn.Sequential(encoder, head)``, as the .pth stores it."""
    encoder = tiny_encoder(num_classes=0, seed=seed)
    head = _PixaiHead(TINY_DIM, len(GENERAL_TAGS) + len(CHARACTER_TAGS))
    linear = head.head[0]
    assert isinstance(linear, nn.Linear)
    _spread(linear, seed)
    return nn.Sequential(encoder, head)


def tiny_wd_network(seed: int = 0) -> nn.Module:
    num_classes = len(RATING_TAGS) + len(GENERAL_TAGS) + len(CHARACTER_TAGS)
    model = tiny_encoder(num_classes=num_classes, seed=seed)
    assert isinstance(model.head, nn.Linear)
    _spread(model.head, seed)
    return model


def build_tiny_pixai(directory: Path, seed: int = 0, with_config: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_pixai_network(seed).state_dict(), directory / "model_v0.9.pth")
    tag_file = {
        "tag_map": {name: i for i, name in enumerate(GENERAL_TAGS + CHARACTER_TAGS)},
        "tag_split": {
            "gen_tag_count": len(GENERAL_TAGS),
            "character_tag_count": len(CHARACTER_TAGS),
        },
    }
    (directory / "tags_v0.9_13k.json").write_text(json.dumps(tag_file))
    (directory / "char_ip_map.json").write_text(json.dumps(CHAR_IP_MAP))
    if with_config:
        (directory / "config.json").write_text(json.dumps(TINY_CONFIG))
    return directory


def build_tiny_wd(directory: Path, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [(name, 9) for name in RATING_TAGS]
    rows += [(name, 0) for name in GENERAL_TAGS] + [(name, 4) for name in CHARACTER_TAGS]
    model = tiny_wd_network(seed)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors"
    )
    with (directory / "selected_tags.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category) in enumerate(rows):
            writer.writerow([1000 + i, name, category, 5000 - i])
    config = json.loads(json.dumps(TINY_CONFIG))
    config["num_classes"] = len(rows)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# -- ONNX layouts --------------------------------------------------------------------------


class PixaiOnnxOutputs(nn.Module):
    """The deepghs export's graph: (N, 3, S, S) -> embedding, logits, prediction."""

    def __init__(self, network: nn.Sequential) -> None:
        super().__init__()
        encoder, head = network[0], network[1]
        assert isinstance(encoder, Eva) and isinstance(head, _PixaiHead)
        self.encoder = encoder
        self.linear = head.head[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = self.encoder.forward_head(self.encoder.forward_features(x), pre_logits=True)
        logits = self.linear(pooled)
        return pooled, logits, torch.sigmoid(logits)


class WdOnnxOutputs(nn.Module):
    """WD's own graph: (N, S, S, 3) BGR in 0..255 -> probabilities (normalised inside)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2) / 255.0
        return torch.sigmoid(self.model((x - 0.5) / 0.5))


def export_onnx(
    module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str], opset: int = 17
) -> None:
    module.eval()
    axes = {name: {0: "batch_size"} for name in ["input", *outputs]}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and trace notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["input"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def pixai_preprocess_json(size: int) -> str:
    """preprocess.json as the export writes it (imgutils' parse_torchvision_transforms of
    PixAI's Resize((S, S)), ToTensor(), Normalize(0.5, 0.5); sort_keys, indent 4)."""
    stages = [
        {
            "antialias": True,
            "interpolation": "bilinear",
            "max_size": None,
            "size": [size, size],
            "type": "resize",
        },
        {"type": "to_tensor"},
        {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "type": "normalize"},
    ]
    return json.dumps({"stages": stages}, sort_keys=True, ensure_ascii=False, indent=4)


def openvino_installed() -> bool:
    """Whether ONNX Runtime here has OpenVINO's provider (onnxruntime-openvino, the
    'openvino' extra): ONNX models then run on it by default, in bf16."""
    import onnxruntime

    from app.tagger.onnx_tagger import OPENVINO

    return OPENVINO in onnxruntime.get_available_providers()


def build_tiny_pixai_onnx(directory: Path, seed: int = 0) -> Path:
    """The tiny PixAI network (same weights as build_tiny_pixai's seed) in the deepghs
    export layout: model.onnx, selected_tags.csv (with ips), preprocess.json,
    categories.json, thresholds.csv."""
    directory.mkdir(parents=True, exist_ok=True)
    network = tiny_pixai_network(seed).eval()
    example = torch.zeros(1, 3, TINY_SIZE, TINY_SIZE)
    export_onnx(
        PixaiOnnxOutputs(network),
        example,
        directory / "model.onnx",
        ["embedding", "logits", "prediction"],
    )
    with (directory / "selected_tags.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "tag_id", "name", "category", "count", "ips"])
        tags = [(n, 0) for n in GENERAL_TAGS] + [(n, 4) for n in CHARACTER_TAGS]
        for i, (name, category) in enumerate(tags):
            ips = json.dumps(CHAR_IP_MAP.get(name, []))
            writer.writerow([i, 2000 + i, name, category, 900 - i, ips])
    (directory / "preprocess.json").write_text(pixai_preprocess_json(TINY_SIZE))
    categories = [{"category": 0, "name": "general"}, {"category": 4, "name": "character"}]
    (directory / "categories.json").write_text(
        json.dumps(categories, sort_keys=True, ensure_ascii=False, indent=4)
    )
    (directory / "thresholds.csv").write_text(
        "category,name,threshold\n0,general,0.3\n4,character,0.85\n"
    )
    return directory


def build_tiny_wd_onnx(directory: Path, seed: int = 0) -> Path:
    """The tiny WD network (same weights as build_tiny_wd's seed) as WD publishes ONNX:
    model.onnx taking NHWC BGR 0..255, one output, plus selected_tags.csv and config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    model = tiny_wd_network(seed).eval()
    example = torch.zeros(1, TINY_SIZE, TINY_SIZE, 3)
    export_onnx(WdOnnxOutputs(model), example, directory / "model.onnx", ["output"])
    with (directory / "selected_tags.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        rows = [(n, 9) for n in RATING_TAGS] + [(n, 0) for n in GENERAL_TAGS]
        rows += [(n, 4) for n in CHARACTER_TAGS]
        for i, (name, category) in enumerate(rows):
            writer.writerow([1000 + i, name, category, 5000 - i])
    config = json.loads(json.dumps(TINY_CONFIG))
    config["num_classes"] = len(rows)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def direct_forward(directory: Path, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The reference: timm built by hand, weights loaded by hand, no Sagashi code."""
    model_args = TINY_CONFIG["model_args"]
    # timm's model keyword arguments are untyped (**kwargs: Any).
    args: dict[str, Any] = {**model_args, "ref_feat_shape": tuple(model_args["ref_feat_shape"])}
    if (directory / "model.safetensors").exists():
        state = load_file(directory / "model.safetensors")
        model = timm.create_model(
            TINY_CONFIG["architecture"], num_classes=state["head.weight"].shape[0], **args
        )
        model.load_state_dict(state)
        head = model.head
        assert isinstance(head, torch.nn.Linear)
    else:
        state = torch.load(directory / "model_v0.9.pth", weights_only=True)
        model = timm.create_model(TINY_CONFIG["architecture"], num_classes=0, **args)
        model.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("0.")})
        head = torch.nn.Linear(TINY_DIM, state["1.head.0.weight"].shape[0])
        head.weight.data = state["1.head.0.weight"]
        head.bias.data = state["1.head.0.bias"]
    assert isinstance(model, Eva)
    model.eval()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(batch), pre_logits=True)
        probs = torch.sigmoid(head(pooled))
    embedding = pooled / pooled.norm(dim=1, keepdim=True)
    return probs.numpy(), embedding.numpy()
