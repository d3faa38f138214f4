"""The two real models' preprocessing at 448 px, as their loaders build it from WD v3's
EVA02-Large config: PixAI stretches (bilinear, RGB), WD v3 pads to a white square (bicubic,
BGR). Shared by the tests and benches that need the real geometry without a real model."""

from __future__ import annotations

from app.tagger.config import ModelConfig
from app.tagger.timm_tagger import preprocess_for

PIXAI = preprocess_for("pixai", ModelConfig.wd_eva02_large_v3())
WD = preprocess_for("wd", ModelConfig.wd_eva02_large_v3())
