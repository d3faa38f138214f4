"""JPEGs decoded on the model's device (the GPU's nvJPEG through torchvision), batched, and
other images resized there.

On a GPU run the readers' CPU time is mostly JPEG decoding and resizing (about 40 ms of a
CPU core for a 2000x1500 photo-like JPEG, drafted); the GPU decodes and resizes the same
batch several times faster (docs/benchmarks.md). A reader then only reads, hashes and
parses the header, and hands the bytes on as a :class:`Jpeg` when the device decoder takes
the file as Pillow would:

* 8-bit baseline or progressive JPEG in YCbCr or greyscale (Pillow mode RGB or L); CMYK,
  YCCK and anything else stays on the CPU path;
* within the pixel limit (else the CPU path refuses it with its own message) and at most
  4096x4096 pixels (larger ones decode on the CPU at a reduced scale, which bounds the
  device memory a batch can take);
* EXIF orientation applied as ``ImageOps.exif_transpose`` does;
* a model preprocessing the device can reproduce (:func:`supports`): stretch or pad to a
  square, bilinear, bicubic or nearest resizing.

A file the device decoder refuses (truncated, corrupt) is decoded on the CPU from the same
bytes, so its error or pixels are exactly the CPU path's. The device resize is torch's
antialiased interpolation, not Pillow's: scores differ from the CPU path's within the
tolerance measured in docs/benchmarks.md; SAGASHI_DEVICE_JPEG=off keeps every decode on
the CPU.

Images the readers decode (PNG, WebP, GIF, the JPEGs above that stay on the CPU) are handed
on as a :class:`Frame`, their upright pixels at decoded size as a view of Pillow's memory,
when SAGASHI_DEVICE_RESIZE is on: the pad and resize to model size, about a third of a PNG's CPU
time, then run on the device in groups of one size (:func:`shape_frames`), with the same
geometry as the device JPEGs'.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from app.tagger.preprocess import ImagePreprocess, Preprocess

if TYPE_CHECKING:
    import torch

EXIF_ORIENTATION = 0x0112
# Larger JPEGs decode on the CPU, drafted at a reduced DCT scale: the device decodes at full
# size, and a batch of 64 such images already takes 3.2 GB of device memory at this bound
# (SAGASHI_MAX_IMAGE_PIXELS allows 179M pixels: 34 GB for a batch).
DEVICE_MAX_PIXELS = 4096 * 4096
# A JPEG waits as bytes until its batch is staged (up to three batches ahead): larger files are
# decoded by the readers, which keep only the model-size pixels.
DEVICE_MAX_BYTES = 8 << 20
# A decoded frame waits at full size, 4 bytes a pixel, until its batch is staged: at most
# 2.6M pixels (1600x1200, 1200x1800 and 1536x1536 pass; 2048x2048 is resized by its reader).
FRAME_MAX_BYTES = 10 << 20
_JPEG_MAGIC = b"\xff\xd8\xff"
_DEVICE_MODES = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Jpeg:
    """A JPEG for the device to decode: its bytes and EXIF orientation (1-8)."""

    data: bytes
    orientation: int = 1


@dataclass(frozen=True, eq=False)
class Frame:
    """A decoded image for the device to pad and resize, upright: (H, W, 4) uint8 RGBX (the
    fourth byte ignored) or (H, W, 3) RGB (:func:`frame_pixels`)."""

    pixels: np.ndarray


@dataclass(frozen=True)
class JpegHeader:
    jpeg: Jpeg
    width: int  # upright, as the CPU path reports it
    height: int


def supports(preprocess: ImagePreprocess) -> bool:
    """Whether the device can reproduce this preprocessing's geometry."""
    return isinstance(preprocess, Preprocess) and preprocess.interpolation in _DEVICE_MODES


def frame_for_device(image: Image.Image, preprocess: ImagePreprocess) -> Frame | None:
    """A decoded RGB image as a :class:`Frame` when the device should shape it: within
    :data:`FRAME_MAX_BYTES` and not at model size already (then the host pixels are the same
    and no larger); else None (the reader shapes it)."""
    if not supports(preprocess) or image.mode != "RGB":
        return None
    width, height = image.size
    if width * height * 4 > FRAME_MAX_BYTES or image.size == (preprocess.size, preprocess.size):
        return None
    return Frame(frame_pixels(image))


def frame_pixels(image: Image.Image) -> np.ndarray:
    """An RGB image's pixels as an (H, W, 4) RGBX view of Pillow's own memory, through its
    Arrow export: no copy. ``np.asarray`` copies them through Pillow's encoder holding the
    GIL, 4 ms for a 1600x1200 frame, which the model thread and the other readers wait out
    (docs/benchmarks.md). An image Pillow keeps in several blocks, or any image under a
    Pillow before 11.2 (which has no Arrow export), is copied as (H, W, 3)."""
    import pyarrow as pa  # lazily: a reader that hands no frames on does not load it

    width, height = image.size
    if not hasattr(image, "__arrow_c_array__"):  # pa.array would take it for a sequence
        return np.asarray(image)
    try:
        exported = pa.array(image)
    except ValueError:  # rows not in one block: Pillow cannot export it without a copy
        return np.asarray(image)
    kind = exported.type
    if not (
        pa.types.is_fixed_size_list(kind)
        and kind.list_size == 4
        and kind.value_type == pa.uint8()
        and exported.offset == 0
        and len(exported) == width * height
    ):
        return np.asarray(image)
    values = exported.values  # its buffer keeps Pillow's memory alive, not the image
    data = np.frombuffer(values.buffers()[1], np.uint8, width * height * 4, values.offset)
    return data.reshape(height, width, 4)


