"""Fused decode glue for the xLSTM-7B block: the elementwise work between its matmuls in few launches.

    s, n = add_rms_norm(x, y, weight, bias, eps)      s = x + y (y may be None), n = RMSNorm(s)
    out = head_norm_gate(h, o, weight, bias, eps)      sigmoid(o) * per-head LayerNorm(h), (B, NH * DH)
    a = silu_mul(gate, z)                              silu(gate) * z
    y, state = mlstm_layer_step(x, q, k, v, o, w_i, w_f, b_i, b_f, state, norm_weight, norm_bias, ...)
        the mLSTM layer between its matmuls: gate projections, soft cap, step, per-head norm, sigmoid(o)
        product (layer_step.py)

Pure tensor functions. `backend="triton"` runs the Triton kernels (CUDA, or the CPU interpreter with
TRITON_INTERPRET=1), "torch" the reference (reference.py), "auto" the rule of ops/choose.py (Triton on CUDA
when importable, unless float64). Both round
to the activation dtype at the same points as the unfused nn modules, so in float32 they agree to rounding
of the reductions and in bf16 to an occasional last-bit flip. Why these kernels: docs/kernels.md.
"""
from __future__ import annotations

from torch import Tensor

from ..choose import choose_backend
from .reference import (add_rms_norm_reference, head_norm_gate_reference, mlstm_layer_step_reference,
                        silu_mul_reference)

__all__ = ["add_rms_norm", "head_norm_gate", "silu_mul", "mlstm_layer_step"]


def _use_triton(t: Tensor, backend: str) -> bool:
    from ..mlstm_cell.triton import triton_usable

    available = ("torch", "triton") if triton_usable() else ("torch",)
    return choose_backend("fused glue", backend, available, fallback="torch", device=t.device, dtype=t.dtype) == "triton"


def add_rms_norm(x: Tensor, y: Tensor | None, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-6,
                 backend: str = "auto") -> tuple[Tensor, Tensor]:
    if _use_triton(x, backend):
        from .kernels import add_rms_norm_triton

        return add_rms_norm_triton(x, y, weight, bias, eps)
    return add_rms_norm_reference(x, y, weight, bias, eps)


def head_norm_gate(h: Tensor, o: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-6,
                   backend: str = "auto") -> Tensor:
    if _use_triton(h, backend):
        from .kernels import head_norm_gate_triton

        return head_norm_gate_triton(h, o, weight, bias, eps)
    return head_norm_gate_reference(h, o, weight, bias, eps)


def silu_mul(gate: Tensor, z: Tensor, backend: str = "auto") -> Tensor:
    if _use_triton(gate, backend):
        from .kernels import silu_mul_triton

        return silu_mul_triton(gate, z)
    return silu_mul_reference(gate, z)


def mlstm_layer_step(x: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, w_i: Tensor, w_f: Tensor, b_i: Tensor,
                     b_f: Tensor, state, norm_weight: Tensor, norm_bias: Tensor | None = None, *,
                     gate_soft_cap: float | None = 15.0, eps: float = 1e-6, norm_eps: float = 1e-6, out=None,
                     backend: str = "auto"):
    if _use_triton(x, backend):
        from .layer_step import mlstm_layer_step_triton

        return mlstm_layer_step_triton(x, q, k, v, o, w_i, w_f, b_i, b_f, state, norm_weight, norm_bias,
                                       gate_soft_cap=gate_soft_cap, eps=eps, norm_eps=norm_eps, out=out)
    y, new = mlstm_layer_step_reference(x, q, k, v, o, w_i, w_f, b_i, b_f, state, norm_weight, norm_bias,
                                        gate_soft_cap=gate_soft_cap, eps=eps, norm_eps=norm_eps)
    if out is not None:
        for buf, t in zip(out, new):
            buf.copy_(t)
        new = tuple(out)
    return y, new
