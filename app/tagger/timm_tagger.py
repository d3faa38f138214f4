"""The tagger implementation for timm-based models (PixAI v0.9 and WD v3)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from app.tagger.config import ModelConfig
from app.tagger.errors import ModelLoadError
from app.tagger.forward import (
    CapturedForward,
    ForwardOptions,
    attention_kernels,
    compile_network,
    pad_rows,
    same_answers,
)
from app.tagger.fused_layers import fuse_network
from app.tagger.layouts import TORCH_LAYOUTS
from app.tagger.model import ModelFiles, TaggerNet, build_network, locate_model_files
from app.tagger.preprocess import Preprocess
from app.tagger.protocol import ModelInfo, Prediction
from app.tagger.vocab import TagVocabulary, load_pixai_vocabulary, load_wd_vocabulary

log = logging.getLogger(__name__)
# The replayed graph runs the same kernels on the same input as the forward it captured:
# any difference in its scores beyond rounding means it replays wrongly.
CAPTURE_TOLERANCE = 1e-3


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} requested but CUDA is not available here")
    return device


def preprocess_for(family: str, config: ModelConfig) -> Preprocess:
    """Size and normalisation come from the config; geometry and channel order from the
    family's published inference code (PixAI handler.py, WD's reference taggers)."""
    if family == "pixai":
        return Preprocess(config.input_size, "stretch", "bilinear", config.mean, config.std, "RGB")
    return Preprocess(
        config.input_size, "pad", config.interpolation, config.mean, config.std, "BGR"
    )


class TimmTagger:
    """Load with :meth:`load`, then call :meth:`predict` on preprocessed batches."""

    def __init__(
        self,
        model_dir: Path,
        device: str = "auto",
        torch_threads: int = 0,
        forward: ForwardOptions | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.device_name = device
        self.torch_threads = torch_threads
        self.forward = forward or ForwardOptions()
        self._net: TaggerNet | None = None
        self._call: Any = None  # the network, or its compiled form
        self._dtype = torch.float32
        self._pad_to = 0  # rows every forward is padded to; 0: none
        self.compile_seconds = 0.0
        self.captured = False  # the forward replays a CUDA graph (ForwardOptions.graphs)
        self._vocab: TagVocabulary | None = None
        self._preprocess: Preprocess | None = None
        self._info: ModelInfo | None = None
        self.device = torch.device("cpu")

    def load(self) -> None:
        started = time.perf_counter()
        files = locate_model_files(self.model_dir)
        config = self._config(files)
        vocab = self._vocabulary(files)
        net = build_network(files, config)
        if net.num_tags != len(vocab):
            raise ModelLoadError(
                f"{files.tags.name} lists {len(vocab)} tags but the checkpoint's head has "
                f"{net.num_tags} outputs; they must come from the same model release"
            )
        self.device = resolve_device(self.device_name)
        if self.device.type == "cpu" and self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        self._dtype = self.forward.dtype(self.device)
        self._net = net.eval().to(self.device, dtype=self._dtype)
        fused = f", {fuse_network(self._net)}" if self.forward.fused(self.device) else ""
        self._call = self._net
        self._pad_to = self.forward.batch_size if self.forward.padded(self.device) else 0
        self._vocab = vocab
        self._preprocess = preprocess_for(files.family, config)
        compiled = self._compile() if self.forward.compiled(self.device) else ""
        compiled += self._capture() if self.forward.graphs == "on" else ""
        self._info = ModelInfo(
            name=self.model_dir.resolve().name,
            family=files.family,
            vocabulary_digest=vocab.digest(),
            embedding_dim=net.embedding_dim,
            num_tags=net.num_tags,
            preprocess=self._preprocess,
            layout=TORCH_LAYOUTS[files.family],
            runtime=f"torch {self.device}",
        )
        log.info(
            "loaded %s model %s (%s, %d tags, %d-d embeddings) on %s, %s, attention %s%s in %.1fs",
            files.family,
            self.model_dir,
            config.architecture,
            len(vocab),
            net.embedding_dim,
            self.device,
            self.precision_name,
            attention_kernels(net),
            fused + compiled,
            time.perf_counter() - started,
        )

    @property
    def precision_name(self) -> str:
        if self.forward.precision == "autocast":
            return "fp32 weights under bf16 autocast"
        return "bf16 weights" if self._dtype == torch.bfloat16 else "fp32"

    def _compile(self) -> str:
        """Compile for the padded batch shape now, so the first real batch does not wait."""
        started = time.perf_counter()
        self._call = compile_network(self._net)
        assert self._preprocess is not None
        size = self._preprocess.size
        with torch.inference_mode(), self.forward.autocast(self.device):
            warm = torch.zeros((self._pad_to, 3, size, size), dtype=self._dtype, device=self.device)
            self._call(warm)
        seconds = time.perf_counter() - started
        self.compile_seconds = seconds
        return f", compiled for batches of {self._pad_to} in {seconds:.1f}s"

    def _capture(self) -> str:
        """Capture the forward in a CUDA graph, checked on another batch against the
        forward uncaptured; that one stays, with a warning, when the capture fails or
        differs."""
        if not self.forward.graphed(self.device):
            return ", no CUDA graphs (they need a CUDA device)"
        started = time.perf_counter()
        assert self._preprocess is not None
        size = self._preprocess.size
        shape = (self._pad_to, 3, size, size)
        with torch.inference_mode(), self.forward.autocast(self.device):
            example = torch.rand(shape, device=self.device).to(self._dtype)
            try:
                captured = CapturedForward(self._call, example)
                other = (example * 2 - 1).flip(0)
                difference = same_answers(self._call, captured, other, CAPTURE_TOLERANCE)
            except (RuntimeError, ValueError) as exc:
                log.warning("CUDA graphs off, the forward runs uncaptured: %s", exc)
                return ", no CUDA graphs (the capture failed)"
        self._call, self.captured = captured, True
        seconds = time.perf_counter() - started
        return f", captured in a CUDA graph in {seconds:.1f}s (scores within {difference:.1g})"

    @staticmethod
    def _config(files: ModelFiles) -> ModelConfig:
        if files.config is not None:
            return ModelConfig.from_file(files.config)
        return ModelConfig.wd_eva02_large_v3()

    @staticmethod
    def _vocabulary(files: ModelFiles) -> TagVocabulary:
        if files.family == "pixai":
            return load_pixai_vocabulary(files.tags, files.char_ip_map)
        return load_wd_vocabulary(files.tags)

    def _loaded(self) -> tuple[TaggerNet, TagVocabulary, Preprocess, ModelInfo]:
        if self._net is None or self._vocab is None or self._preprocess is None or not self._info:
            raise RuntimeError("TimmTagger.load() must be called before use")
        return self._net, self._vocab, self._preprocess, self._info

    @property
    def info(self) -> ModelInfo:
        return self._loaded()[3]

    @property
    def vocab(self) -> TagVocabulary:
        return self._loaded()[1]

    @property
    def preprocess(self) -> Preprocess:
        return self._loaded()[2]

    @property
    def network(self) -> TaggerNet:
        return self._loaded()[0]

    def predict(self, batch: torch.Tensor) -> Prediction:
        """Sigmoid scores and L2-normalised pooled embeddings for a (N, 3, S, S) float
        batch of model input."""
        self._loaded()
        with torch.inference_mode():
            return self._forward(batch.to(self.device, non_blocking=True))

    def predict_pixels(self, pixels: torch.Tensor) -> Prediction:
        """The same for a (N, S, S, 3) uint8 batch of :meth:`Preprocess.pixels`: the copy
        to the device moves a quarter of the bytes, and normalisation runs there."""
        preprocess = self._loaded()[2]
        with torch.inference_mode():
            on_device = pixels.to(self.device, non_blocking=True)
            return self._forward(preprocess.normalise(on_device))

    def _forward(self, inputs: torch.Tensor) -> Prediction:
        rows = inputs.shape[0]
        step = self._pad_to or rows
        probs, embeddings = [], []
        with self.forward.autocast(self.device):
            for start in range(0, rows, step):
                chunk = pad_rows(inputs[start : start + step].to(self._dtype), self._pad_to)
                logits, pooled = self._call(chunk)
                kept = min(step, rows - start)
                probs.append(torch.sigmoid(logits[:kept].float()))
                embeddings.append(F.normalize(pooled[:kept].float(), dim=-1))
        return Prediction(
            probs=torch.cat(probs).cpu().numpy().astype(np.float32, copy=False),
            embeddings=torch.cat(embeddings).cpu().numpy().astype(np.float32, copy=False),
        )