def for_device(data: bytes, max_pixels: int) -> JpegHeader | None:
    """The file as a :class:`Jpeg` when the device decoder takes it as Pillow would, else
    None (the CPU path decodes it, and reports any problem in its words)."""
    if not data.startswith(_JPEG_MAGIC) or len(data) > DEVICE_MAX_BYTES:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only: nothing decoded
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            width, height = image.size
            if width < 1 or height < 1 or width * height > min(max_pixels, DEVICE_MAX_PIXELS):
                return None
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # any header problem: the CPU path says what it is
        return None
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1
    if orientation >= 5:  # 5-8 turn the image a quarter
        width, height = height, width
    return JpegHeader(Jpeg(data, orientation), width, height)


def decode_batch(
    jpegs: list[Jpeg], preprocess: Preprocess, device: torch.device
) -> list[torch.Tensor | None]:
    """Each JPEG as (S, S, 3) uint8 model-size pixels on ``device``; None for a file the
    device decoder refused (decode it on the CPU)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    datas = [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for j in jpegs]
    try:
        images: list[torch.Tensor | None] = list(
            decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        )
    except RuntimeError:  # one bad file fails the batched call: find it one by one
        images = [_decode_one(data, device) for data in datas]
    return _shaped(images, jpegs, preprocess)


def _shaped(
    images: list[torch.Tensor | None], jpegs: list[Jpeg], preprocess: Preprocess
) -> list[torch.Tensor | None]:
    """Each decoded image upright and at model size. Images of one size and orientation
    go through one resize together: a few kernel launches a batch instead of a few per
    image, which the staging thread would otherwise issue one by one against the readers
    and the model thread for the GIL."""
    import torch

    groups: dict[tuple[tuple[int, ...], int], list[int]] = {}
    for row, (image, jpeg) in enumerate(zip(images, jpegs, strict=True)):
        if image is not None:
            groups.setdefault((tuple(image.shape), jpeg.orientation), []).append(row)
    shaped: list[torch.Tensor | None] = [None] * len(images)
    for (_shape, orientation), rows in groups.items():
        stacked = torch.stack([images[row] for row in rows])  # type: ignore[misc]
        turned = geometry(upright(stacked, orientation), preprocess)
        for row, pixels in zip(rows, turned, strict=True):
            shaped[row] = pixels
    return shaped


def shape_frames(
    frames: list[Frame], preprocess: Preprocess, device: torch.device
) -> list[torch.Tensor]:
    """Each frame as (S, S, 3) uint8 model-size pixels on ``device``: frames of one shape are
    stacked (a copy that gives the GIL up), copied and resized together (see
    :func:`_shaped`); an RGBX frame's fourth byte is dropped on the device."""
    import torch

    groups: dict[tuple[int, ...], list[int]] = {}
    for row, frame in enumerate(frames):
        groups.setdefault(frame.pixels.shape, []).append(row)
    shaped: list[torch.Tensor] = [torch.empty(0)] * len(frames)
    for shape, rows in groups.items():
        host = torch.empty((len(rows), *shape), dtype=torch.uint8, pin_memory=device.type == "cuda")
        np.stack([frames[row].pixels for row in rows], out=host.numpy())
        on_device = host.to(device, non_blocking=True)[..., :3].permute(0, 3, 1, 2)
        for row, pixels in zip(rows, geometry(on_device, preprocess), strict=True):
            shaped[row] = pixels
    return shaped


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        image: torch.Tensor = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        return image
    except RuntimeError:
        return None


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(..., H, W) images turned as ``ImageOps.exif_transpose`` turns them."""
    import torch

    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2).flip(-1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, k=-1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2).flip(-1)
    if orientation == 8:
        return torch.rot90(image, k=1, dims=(-2, -1))
    return image


def geometry(images: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """:meth:`Preprocess.geometry` on the device: (N, 3, H, W) uint8 to (N, S, S, 3)
    uint8 (a single (3, H, W) image gives (S, S, 3))."""
    import torch
    import torch.nn.functional as F

    if images.dim() == 3:
        return geometry(images[None], preprocess)[0]
    if preprocess.resize == "pad":
        images = _pad_to_square(images, preprocess.pad_color)
    size = preprocess.size
    if tuple(images.shape[2:]) == (size, size):
        return images.permute(0, 2, 3, 1).contiguous()
    mode = preprocess.interpolation
    resized = F.interpolate(
        images.float(), size=(size, size), mode=mode, antialias=mode != "nearest"
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _pad_to_square(images: torch.Tensor, color: tuple[int, int, int]) -> torch.Tensor:
    import torch

    count, _, height, width = images.shape
    side = max(width, height)
    if width == height:
        return images
    canvas = torch.tensor(color, dtype=torch.uint8, device=images.device)
    canvas = canvas[None, :, None, None].expand(count, 3, side, side).clone()
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, :, top : top + height, left : left + width] = images
    return canvas
