"""The tagger implementation for timm-based models (PixAI v0.9 and WD v3)."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.tagger.config import ModelConfig
from app.tagger.errors import ModelLoadError
from app.tagger.layouts import TORCH_LAYOUTS
from app.tagger.model import ModelFiles, TaggerNet, build_network, locate_model_files
from app.tagger.preprocess import Preprocess
from app.tagger.protocol import ModelInfo, Prediction
from app.tagger.vocab import TagVocabulary, load_pixai_vocabulary, load_wd_vocabulary

log = logging.getLogger(__name__)


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

    def __init__(self, model_dir: Path, device: str = "auto", torch_threads: int = 0) -> None:
        self.model_dir = Path(model_dir)
        self.device_name = device
        self.torch_threads = torch_threads
        self._net: TaggerNet | None = None
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
        self._net = net.eval().to(self.device)
        self._vocab = vocab
        self._preprocess = preprocess_for(files.family, config)
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
            "loaded %s model %s (%s, %d tags, %d-d embeddings) on %s in %.1fs",
            files.family,
            self.model_dir,
            config.architecture,
            len(vocab),
            net.embedding_dim,
            self.device,
            time.perf_counter() - started,
        )

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
        """Sigmoid scores and L2-normalised pooled embeddings for a (N, 3, S, S) batch."""
        net = self._loaded()[0]
        on_gpu = self.device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else nullcontext()
        with torch.inference_mode(), autocast:
            inputs = batch.to(self.device, non_blocking=on_gpu)
            logits, pooled = net(inputs)
            probs = torch.sigmoid(logits.float())
            embeddings = F.normalize(pooled.float(), dim=-1)
        return Prediction(
            probs=probs.cpu().numpy().astype(np.float32, copy=False),
            embeddings=embeddings.cpu().numpy().astype(np.float32, copy=False),
        )
