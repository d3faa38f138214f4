"""Pick the tagger implementation once, from the model directory's layout.

Torch layouts (PixAI ``.pth``, WD ``safetensors``) run on :class:`TimmTagger`; ``model.onnx``
layouts run on :class:`OnnxTagger`. Callers get a loaded :class:`Tagger` and never branch on
the runtime again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from app.tagger.errors import ModelLoadError
from app.tagger.forward import ForwardOptions
from app.tagger.layouts import OnnxFiles, locate_layout
from app.tagger.protocol import Tagger
from app.tagger.replicas import Replicas


def tagger_from_settings(
    settings: Any, model_dir: Path, *, embeddings: bool = True, serving: bool = False
) -> Tagger:
    """The loaded tagger every command and the server use: device, threads, precision and
    compilation from the settings. ``serving``: for the server's uploads, where one image's
    latency counts more than a batch's throughput, ``SAGASHI_COMPILE=auto`` means off (a
    compiled model pads every forward to the batch size)."""
    forward = ForwardOptions.from_settings(settings)
    if serving and forward.compile == "auto":
        forward = replace(forward, compile="off")
    return open_tagger(
        model_dir,
        settings.device,
        settings.effective_torch_threads(),
        embeddings=embeddings,
        forward=forward,
    )


def open_tagger(
    model_dir: Path,
    device: str = "auto",
    threads: int = 0,
    *,
    embeddings: bool = True,
    forward: ForwardOptions | None = None,
) -> Tagger:
    """A loaded tagger for ``model_dir``; ``embeddings=False`` admits tag-only models.
    Several devices (``cuda:all``, ``cuda:0,cuda:1``) give one replica per device."""
    devices = expand_devices(device)
    taggers = [
        create_tagger(model_dir, d, threads, embeddings=embeddings, forward=forward)
        for d in devices
    ]
    tagger = taggers[0] if len(taggers) == 1 else Replicas(taggers)
    tagger.load()
    return tagger


def expand_devices(device: str) -> list[str]:
    """``cuda:all`` as every visible GPU, a comma list as its items, else the one name."""
    if device == "cuda:all":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError("device 'cuda:all' requested but CUDA is not available here")
        return [f"cuda:{index}" for index in range(count)]
    return [name.strip() for name in device.split(",")]


def create_tagger(
    model_dir: Path,
    device: str = "auto",
    threads: int = 0,
    *,
    embeddings: bool = True,
    forward: ForwardOptions | None = None,
) -> Tagger:
    """An unloaded tagger of the implementation the layout needs (raises ModelLoadError)."""
    files = locate_layout(Path(model_dir))
    if isinstance(files, OnnxFiles):
        from app.tagger.onnx_tagger import OnnxTagger

        precision = (forward or ForwardOptions()).precision
        return OnnxTagger(model_dir, device, threads, embeddings, precision)
    from app.tagger.timm_tagger import TimmTagger

    return TimmTagger(model_dir, device, threads, forward)


__all__ = ["ModelLoadError", "create_tagger", "open_tagger", "tagger_from_settings"]
