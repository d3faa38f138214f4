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
    """What the decode pipeline needs of a model's preprocessing, whichever runtime runs it.

    Preprocessing is split where the data turns into floats: :meth:`pixels` (decode side,
    numpy only, fit for worker processes) makes the (S, S, 3) uint8 RGB image at model size,
    four times smaller than floats to hand over; :meth:`normalise` turns a (N, S, S, 3) uint8
    batch into the model's (N, 3, S, S) float input on whatever device the batch is on (the
    GPU, for a GPU run). :meth:`tensor` is the two in a row for one image.
    """

    @property
    def size(self) -> int: ...

    def draft_request(self, width: int, height: int) -> tuple[int, int] | None: ...

    def pixels(self, image: Image.Image) -> np.ndarray: ...

    def normalise(self, batch: torch.Tensor) -> torch.Tensor: ...

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

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The (size, size, 3) uint8 RGB image the model sees, before normalisation."""
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        return np.array(self.geometry(image), dtype=np.uint8)  # writable: torch shares it

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, size, size, 3) uint8 to the (N, 3, size, size) float32 model input, on the
        batch's device. The same float32 operations in the same order as the reference
        pipelines (x / 255 as x * (1/255), minus mean, over std)."""
        import torch  # lazily: the modules that only read a Preprocess start without torch

        pixels = batch.to(torch.float32) * (1.0 / 255.0)
        pixels -= torch.tensor(self.mean, dtype=torch.float32, device=batch.device)
        pixels /= torch.tensor(self.std, dtype=torch.float32, device=batch.device)
        if self.channel_order == "BGR":
            pixels = pixels.flip(-1)
        return pixels.permute(0, 3, 1, 2).contiguous()

    def tensor(self, image: Image.Image) -> torch.Tensor:
        """A (3, size, size) float32 tensor, normalised and in the model's channel order."""
        return normalise_one(self, self.pixels(image))


def normalise_one(preprocess: ImagePreprocess, pixels: np.ndarray) -> torch.Tensor:
    """One image's model input from its uint8 pixels, through the batch normalisation."""
    import torch

    return preprocess.normalise(torch.from_numpy(pixels)[None])[0]


def pad_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    canvas = Image.new("RGB", (side, side), color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas
