"""The tagger on ONNX Runtime: the published ``model.onnx`` exports behind the Tagger protocol.

Same decode pipeline, same outputs as :class:`~app.tagger.timm_tagger.TimmTagger`: sigmoid
probabilities and the L2-normalised pooled embedding, per image, for a preprocessed batch.

* The deepghs export (``deepghs/pixai-tagger-v0.9-onnx``): input ``input`` (N, 3, S, S);
  outputs ``prediction`` (probabilities), ``logits`` and ``embedding`` (the head's input,
  the quantity the torch path stores). Preprocessing comes from ``preprocess.json``.
* WD v3's own ``model.onnx``: input (N, S, S, 3), BGR, 0..255, padded to a white square
  (WD's published inference code; the repo ships no preprocess.json); one output, the
  probabilities. It has no embedding output, so it can tag but not index.

CPUExecutionProvider by default, with every core (``SAGASHI_TORCH_THREADS`` caps it);
CUDAExecutionProvider when ``onnxruntime-gpu`` is installed and a GPU answers;
OpenVINOExecutionProvider on the CPU when ``onnxruntime-openvino`` is installed (the
``openvino`` extra). OpenVINO computes in bf16 on CPUs with bf16 instructions (AVX512_BF16,
AMX) unless ``SAGASHI_PRECISION=fp32``: 1.5-2.0x torch fp32 on the development machine, with
the drift one index generation accepts (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import logging
import mmap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.tagger.config import ModelConfig
from app.tagger.errors import ModelLoadError
from app.tagger.forward import Precision
from app.tagger.layouts import OnnxFiles, locate_layout
from app.tagger.preprocess import ImagePreprocess, Preprocess
from app.tagger.protocol import ModelInfo, Prediction
from app.tagger.stages import (
    ConvertRGB,
    Normalize,
    Resize,
    StagePipeline,
    ToTensor,
    load_preprocess_json,
)
from app.tagger.vocab import (
    TagVocabulary,
    load_categories,
    load_onnx_vocabulary,
    load_thresholds,
    load_wd_vocabulary,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
# WD's own ONNX models take BGR pixels in 0..255: normalising with mean 0, std 1/255 keeps them.
WD_RAW_STD = (1 / 255,) * 3


class OnnxTagger:
    """Load with :meth:`load`, then call :meth:`predict` on preprocessed batches."""

    def __init__(
        self,
        model_dir: Path,
        device: str = "auto",
        threads: int = 0,
        embeddings: bool = True,
        precision: Precision = "auto",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.device_name = device
        self.threads = threads
        self.embeddings = embeddings
        self.precision = precision
        self.device = "cpu"
        self.published_thresholds: dict[str, float] = {}
        self._session: Any = None
        self._io: _Io | None = None
        self._vocab: TagVocabulary | None = None
        self._preprocess: ImagePreprocess | None = None
        self._info: ModelInfo | None = None
        self.rows_per_run = 0

    def load(self) -> None:
        started = time.perf_counter()
        files = locate_layout(self.model_dir)
        if not isinstance(files, OnnxFiles):
            raise ModelLoadError(f"{self.model_dir} holds no model.onnx")
        vocab = self._vocabulary(files)
        session, provider = open_session(
            files.model, self.device_name, self.threads, self.precision
        )
        if self.embeddings:
            self.refuse_quantised(session, files.model)
        io = inspect_io(session, files, len(vocab), self.embeddings)
        preprocess = self._preprocessing(files, io)
        if preprocess.size != io.size:
            raise ModelLoadError(
                f"{files.preprocess or files.model}: preprocessing gives {preprocess.size}px "
                f"inputs but {files.model.name} takes {io.size}px"
            )
        self._session, self._io, self._vocab, self._preprocess = session, io, vocab, preprocess
        # OpenVINO runs EVA02-Large faster one image at a time than eight at once (0.39 against
        # 0.32 images/s in bf16), and holds the activations of a whole dynamic batch: 7.2 GB
        # of memory at one image, 13.2 GB at eight (docs/benchmarks.md).
        self.rows_per_run = 1 if provider.startswith(OPENVINO) else 0
        self.device = "cuda" if provider == CUDA else "cpu"
        self._info = ModelInfo(
            name=self.model_dir.resolve().name,
            family=files.family,
            vocabulary_digest=vocab.digest(),
            embedding_dim=io.embedding_dim,
            num_tags=len(vocab),
            preprocess=preprocess,
            layout=files.layout,
            runtime=f"onnxruntime {provider}",
        )
        log.info(
            "loaded %s from %s (%d tags, %d-d embeddings) on ONNX Runtime %s in %.1fs",
            files.layout,
            self.model_dir,
            len(vocab),
            io.embedding_dim,
            provider,
            time.perf_counter() - started,
        )

    @staticmethod
    def refuse_quantised(session: Any, model: Path) -> None:
        """Raise when the model may not store or compare embeddings (see
        :func:`refuse_quantised`); bench_onnx measures quantised models' drift through a
        subclass that lets them load."""
        refuse_quantised(session, model)

    def _vocabulary(self, files: OnnxFiles) -> TagVocabulary:
        if files.categories is None:
            return load_wd_vocabulary(files.tags)
        categories = load_categories(files.categories)
        if files.thresholds is not None:
            self.published_thresholds = load_thresholds(files.thresholds, categories)
        return load_onnx_vocabulary(files.tags, categories)

    @staticmethod
    def _preprocessing(files: OnnxFiles, io: _Io) -> ImagePreprocess:
        if files.preprocess is not None:
            pipeline = load_preprocess_json(files.preprocess)
            return as_preprocess(pipeline) or pipeline
        config = ModelConfig.from_file(files.config) if files.config else None
        interpolation = config.interpolation if config else "bicubic"
        return Preprocess(io.size, "pad", interpolation, (0.0,) * 3, WD_RAW_STD, "BGR")

    def _loaded(self) -> tuple[Any, _Io, TagVocabulary, ImagePreprocess, ModelInfo]:
        if (
            self._session is None
            or self._io is None
            or self._vocab is None
            or self._preprocess is None
            or self._info is None
        ):
            raise RuntimeError("OnnxTagger.load() must be called before use")
        return self._session, self._io, self._vocab, self._preprocess, self._info

    @property
    def info(self) -> ModelInfo:
        return self._loaded()[4]

    @property
    def vocab(self) -> TagVocabulary:
        return self._loaded()[2]

    @property
    def preprocess(self) -> ImagePreprocess:
        return self._loaded()[3]

    def predict_pixels(self, pixels: torch.Tensor) -> Prediction:
        """The same for a (N, S, S, 3) uint8 batch: preprocess.json's array stages, then the
        graph."""
        return self.predict(self._loaded()[3].normalise(pixels.cpu()))

    def predict(self, batch: torch.Tensor) -> Prediction:
        """Sigmoid scores and L2-normalised embeddings for a (N, 3, S, S) batch."""
        session, io, vocab, _, _ = self._loaded()
        inputs = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        if io.channels_last:
            inputs = np.ascontiguousarray(inputs.transpose(0, 2, 3, 1))
        names = [io.scores] + ([io.embedding] if io.embedding else [])
        outputs = self._run(session, names, io.input, inputs)
        scores = np.asarray(outputs[0], dtype=np.float32).reshape(len(inputs), -1)
        if scores.shape[1] != len(vocab):
            raise ModelLoadError(
                f"{self.model_dir / 'model.onnx'}: output {io.scores!r} has {scores.shape[1]} "
                f"values per image but the tag list has {len(vocab)}"
            )
        probs = sigmoid(scores) if io.scores_are_logits else scores
        if io.embedding:
            pooled = np.asarray(outputs[1], dtype=np.float32).reshape(len(inputs), -1)
            embeddings = l2_normalise(pooled)
        else:
            embeddings = np.zeros((len(inputs), 0), dtype=np.float32)
        return Prediction(probs=probs, embeddings=embeddings)

    def _run(
        self, session: Any, names: list[str], input_name: str, inputs: np.ndarray
    ) -> list[Any]:
        """The graph over ``inputs``, in runs of ``rows_per_run`` rows (0: all at once)."""
        rows = self.rows_per_run
        if not rows or len(inputs) <= rows:
            return list(session.run(names, {input_name: inputs}))
        runs = [
            session.run(names, {input_name: inputs[i : i + rows]})
            for i in range(0, len(inputs), rows)
        ]
        return [np.concatenate([run[k] for run in runs]) for k in range(len(names))]


class _Io:
    """The graph's input and the outputs this tagger reads."""

    def __init__(
        self,
        input_name: str,
        size: int,
        channels_last: bool,
        scores: str,
        scores_are_logits: bool,
        embedding: str | None,
        embedding_dim: int,
    ) -> None:
        self.input = input_name
        self.size = size
        self.channels_last = channels_last
        self.scores = scores
        self.scores_are_logits = scores_are_logits
        self.embedding = embedding
        self.embedding_dim = embedding_dim


