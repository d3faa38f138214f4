"""Turn a decoded RGB image into the exact input tensor a model was trained on.

The two supported models differ here, and each difference changes every score:
PixAI v0.9 stretches to a square with bilinear resampling and keeps RGB; WD v3 pads to a
white square, resizes bicubic and feeds BGR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

ResizeMode = Literal["stretch", "pad"]
ChannelOrder = Literal["RGB", "BGR"]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Large JPEGs are decoded at a reduced DCT scale, but never below this multiple of the
# model input size, so the following antialiased resize sees enough pixels that the
# difference is resize noise (measured in docs/benchmarks.md).
DRAFT_OVERSAMPLE = 2


class ImagePreprocess(Protocol):
    """What the decode pipeline needs of a model's preprocessing, whichever runtime runs it."""

    @property
    def size(self) -> int: ...

    def draft_request(self, width: int, height: int) -> tuple[int, int] | None: ...

    def tensor(self, image: Image.Image) -> torch.Tensor: ...

    def description(self) -> str: ...


@dataclass(frozen=True)
class Preprocess:
    size: int
    resize: ResizeMode
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: ChannelOrder
    pad_color: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"unsupported interpolation {self.interpolation!r}")
        if self.size < 1:
            raise ValueError("input size must be positive")

    def description(self) -> str:
        """The text a generation records: equal text, equal input tensors."""
        return (
            f"{self.resize} {self.size}x{self.size} {self.interpolation} mean={list(self.mean)} "
            f"std={list(self.std)} {self.channel_order}"
        )

    def draft_request(self, width: int, height: int) -> tuple[int, int] | None:
        """The smallest decode size that keeps the result within resize noise, or None."""
        target = self.size * DRAFT_OVERSAMPLE
        if self.resize == "stretch":
            request = (min(width, target), min(height, target))
        else:
            longest = max(width, height)
            request = (
                min(width, math.ceil(target * width / longest)),
                min(height, math.ceil(target * height / longest)),
            )
        return None if request == (width, height) else request

    def geometry(self, image: Image.Image) -> Image.Image:
        """Square and resize an RGB image to the model's input size."""
        if self.resize == "pad":
            image = pad_to_square(image, self.pad_color)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), _RESAMPLE[self.interpolation])
        return image

    def tensor(self, image: Image.Image) -> torch.Tensor:
        """A (3, size, size) float32 tensor, normalised and in the model's channel order."""
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        pixels = np.asarray(self.geometry(image), dtype=np.float32)
        pixels = pixels * (1.0 / 255.0)
        pixels -= np.asarray(self.mean, dtype=np.float32)
        pixels /= np.asarray(self.std, dtype=np.float32)
        if self.channel_order == "BGR":
            pixels = pixels[:, :, ::-1]
        import torch  # lazily: the modules that only read a Preprocess start without torch

        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def pad_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    canvas = Image.new("RGB", (side, side), color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas
