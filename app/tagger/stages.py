"""``preprocess.json``: imgutils' stage vocabulary, parsed into frozen dataclasses and applied.

The published ONNX exports (``deepghs/*-onnx``) describe their preprocessing as
``{"stages": [...]}`` in the vocabulary of imgutils' ``create_pillow_transforms``:
``convert_rgb``, ``resize``, ``center_crop``, ``pad_to_size``, ``to_tensor``,
``maybe_to_tensor``, ``rescale`` and ``normalize``. :func:`parse_stages` is a pure function
from the decoded JSON to a :class:`StagePipeline`; every problem is a
:class:`~app.tagger.errors.ModelLoadError` naming the file and the stage.

Images reach the pipeline already decoded to RGB on white (``app.tagger.decode``), as
imgutils' ``load_image(..., force_background='white', mode='RGB')`` hands them over.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageColor

from app.tagger.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

# imgutils accepts names and PIL's integer codes.
RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
_RESAMPLE_CODES = {0: "nearest", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming", 1: "lanczos"}

DRAFT_OVERSAMPLE = 2  # as app.tagger.preprocess: decode no smaller than twice the input


@dataclass(frozen=True)
class ConvertRGB:
    """Composite on ``background`` and convert to RGB (already done by decoding on white)."""

    background: tuple[int, int, int] = (255, 255, 255)


@dataclass(frozen=True)
class Resize:
    """``size`` (width, height) fixed, or ``shorter`` side to a length, capped by ``max_size``."""

    interpolation: str
    size: tuple[int, int] | None = None
    shorter: int | None = None
    max_size: int | None = None
    antialias: bool = True


@dataclass(frozen=True)
class CenterCrop:
    """Crop (width, height) from the centre; a smaller image is padded black first."""

    size: tuple[int, int]


@dataclass(frozen=True)
class PadToSize:
    """Fit inside (width, height) keeping the aspect ratio, centred on ``background``."""

    size: tuple[int, int]
    background: tuple[int, int, int]
    interpolation: str


@dataclass(frozen=True)
class ToTensor:
    """RGB 0..255 to a float32 (3, H, W) array in 0..1."""


@dataclass(frozen=True)
class Rescale:
    factor: float


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, ...]
    std: tuple[float, ...]


Stage = ConvertRGB | Resize | CenterCrop | PadToSize | ToTensor | Rescale | Normalize
_ARRAY_STAGES = (ToTensor, Rescale, Normalize)


@dataclass(frozen=True)
class StagePipeline:
    """A parsed ``preprocess.json``; :meth:`array` applies it to one RGB image."""

    stages: tuple[Stage, ...]
    source: str

    @property
    def size(self) -> int:
        """The side of the square input this pipeline produces."""
        return output_size(self.stages, self.source)

    def description(self) -> str:
        """Canonical text of the stages: equal pipelines give equal text."""
        return "stages " + json.dumps([_describe(s) for s in self.stages], sort_keys=True)

    def draft_request(self, width: int, height: int) -> tuple[int, int] | None:
        """A reduced JPEG decode size keeping the shorter side at twice the input, or None."""
        shorter = min(width, height)
        target = self.size * DRAFT_OVERSAMPLE
        if shorter <= target:
            return None
        scale = target / shorter
        return (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The (size, size, 3) uint8 RGB image after the image stages (those before
        ``to_tensor``); the array stages run in :meth:`normalise`."""
        value: Image.Image | np.ndarray = image
        for stage in self.stages:
            if isinstance(stage, _ARRAY_STAGES):
                break
            value = apply_stage(stage, value)
        assert isinstance(value, Image.Image)
        if value.mode != "RGB":
            value = value.convert("RGB")
        return np.array(value, dtype=np.uint8)  # writable: torch shares it

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, size, size, 3) uint8 to the (N, 3, size, size) float32 input: the array
        stages, as float32 operations in the order of their numpy reference."""
        import torch  # lazily, as app.tagger.preprocess

        value = batch.permute(0, 3, 1, 2).to(torch.float32) / 255
        for stage in self.stages:
            if isinstance(stage, Rescale):
                value = value * torch.tensor(stage.factor, dtype=torch.float32)
            elif isinstance(stage, Normalize):
                shape = (1, -1, 1, 1)
                mean = torch.tensor(stage.mean, dtype=torch.float32, device=batch.device)
                std = torch.tensor(stage.std, dtype=torch.float32, device=batch.device)
                value = (value - mean.reshape(shape)) / std.reshape(shape)
        return value.contiguous()

    def array(self, image: Image.Image) -> np.ndarray:
        """One image's float32 (3, size, size) input: every stage, in numpy (the reference
        :meth:`normalise` is tested against)."""
        value: Image.Image | np.ndarray = image
        for stage in self.stages:
            value = apply_stage(stage, value)
        if not isinstance(value, np.ndarray):
            value = apply_stage(ToTensor(), value)
        return np.ascontiguousarray(value, dtype=np.float32)

    def tensor(self, image: Image.Image) -> torch.Tensor:
        from app.tagger.preprocess import normalise_one

        return normalise_one(self, self.pixels(image))


# -- parsing -----------------------------------------------------------------------------


def load_preprocess_json(path: Path) -> StagePipeline:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: unreadable preprocess.json ({exc})") from exc
    return parse_stages(raw, str(path))


def parse_stages(raw: Any, source: str) -> StagePipeline:
    """The pipeline a decoded ``preprocess.json`` describes; pure, no I/O."""
    stages = raw.get("stages") if isinstance(raw, dict) else None
    if not isinstance(stages, list) or not stages:
        raise ModelLoadError(f'{source}: expected {{"stages": [...]}} with at least one stage')
    parsed = tuple(_parse_stage(item, index, source) for index, item in enumerate(stages))
    output_size(parsed, source)  # refuses a pipeline that does not end in a square
    _check_order(parsed, source)
    return StagePipeline(parsed, source)


def _check_order(stages: tuple[Stage, ...], source: str) -> None:
    """Image stages first, array stages after: the image stages run where the file is
    decoded and the array stages where the batch is (the GPU, in a GPU run)."""
    arrays = False
    for index, stage in enumerate(stages):
        if isinstance(stage, _ARRAY_STAGES):
            arrays = True
        elif arrays:
            raise ModelLoadError(
                f"{source}: stage {index} ({_describe(stage)['type']}) works on images and "
                "must come before to_tensor, rescale and normalize"
            )


def _parse_stage(item: Any, index: int, source: str) -> Stage:
    where = f"{source}: stage {index}"
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        raise ModelLoadError(f"{where}: expected an object with a 'type'")
    args = {k: v for k, v in item.items() if k != "type"}
    kind = item["type"]
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ModelLoadError(
            f"{where}: unknown stage type {kind!r}; supported: {', '.join(sorted(_PARSERS))}"
        )
    try:
        return parser(args)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{where} ({kind}): {exc}") from None


def _only(args: Mapping[str, Any], *allowed: str) -> None:
    extra = sorted(set(args) - set(allowed))
    if extra:
        raise ValueError(f"unexpected argument(s) {', '.join(extra)}")


def _parse_resize(args: Mapping[str, Any]) -> Resize:
    _only(args, "size", "interpolation", "max_size", "antialias")
    interpolation = _interpolation(args.get("interpolation", "bilinear"))
    max_size = args.get("max_size")
    if max_size is not None:
        max_size = _positive(max_size, "max_size")
    antialias = bool(args.get("antialias", True))
    size = args["size"]
    if isinstance(size, list | tuple) and len(size) == 2:
        if max_size is not None:
            raise ValueError("max_size only applies to a single size")
        height, width = (_positive(v, "size") for v in size)  # torchvision order: (h, w)
        return Resize(interpolation, size=(width, height), antialias=antialias)
    if isinstance(size, list | tuple) and len(size) == 1:
        size = size[0]
    return Resize(
        interpolation, shorter=_positive(size, "size"), max_size=max_size, antialias=antialias
    )


def _parse_center_crop(args: Mapping[str, Any]) -> CenterCrop:
    _only(args, "size")
    height, width = _pair(args["size"])  # torchvision order: (h, w)
    return CenterCrop((width, height))


def _parse_pad_to_size(args: Mapping[str, Any]) -> PadToSize:
    _only(args, "size", "background_color", "interpolation")
    width, height = _pair(args["size"])
    return PadToSize(
        (width, height),
        _color(args.get("background_color", "white")),
        _interpolation(args.get("interpolation", "bilinear")),
    )


def _parse_convert_rgb(args: Mapping[str, Any]) -> ConvertRGB:
    _only(args, "force_background")
    background = args.get("force_background", "white")
    return ConvertRGB(_color(background if background is not None else "white"))


def _parse_to_tensor(args: Mapping[str, Any]) -> ToTensor:
    _only(args)
    return ToTensor()


def _parse_rescale(args: Mapping[str, Any]) -> Rescale:
    _only(args, "rescale_factor")
    return Rescale(float(args.get("rescale_factor", 1 / 255)))


def _parse_normalize(args: Mapping[str, Any]) -> Normalize:
    _only(args, "mean", "std", "inplace")
    mean, std = _floats(args["mean"], "mean"), _floats(args["std"], "std")
    if len(mean) not in (1, 3) or len(std) not in (1, 3):
        raise ValueError("mean and std need 1 or 3 values")
    if any(s == 0 for s in std):
        raise ValueError("std must not be zero")
    return Normalize(mean, std)


_PARSERS: dict[str, Callable[[Mapping[str, Any]], Stage]] = {
    "convert_rgb": _parse_convert_rgb,
    "resize": _parse_resize,
    "center_crop": _parse_center_crop,
    "pad_to_size": _parse_pad_to_size,
    "to_tensor": _parse_to_tensor,
    "maybe_to_tensor": _parse_to_tensor,
    "rescale": _parse_rescale,
    "normalize": _parse_normalize,
}


def _interpolation(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError(f"interpolation {value!r}")
    if isinstance(value, int):
        if value not in _RESAMPLE_CODES:
            raise ValueError(f"interpolation code {value} is not one of {sorted(_RESAMPLE_CODES)}")
        return _RESAMPLE_CODES[value]
    name = str(value).lower()
    if name not in RESAMPLE:
        raise ValueError(f"interpolation {value!r} is not one of {', '.join(RESAMPLE)}")
    return name


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, list | tuple):
        if len(value) == 1:
            value = value[0]
        elif len(value) == 2:
            return (_positive(value[0], "size"), _positive(value[1], "size"))
        else:
            raise ValueError(f"size must be one or two integers, got {value!r}")
    side = _positive(value, "size")
    return (side, side)


def _floats(value: Any, name: str) -> tuple[float, ...]:
    values = value if isinstance(value, list | tuple) else [value]
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {value!r}") from None


def _color(value: Any) -> tuple[int, int, int]:
    if isinstance(value, str):
        rgb = ImageColor.getrgb(value)
        return (rgb[0], rgb[1], rgb[2])
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value, value)
    if isinstance(value, list | tuple) and len(value) >= 3:
        return (int(value[0]), int(value[1]), int(value[2]))
    raise ValueError(f"colour {value!r}")


def output_size(stages: tuple[Stage, ...], source: str) -> int:
    """The square side the pipeline ends in, or an error naming the file."""
    size: tuple[int, int] | None = None
    for stage in stages:
        if isinstance(stage, CenterCrop | PadToSize | Resize):
            size = stage.size  # a shorter-side resize depends on the image: None
    if size is None or size[0] != size[1]:
        raise ModelLoadError(
            f"{source}: the stages must end in a fixed square size (a resize to [N, N], "
            "a center_crop or a pad_to_size)"
        )
    return size[0]


# -- applying ----------------------------------------------------------------------------


def apply_stage(stage: Stage, value: Image.Image | np.ndarray) -> Image.Image | np.ndarray:
    if isinstance(stage, Rescale | Normalize):
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{type(stage).__name__} needs an array: put to_tensor before it")
        return _rescale(stage, value) if isinstance(stage, Rescale) else _normalize(stage, value)
    if isinstance(stage, ToTensor):
        return value if isinstance(value, np.ndarray) else _to_tensor(value)
    if not isinstance(value, Image.Image):
        raise ValueError(f"{type(stage).__name__} needs an image: put it before to_tensor")
    if isinstance(stage, ConvertRGB):
        return value.convert("RGB")
    if isinstance(stage, Resize):
        return _resize(stage, value)
    if isinstance(stage, CenterCrop):
        return _center_crop(stage, value)
    return _pad_to_size(stage, value)


def resize_target(stage: Resize, width: int, height: int) -> tuple[int, int]:
    """imgutils' PillowResize size rule: fixed, or shorter side with an optional cap."""
    if stage.size is not None:
        return stage.size
    assert stage.shorter is not None
    short = stage.shorter
    if width < height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    if stage.max_size is not None and max(new_w, new_h) > stage.max_size:
        cap = stage.max_size
        if new_h > new_w:
            new_w, new_h = int(cap * new_w / new_h), cap
        else:
            new_w, new_h = cap, int(cap * new_h / new_w)
    return (new_w, new_h)


def _resize(stage: Resize, image: Image.Image) -> Image.Image:
    target = resize_target(stage, *image.size)
    if target == image.size:
        return image
    resample = RESAMPLE[stage.interpolation]
    if stage.interpolation in ("bilinear", "bicubic") and not stage.antialias:
        return image.resize(target, resample, reducing_gap=1.0)
    return image.resize(target, resample)


def _center_crop(stage: CenterCrop, image: Image.Image) -> Image.Image:
    crop_w, crop_h = stage.size
    width, height = image.size
    if width < crop_w or height < crop_h:
        padded = Image.new(image.mode, (max(width, crop_w), max(height, crop_h)), (0, 0, 0))
        padded.paste(image, ((padded.width - width) // 2, (padded.height - height) // 2))
        image, (width, height) = padded, padded.size
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h))


def _pad_to_size(stage: PadToSize, image: Image.Image) -> Image.Image:
    target_w, target_h = stage.size
    width, height = image.size
    ratio = min(target_w / width, target_h / height)
    new_w, new_h = round(width * ratio), round(height * ratio)
    resized = image.resize((new_w, new_h), RESAMPLE[stage.interpolation])
    canvas = Image.new("RGB", (target_w, target_h), stage.background)
    canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def _to_tensor(image: Image.Image) -> np.ndarray:
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / 255


def _rescale(stage: Rescale, array: np.ndarray) -> np.ndarray:
    return array * np.float32(stage.factor)


def _normalize(stage: Normalize, array: np.ndarray) -> np.ndarray:
    mean = np.asarray(stage.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(stage.std, dtype=np.float32).reshape(-1, 1, 1)
    return (array.astype(np.float32) - mean) / std


def _describe(stage: Stage) -> dict[str, Any]:
    fields = {k: v for k, v in stage.__dict__.items() if v is not None}
    return {"type": type(stage).__name__, **fields}