def open_session(
    model: Path, device: str, threads: int, precision: Precision = "auto", openvino: bool = True
) -> tuple[Any, str]:
    """An InferenceSession on the requested device, and the provider that runs it (named
    with its precision where the provider has a choice: ``OpenVINOExecutionProvider bf16``)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # a dependency, but say so plainly if it is broken
        raise ModelLoadError(f"cannot import onnxruntime ({exc}); pip install onnxruntime") from exc
    available = [p for p in ort.get_available_providers() if openvino or p != OPENVINO]
    providers = session_providers(device, available, threads, precision)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(0, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: a missing GPU falls back with a warning
    try:
        session = ort.InferenceSession(str(model), options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for bad graphs
        if OPENVINO not in (p[0] if isinstance(p, tuple) else p for p in providers):
            raise ModelLoadError(
                f"{model}: not a loadable ONNX model ({_first_line(exc)})"
            ) from exc
        # OpenVINO compiles the graph itself and refuses some that the default provider
        # runs (ONNX Runtime's dynamic int8 operators): run those there, as without it.
        log.warning(
            "%s: OpenVINO cannot compile this graph (%.200s); running it on %s",
            model,
            _first_line(exc),
            CPU,
        )
        return open_session(model, "cpu", threads, precision, openvino=False)
    provider = session.get_providers()[0]
    if device.startswith("cuda") and provider != CUDA:
        raise ModelLoadError(
            f"device {device!r} requested but ONNX Runtime has no working CUDA here "
            "(pip install onnxruntime-gpu on a machine with an NVIDIA GPU)"
        )
    if provider == OPENVINO:
        return session, f"{provider} {openvino_precision(precision)}"
    return session, provider


def session_providers(
    device: str, available: list[str], threads: int = 0, precision: Precision = "auto"
) -> list[Any]:
    """The providers to ask ONNX Runtime for, in order: CUDA for a GPU device, else OpenVINO
    when installed, else the default CPU provider (always last, for any node the first
    cannot run)."""
    if device != "cpu" and CUDA in available:
        device_id = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        return [(CUDA, {"device_id": device_id}), CPU]
    if device.startswith("cuda"):
        raise ModelLoadError(
            f"device {device!r} requested but onnxruntime has no CUDAExecutionProvider "
            "(install the 'gpu' extra: pip install 'sagashi[gpu]')"
        )
    if OPENVINO in available:
        return [(OPENVINO, openvino_options(threads, precision)), CPU]
    return [CPU]


def openvino_precision(precision: Precision) -> str:
    """OpenVINO's inference precision for a ``SAGASHI_PRECISION``: bf16 unless fp32 is asked
    for (its scores stay within the drift an index generation accepts, as the GPU's bf16 do;
    OpenVINO computes in f32 anyway on a CPU without bf16 instructions)."""
    return "f32" if precision == "fp32" else "bf16"


def openvino_options(threads: int, precision: Precision) -> dict[str, str]:
    """The OpenVINO provider's options: its CPU device, the precision hint, the threads."""
    hint = openvino_precision(precision)
    options = {
        "device_type": "CPU",
        "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": hint}}),
    }
    if threads > 0:
        options["num_of_threads"] = str(threads)
    return options


