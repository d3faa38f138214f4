"""Pick the tagger implementation once, from the model directory's layout.

Torch layouts (PixAI ``.pth``, WD ``safetensors``) run on :class:`TimmTagger`; ``model.onnx``
layouts run on :class:`OnnxTagger`. Callers get a loaded :class:`Tagger` and never branch on
the runtime again.
"""

from __future__ import annotations

from pathlib import Path

from app.tagger.errors import ModelLoadError
from app.tagger.layouts import OnnxFiles, locate_layout
from app.tagger.protocol import Tagger


def open_tagger(
    model_dir: Path, device: str = "auto", threads: int = 0, *, embeddings: bool = True
) -> Tagger:
    """A loaded tagger for ``model_dir``; ``embeddings=False`` admits tag-only models."""
    tagger = create_tagger(model_dir, device, threads, embeddings=embeddings)
    tagger.load()
    return tagger


def create_tagger(
    model_dir: Path, device: str = "auto", threads: int = 0, *, embeddings: bool = True
) -> Tagger:
    """An unloaded tagger of the implementation the layout needs (raises ModelLoadError)."""
    files = locate_layout(Path(model_dir))
    if isinstance(files, OnnxFiles):
        from app.tagger.onnx_tagger import OnnxTagger

        return OnnxTagger(model_dir, device, threads, embeddings)
    from app.tagger.timm_tagger import TimmTagger

    return TimmTagger(model_dir, device, threads)


__all__ = ["ModelLoadError", "create_tagger", "open_tagger"]
