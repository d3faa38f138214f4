"""The encoder's linear layers rearranged for a GPU's tensor cores, with the same function.

EVA02-Large's SwiGLU MLP has 2,730 hidden units (1024 x 8/3): a bf16 matrix of that width
has rows of 5,460 bytes, not a multiple of 16, which keeps cuBLAS from its fastest kernels,
and the MLP holds two thirds of the model's multiply-adds. Its gate and value projections
are also two matrix products where one would do, as are the attention's separate q, k and v
projections. :func:`fuse_network` rewrites, in place and with the loaded weights:

* each timm ``SwiGLU`` into :class:`AlignedSwiGLU`: the gate and value projections as one
  product, the hidden width padded with zero units to a multiple of 64, the layer norm over
  the real units only (so the padding cannot change its mean or variance) and zero columns
  in the output projection: every real unit computes what it did;
* each attention block with separate ``q_proj``/``k_proj``/``v_proj`` into one ``qkv``
  product (timm's own fused form, with the three biases concatenated; k has none).

Only the summation order of the products changes, so scores agree with the unfused network
to float rounding (tests/app/tagger/test_fast_path.py pins it on the tiny model, docs/benchmarks.md
measures the speed and the difference on the real size). The CPU path keeps the network as
loaded: :class:`~app.tagger.forward.ForwardOptions` turns this on with compilation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ALIGN = 64


class AlignedSwiGLU(nn.Module):
    """timm's ``SwiGLU`` (gate and value projections, SiLU gate, optional layer norm over
    the hidden units, output projection) with fused, padded weights."""

    def __init__(self, mlp: Any, align: int = ALIGN) -> None:
        super().__init__()
        hidden = int(mlp.fc1_g.out_features)
        padded = hidden + (-hidden % align)
        self.hidden, self.padded = hidden, padded
        w1 = torch.cat([_pad_rows(mlp.fc1_g.weight, padded), _pad_rows(mlp.fc1_x.weight, padded)])
        self.w1 = nn.Parameter(w1.detach(), requires_grad=False)
        self.b1 = _parameter(_cat_bias([(mlp.fc1_g, padded), (mlp.fc1_x, padded)], w1))
        self.act = mlp.act
        norm = mlp.norm
        self.norm: nn.LayerNorm | None = norm if isinstance(norm, nn.LayerNorm) else None
        if self.norm is None and not isinstance(norm, nn.Identity):
            raise ValueError(f"unsupported SwiGLU norm {type(norm).__name__}")
        w2 = F.pad(mlp.fc2.weight.detach(), (0, padded - hidden))
        self.w2 = nn.Parameter(w2, requires_grad=False)
        bias2 = mlp.fc2.bias
        self.b2 = None if bias2 is None else nn.Parameter(bias2.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = torch.split(F.linear(x, self.w1, self.b1), self.padded, dim=-1)
        hidden = self.act(gate) * value  # padded units: act(0) * 0 = 0
        if self.norm is not None:
            normed = self.norm(hidden[..., : self.hidden])
            hidden = F.pad(normed, (0, self.padded - self.hidden))
        return F.linear(hidden, self.w2, self.b2)


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(weight.detach(), (0, 0, 0, rows - weight.shape[0]))


def _cat_bias(layers: list[tuple[nn.Linear, int]], like: torch.Tensor) -> torch.Tensor | None:
    """The layers' biases, each padded to its row count (a missing bias is zeros); None
    when none has one."""
    if all(layer.bias is None for layer, _ in layers):
        return None
    parts = []
    for layer, rows in layers:
        bias = layer.bias
        part = torch.zeros(rows, dtype=like.dtype, device=like.device)
        if bias is not None:
            part[: bias.shape[0]] = bias.detach()
        parts.append(part)
    return torch.cat(parts)


def _parameter(tensor: torch.Tensor | None) -> nn.Parameter | None:
    return None if tensor is None else nn.Parameter(tensor, requires_grad=False)


def fuse_qkv(attention: Any) -> bool:
    """timm EVA attention with separate q/k/v projections onto its fused ``qkv`` path."""
    if getattr(attention, "qkv", True) is not None or not hasattr(attention, "q_proj"):
        return False
    projections = [attention.q_proj, attention.k_proj, attention.v_proj]
    weight = torch.cat([p.weight.detach() for p in projections])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    fused.to(device=weight.device, dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    bias = _cat_bias([(p, p.out_features) for p in projections], weight)
    zeros = torch.zeros_like(weight[:, 0])
    fused.bias = nn.Parameter(zeros if bias is None else bias, requires_grad=False)
    attention.qkv = fused
    attention.q_bias = attention.k_bias = attention.v_bias = None
    del attention.q_proj, attention.k_proj, attention.v_proj
    attention.q_proj = attention.k_proj = attention.v_proj = None
    return True


def fuse_network(net: nn.Module, align: int = ALIGN) -> str:
    """Rewrite ``net``'s SwiGLU MLPs and q/k/v projections in place; says what it did."""
    from timm.layers.mlp import SwiGLU

    mlps = qkvs = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SwiGLU):
                setattr(module, name, AlignedSwiGLU(child, align))
                mlps += 1
        if fuse_qkv(module):
            qkvs += 1
    return f"fused {mlps} MLPs (hidden padded to a multiple of {align}) and {qkvs} q/k/v"
