"""The decode glue of the xLSTM-7B block in plain torch: what the fused Triton kernels must equal.

Each function rounds exactly where the unfused modules (nn.rmsnorm, nn.swiglu, nn.mlstm_large_layer) round
in a bf16 model, so a kernel that follows it differs from the module path only in reduction order.

    add_rms_norm(x, y, weight, bias, eps) -> (x + y, RMSNorm(x + y))   y may be None (no add)
    head_norm_gate(h, o, weight, bias, eps) -> sigmoid(o) * MultiHeadLayerNorm(h)
    silu_mul(gate, z) -> silu(gate) * z
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def add_rms_norm_reference(x: Tensor, y: Tensor | None, weight: Tensor, bias: Tensor | None, eps: float
                           ) -> tuple[Tensor, Tensor]:
    s = x if y is None else x + y
    n = F.rms_norm(s, (s.shape[-1],), weight, eps=eps)
    return s, n if bias is None else n + bias


def head_norm_gate_reference(h: Tensor, o: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
    """h (B, NH, DH), o (B, NH * DH) -> (B, NH * DH): per-head LayerNorm (rounded once), weight, bias, sigmoid(o)."""
    B, NH, DH = h.shape
    y = F.layer_norm(h, (DH,), eps=eps).reshape(B, NH * DH) * weight
    if bias is not None:
        y = y + bias
    return torch.sigmoid(o) * y


def silu_mul_reference(gate: Tensor, z: Tensor) -> Tensor:
    return F.silu(gate) * z