QUANTISER = "onnx.quantize"  # the producer name ONNX Runtime's quantisation tools write
# Operators that only a quantised graph holds: ONNX Runtime's dynamic and static int8
# (quantize_dynamic, quantize_static), its block-wise weight-only 4/8-bit MatMulNBits
# (matmul_nbits_quantizer, which keeps the exporter's producer name) and ONNX's QDQ form.
QUANTISED_OPS = frozenset(
    {
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "GatherBlockQuantized",
        "MatMulBnb4",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "MatMulNBits",
        "ConvInteger",
        "QAttention",
        "QGemm",
        "QLinearConv",
        "QLinearMatMul",
        "QuantizeLinear",
    }
)


def refuse_quantised(session: Any, model: Path) -> None:
    """Quantised weights move embeddings further than one generation allows, and the
    generation check (vocabulary, embedding size, preprocessing) cannot tell them from the
    fp32 model's: such a model may tag, not index or search by similarity.

    Measured on EVA02-Large against the fp32 export (docs/benchmarks.md): dynamic int8 least
    embedding cosine 0.966 (per tensor) and 0.999 (per channel); block-wise 8-bit weights
    (MatMulNBits, block 32) 0.99983, against 0.99997 for the bf16 GPU path an index accepts.
    The rule is the graph's operators, since the block-wise quantiser keeps the exporter's
    producer name; the producer name still catches a quantiser's output in any other form.
    """
    found = sorted(graph_operators(model) & QUANTISED_OPS)
    quantiser = session.get_modelmeta().producer_name == QUANTISER
    if found or quantiser:
        how = (
            f"quantised ({', '.join(found)})"
            if found
            else f"quantised by ONNX Runtime ({QUANTISER})"
        )
        raise ModelLoadError(
            f"{model}: {how}; its embeddings drift from the fp32 model's, so it can tag but "
            "not index or search by similarity; use the fp32 model.onnx"
        )


