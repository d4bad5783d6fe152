"""The gated feed-forward of the xLSTM-7B family: proj_down(silu(proj_up_gate(x)) * proj_up(x)).

weight_mode "single" keeps proj_up_gate and proj_up as two Linear layers; "fused" stacks them (gate rows
first) in one Linear proj_up_gate_z, which is one matmul instead of two at inference. `forward(x,
fused_glue=True)` is for decoding: silu(gate) * up in one Triton kernel (flashxlstm.ops.fused.silu_mul), or
for a single token inside the down projection's matrix-vector product (flashxlstm.ops.fused.linear).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.fused import silu_mul
from ..ops.fused.linear import linear_decode
from .stacked import stacked_linear


def round_up(x: float, multiple: int) -> int:
    """The official rounding: int(((x + m - 1) // m) * m) on a float x (so 768 * 2.667 gives 2048)."""
    return int(((x + multiple - 1) // multiple) * multiple)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = False, weight_mode: str = "single"):
        super().__init__()
        self.hidden, self.weight_mode = hidden, weight_mode
        if weight_mode == "single":
            self.proj_up_gate = nn.Linear(dim, hidden, bias=bias)
            self.proj_up = nn.Linear(dim, hidden, bias=bias)
        elif weight_mode == "fused":
            self.proj_up_gate_z = nn.Linear(dim, 2 * hidden, bias=bias)
        else:
            raise ValueError(f"SwiGLU: weight_mode must be 'single' or 'fused', got {weight_mode!r}")
        self.proj_down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor, fused_glue: bool = False) -> Tensor:
        lin = (lambda layer, t: linear_decode(t, layer.weight, layer.bias)) if fused_glue else (lambda layer, t: layer(t))
        if self.weight_mode == "single" and not fused_glue and self.training and torch.is_grad_enabled():
            # one matmul for both: x is cast to the autocast dtype and kept for the backward once, not twice
            gate, z = stacked_linear(x, (self.proj_up_gate, self.proj_up))
        elif self.weight_mode == "single":
            gate, z = lin(self.proj_up_gate, x), lin(self.proj_up, x)
        else:
            gate, z = lin(self.proj_up_gate_z, x).split(self.hidden, dim=-1)
        if not fused_glue:
            return self.proj_down(F.silu(gate) * z)
        if x.numel() == x.shape[-1]:  # one token: the SiLU x up product is the prologue of the down projection
            return linear_decode(gate, self.proj_down.weight, self.proj_down.bias, z=z)
        return self.proj_down(silu_mul(gate, z, backend="triton"))
