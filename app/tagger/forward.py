"""How a torch tagger runs its forward pass: precision, compilation, fixed batch shape.

Each choice is made once in ``load()`` from :class:`ForwardOptions`, so the CPU path stays
the plain fp32 eager model unless asked otherwise, and a GPU gets the fast one:

* ``precision``: ``bf16`` casts the weights to bfloat16 (not autocast, which re-casts
  every weight at every call); ``auto`` is bf16 on CUDA, fp32 elsewhere; ``autocast`` keeps
  fp32 weights under bf16 autocast (the earlier GPU path, kept for comparison).
* ``compile``: ``torch.compile`` of the network; ``auto`` is on for CUDA. It compiles for
  one batch shape, so a compiled tagger also pads every batch to ``batch_size`` (the last,
  partial batch of a run would otherwise compile a second graph).
* ``fixed_batch``: the padding alone, without compilation (``None``: as ``compile``).
* ``fuse``: the encoder's linear layers rearranged for tensor cores
  (:mod:`app.tagger.fused_layers`); ``auto`` is on with compilation.
* ``graphs``: on a CUDA device, the forward (compiled or not) captured once in a CUDA graph
  and replayed for every batch (:class:`CapturedForward`); it pads like compilation.

timm's EVA02 attention calls ``F.scaled_dot_product_attention`` (its ``fused_attn``), which
picks the fused flash or memory-efficient kernels on a GPU; :func:`attention_kernels`
reports whether every attention block does.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "autocast"]
CompileMode = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class ForwardOptions:
    precision: Precision = "auto"
    compile: CompileMode = "auto"
    batch_size: int = 8
    fixed_batch: bool | None = None
    fuse: CompileMode = "auto"
    graphs: Literal["on", "off"] = "off"

    def dtype(self, device: torch.device) -> torch.dtype:
        """The weights' and inputs' dtype."""
        import torch

        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return torch.float32

    def autocast(self, device: torch.device) -> Any:
        from contextlib import nullcontext

        import torch

        if self.precision == "autocast":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    def compiled(self, device: torch.device) -> bool:
        return self.compile == "on" or (self.compile == "auto" and device.type == "cuda")

    def fused(self, device: torch.device) -> bool:
        return self.fuse == "on" or (self.fuse == "auto" and self.compiled(device))

    def graphed(self, device: torch.device) -> bool:
        return self.graphs == "on" and device.type == "cuda"

    def padded(self, device: torch.device) -> bool:
        if self.graphed(device):
            return True
        return self.compiled(device) if self.fixed_batch is None else self.fixed_batch

    @classmethod
    def from_settings(cls, settings: Any) -> ForwardOptions:
        return cls(
            settings.precision, settings.compile, settings.batch_size, graphs=settings.cuda_graphs
        )


def attention_kernels(net: torch.nn.Module) -> str:
    """``fused`` when every attention block calls scaled_dot_product_attention, else which
    do not (timm turns it off with TIMM_FUSED_ATTN=0)."""
    blocks = [m for m in net.modules() if hasattr(m, "fused_attn")]
    plain = [type(m).__name__ for m in blocks if not m.fused_attn]
    if not blocks:
        return "unknown (no timm attention blocks)"
    return "fused" if not plain else f"plain in {len(plain)} of {len(blocks)} blocks"


def compile_network(net: Any) -> Any:
    """``torch.compile`` for one fixed shape; compilation happens at the first call."""
    import torch

    return torch.compile(net, dynamic=False)


def pad_rows(batch: torch.Tensor, rows: int) -> torch.Tensor:
    """``batch`` with zero rows appended up to ``rows`` (a no-op when it has them)."""
    import torch

    missing = rows - batch.shape[0]
    if missing <= 0:
        return batch
    filler = torch.zeros((missing, *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
    return torch.cat([batch, filler])


# Calls on a side stream before the capture: the kernels' lazy set-up (autotuning, cuBLAS
# workspaces, the allocator's first blocks) must not happen inside it.
CAPTURE_WARMUP_CALLS = 3


class CapturedForward:
    """``call`` for one input shape, captured once in a CUDA graph and replayed for each
    batch: one launch a batch instead of one per kernel, so the model thread needs the GIL
    (which the readers and staging threads want too) once a batch.

    The graph reads its input from, and writes its outputs to, buffers of its own: a call
    copies the batch in, replays, and returns copies of the outputs, under a lock, so the
    next call cannot overwrite outputs still in use."""

    def __init__(self, call: Any, example: torch.Tensor) -> None:
        import torch

        device = example.device
        with torch.cuda.device(device):
            self._input = example.clone()
            side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(CAPTURE_WARMUP_CALLS):
                    call(self._input)
            torch.cuda.current_stream(device).wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            # thread_local: other threads (a server answering on the model in use while a
            # job loads this one) may allocate and launch meanwhile.
            with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
                self._outputs = call(self._input)
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with self._lock:
            self._input.copy_(batch)
            self._graph.replay()
            return tuple(output.clone() for output in self._outputs)


def same_answers(reference: Any, candidate: Any, example: torch.Tensor, tolerance: float) -> float:
    """The largest probability difference between two forwards on ``example``; raises
    ValueError when it is over ``tolerance`` (a capture that replays wrongly)."""
    import torch

    expected = torch.sigmoid(reference(example)[0].float())
    got = torch.sigmoid(candidate(example)[0].float())
    difference = float((expected - got).abs().max())
    if not difference <= tolerance:
        raise ValueError(f"the captured forward differs by {difference:.3g} from the uncaptured")
    return difference