def graph_operators(model: Path) -> set[str]:
    """The op types of the main graph's nodes, read from the protobuf without parsing the
    weights (a 1.3 GB model.onnx is scanned in milliseconds: the initialisers are skipped by
    their lengths). An unreadable file gives an empty set: ONNX Runtime has read it already."""
    try:
        with (
            model.open("rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m,
        ):
            graph = _field(m, 0, len(m), 7)  # ModelProto.graph
            if graph is None:
                return set()
            ops = set()
            for number, start, end in _fields(m, *graph):
                if number == 1 and end >= start:  # GraphProto.node
                    op = _field(m, start, end, 4)  # NodeProto.op_type
                    if op is not None:
                        ops.add(m[op[0] : op[1]].decode("utf-8", "replace"))
            return ops
    except (OSError, ValueError):
        return set()


def _field(data: mmap.mmap, start: int, end: int, wanted: int) -> tuple[int, int] | None:
    for number, value_start, value_end in _fields(data, start, end):
        if number == wanted and value_end >= value_start:
            return value_start, value_end
    return None


def _fields(data: mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of one protobuf message's length-delimited fields, between
    ``start`` and ``end`` of ``data``; other wire types give an end before their start."""
    position = start
    while position < end:
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, position = _varint(data, position)
            yield number, position, -1
        elif wire == 2:
            length, position = _varint(data, position)
            if position + length > end:
                raise ValueError("truncated protobuf field")
            yield number, position, position + length
            position += length
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _varint(data: mmap.mmap, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("bad protobuf varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def inspect_io(session: Any, files: OnnxFiles, num_tags: int, need_embedding: bool) -> _Io:
    """Check the graph against the tag list and the layout; errors name the file."""
    model = files.model
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(f"{model}: expected one image input, found {len(inputs)}")
    shape = list(inputs[0].shape)
    size, channels_last = _input_geometry(shape, model)
    outputs = {o.name: list(o.shape) for o in session.get_outputs()}
    if files.family == "pixai":
        scores, logits = _score_output(outputs, model)
        embedding: str | None = "embedding" if "embedding" in outputs else None
    else:
        scores, logits = next(iter(outputs)), False
        embedding = None
    _check_width(outputs[scores], num_tags, model, scores, files.tags)
    if embedding is None and need_embedding:
        raise ModelLoadError(
            f"{model}: no 'embedding' output (outputs: {', '.join(outputs)}), so it can tag "
            "but not index or search by similarity; use the PixAI ONNX export "
            "(sagashi model fetch pixai-v0.9-onnx) or WD's model.safetensors"
        )
    dim = outputs[embedding][-1] if embedding else 0
    if embedding and not isinstance(dim, int):
        raise ModelLoadError(f"{model}: 'embedding' has no fixed width ({outputs[embedding]})")
    return _Io(inputs[0].name, size, channels_last, scores, logits, embedding, int(dim or 0))


def _input_geometry(shape: list[Any], model: Path) -> tuple[int, bool]:
    if len(shape) == 4 and shape[1] == 3 and isinstance(shape[2], int) and shape[2] == shape[3]:
        return shape[2], False
    if len(shape) == 4 and shape[3] == 3 and isinstance(shape[1], int) and shape[1] == shape[2]:
        return shape[1], True
    raise ModelLoadError(f"{model}: input shape {shape} is not (N, 3, S, S) or (N, S, S, 3)")


def _score_output(outputs: dict[str, list[Any]], model: Path) -> tuple[str, bool]:
    if "prediction" in outputs:
        return "prediction", False
    if "logits" in outputs:
        return "logits", True
    raise ModelLoadError(
        f"{model}: no 'prediction' or 'logits' output (outputs: {', '.join(outputs)})"
    )


def _check_width(shape: list[Any], num_tags: int, model: Path, name: str, tags: Path) -> None:
    width = shape[-1] if shape else None
    if isinstance(width, int) and width != num_tags:
        raise ModelLoadError(
            f"{model}: output {name!r} has {width} values per image but {tags.name} lists "
            f"{num_tags} tags; they must come from the same export"
        )


def as_preprocess(pipeline: StagePipeline) -> Preprocess | None:
    """The torch path's Preprocess when the stages are exactly its stretch-resize form.

    ``resize`` to a fixed square, ``to_tensor``, ``normalize`` (an optional leading
    ``convert_rgb`` on white is what decoding does already) is what PixAI v0.9's
    ``transforms.Compose([Resize((448, 448)), ToTensor(), Normalize(...)])`` exports as;
    mapped onto :class:`Preprocess`, the ONNX export and the .pth share one description, so
    the generation check treats them as the same preprocessing.
    """
    stages = list(pipeline.stages)
    if stages and isinstance(stages[0], ConvertRGB):
        if stages[0].background != (255, 255, 255):
            return None
        stages = stages[1:]
    if len(stages) != 3:
        return None
    resize, to_tensor, normalize = stages
    if not (
        isinstance(resize, Resize)
        and resize.size is not None
        and resize.size[0] == resize.size[1]
        and resize.antialias
        and resize.interpolation in ("nearest", "bilinear", "bicubic", "lanczos")
        and isinstance(to_tensor, ToTensor)
        and isinstance(normalize, Normalize)
    ):
        return None
    mean, std = _three(normalize.mean), _three(normalize.std)
    return Preprocess(resize.size[0], "stretch", resize.interpolation, mean, std, "RGB")


def _three(values: tuple[float, ...]) -> tuple[float, float, float]:
    a, b, c = values if len(values) == 3 else values * 3
    return (a, b, c)


def sigmoid(values: np.ndarray) -> np.ndarray:
    result: np.ndarray = (1.0 / (1.0 + np.exp(-values.astype(np.float64)))).astype(np.float32)
    return result


def l2_normalise(values: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    result: np.ndarray = (values / np.maximum(norms, 1e-12)).astype(np.float32)
    return result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
