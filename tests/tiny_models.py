"""Build tiny EVA02 taggers in the two published file layouts (PixAI v0.9, WD v3).

They load through exactly the code path of the real models; only the config's
architecture arguments make them small. Weights are random, so their tags mean nothing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from torch import nn

TINY_SIZE = 56
TINY_DIM = 32

TINY_CONFIG = {
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


def tiny_encoder(num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    args = dict(TINY_CONFIG["model_args"])
    args["ref_feat_shape"] = tuple(args["ref_feat_shape"])
    return timm.create_model(
        TINY_CONFIG["architecture"], pretrained=False, num_classes=num_classes, **args
    )


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


def build_tiny_pixai(directory: Path, seed: int = 0, with_config: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tags = GENERAL_TAGS + CHARACTER_TAGS
    encoder = tiny_encoder(num_classes=0, seed=seed)
    head = _PixaiHead(TINY_DIM, len(tags))
    _spread(head.head[0], seed)
    torch.save(nn.Sequential(encoder, head).state_dict(), directory / "model_v0.9.pth")
    tag_file = {
        "tag_map": {name: i for i, name in enumerate(tags)},
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
    model = tiny_encoder(num_classes=len(rows), seed=seed)
    _spread(model.head, seed)
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
