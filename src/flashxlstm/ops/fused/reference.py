"""The decode glue of the xLSTM-7B block in plain torch: what the fused Triton kernels must equal.

Each function rounds exactly where the unfused modules (nn.large_norms, nn.swiglu, nn.mlstm_large_layer) round
in a bf16 model, so a kernel that follows it differs from the module path only in reduction order.

    add_rms_norm(x, y, weight, bias, eps) -> (x + y, RMSNorm(x + y))   y may be None (no add)
    head_norm_gate(h, o, weight, bias, eps) -> sigmoid(o) * MultiHeadLayerNorm(h)
    silu_mul(gate, z) -> silu(gate) * z
    mlstm_layer_step(x, q, k, v, o, w_i, w_f, b_i, b_f, state, norm_weight, norm_bias, ...)
        -> (sigmoid(o) * MultiHeadLayerNorm(mLSTM step h), new state), gates x w^T + b soft-capped
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


def mlstm_layer_step_reference(x, q, k, v, o, w_i, w_f, b_i, b_f, state, norm_weight, norm_bias=None, *,
                               gate_soft_cap=15.0, eps=1e-6, norm_eps=1e-6):
    from ..mlstm_cell import mlstm_step

    cap = (lambda t: t) if gate_soft_cap is None else (lambda t: gate_soft_cap * torch.tanh(t / gate_soft_cap))
    i, f = cap(F.linear(x, w_i, b_i).float()), cap(F.linear(x, w_f, b_f).float())
    h, state = mlstm_step(q, k, v, i, f, state=state, backend="torch", eps=eps)
    return head_norm_gate_reference(h, o, norm_weight, norm_bias, norm_eps), state


def silu_mul_reference(gate: Tensor, z: Tensor) -> Tensor:
    return F.silu(gate) * z
