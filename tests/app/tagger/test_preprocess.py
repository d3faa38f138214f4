"""Preprocessing against tensors computed by hand from pixels of known colour.

Each published difference between the models is pinned by a test that fails if swapped:
stretch vs pad, bilinear vs bicubic, RGB vs BGR.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.tagger.config import ModelConfig
from app.tagger.preprocess import Preprocess
from app.tagger.timm_tagger import preprocess_for

PIXAI = preprocess_for("pixai", ModelConfig.wd_eva02_large_v3())
WD = preprocess_for("wd", ModelConfig.wd_eva02_large_v3())


def norm(value: int) -> float:
    return (value / 255.0 - 0.5) / 0.5


def solid(color: tuple[int, int, int], size: tuple[int, int] = (60, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_published_preprocessing_of_each_model() -> None:
    assert (PIXAI.size, PIXAI.resize, PIXAI.interpolation, PIXAI.channel_order) == (
        448,
        "stretch",
        "bilinear",
        "RGB",
    )
    assert (WD.size, WD.resize, WD.interpolation, WD.channel_order) == (
        448,
        "pad",
        "bicubic",
        "BGR",
    )
    assert PIXAI.mean == WD.mean == (0.5, 0.5, 0.5)
    assert PIXAI.std == WD.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("color", "rgb_expected"),
    [
        ((255, 0, 0), (1.0, -1.0, -1.0)),
        ((0, 0, 255), (-1.0, -1.0, 1.0)),
        ((255, 255, 255), (1.0, 1.0, 1.0)),
        ((0, 0, 0), (-1.0, -1.0, -1.0)),
        ((51, 102, 204), (norm(51), norm(102), norm(204))),
    ],
)
def test_normalisation_and_channel_order(
    color: tuple[int, int, int], rgb_expected: tuple[float, ...]
) -> None:
    rgb = PIXAI.tensor(solid(color, (448, 448)))
    bgr = WD.tensor(solid(color, (448, 448)))
    assert rgb.shape == bgr.shape == (3, 448, 448)
    assert rgb.dtype == torch.float32
    for channel, value in enumerate(rgb_expected):
        assert torch.allclose(rgb[channel], torch.full((448, 448), value), atol=1e-6)
        assert torch.allclose(bgr[2 - channel], torch.full((448, 448), value), atol=1e-6)


def test_stretch_fills_the_square_but_pad_adds_white_bars() -> None:
    # A wide red image: stretched it stays red everywhere; padded, top and bottom are white.
    wide = solid((255, 0, 0), (200, 100))
    stretched = PIXAI.tensor(wide)
    padded = WD.tensor(wide)
    assert torch.allclose(stretched[0], torch.ones(448, 448))
    assert torch.allclose(stretched[1], -torch.ones(448, 448))
    # BGR: channel 2 is red. Rows 0..~111 are padding (white), the middle is red.
    assert torch.allclose(padded[:, :100, :], torch.ones(3, 100, 448))
    assert torch.allclose(padded[:, -100:, :], torch.ones(3, 100, 448))
    middle = padded[:, 200:248, :]
    assert torch.allclose(middle[2], torch.ones_like(middle[2]))
    assert torch.allclose(middle[0], -torch.ones_like(middle[0]))


def test_padding_is_centred() -> None:
    tall = solid((0, 0, 0), (50, 100))
    padded = Preprocess(100, "pad", "bicubic", (0.5,) * 3, (0.5,) * 3, "RGB").tensor(tall)
    columns_black = (padded[0] < -0.99).all(dim=0).nonzero().flatten()
    assert columns_black.min().item() == 25
    assert columns_black.max().item() == 74


def step_edge() -> Image.Image:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[:, 4:] = 255
    return Image.fromarray(pixels)


def test_bicubic_overshoots_a_step_edge_and_bilinear_does_not() -> None:
    # Upscaling a hard black/white edge: bicubic rings past the input range, bilinear never.
    bicubic = Preprocess(64, "stretch", "bicubic", (0.5,) * 3, (0.5,) * 3, "RGB").tensor(
        step_edge()
    )
    bilinear = Preprocess(64, "stretch", "bilinear", (0.5,) * 3, (0.5,) * 3, "RGB").tensor(
        step_edge()
    )
    assert bilinear.min().item() >= -1.0 - 1e-6
    assert bilinear.max().item() <= 1.0 + 1e-6
    assert bicubic.min().item() < -1.0 + 1e-6 or bicubic.max().item() > 1.0 - 1e-6
    assert not torch.allclose(bicubic, bilinear)
    # PixAI must use the bilinear one; WD the bicubic one.
    assert PIXAI.interpolation == "bilinear"
    assert WD.interpolation == "bicubic"


def test_bilinear_matches_linear_interpolation_by_hand() -> None:
    # Two columns, black then white, doubled to four: Pillow's bilinear (support 1)
    # gives 0, 0.25, 0.75, 1 of the way from black to white.
    image = Image.fromarray(np.array([[[0] * 3, [255] * 3]], dtype=np.uint8))
    out = Preprocess(4, "stretch", "bilinear", (0.0,) * 3, (1.0,) * 3, "RGB").tensor(image)
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]), atol=2 / 255)


def test_draft_request_keeps_at_least_twice_the_input_size() -> None:
    assert PIXAI.draft_request(4000, 3000) == (896, 896)
    assert PIXAI.draft_request(800, 600) is None
    assert WD.draft_request(4000, 2000) == (896, 448)
    assert WD.draft_request(500, 500) is None


def test_non_rgb_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="expected an RGB image"):
        PIXAI.tensor(Image.new("L", (10, 10)))
