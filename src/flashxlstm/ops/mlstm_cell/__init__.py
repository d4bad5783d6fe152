"""`mlstm`: the mLSTM cell over a sequence, one signature for every backend.

    h, state = mlstm(q, k, v, i, f, state=None, backend="auto", chunk_size=64, eps=1e-6,
                     input_gate="exp", cu_seqlens=None, keep_h_lo=True)

q, k: (B, NH, S, DQK); v: (B, NH, S, DV); i, f: (B, NH, S) gate pre-activations. h: (B, NH, S, DV) in
v's dtype. state = (C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH)) in float32 (float64 for float64
inputs); None means zeros. The returned state continues the sequence exactly; inputs are never modified.
With `cu_seqlens` (B == 1, FlashAttention convention) the state restarts at each document; `state`, if
given, then holds one initial state per document and the returned state one final state per document.

Backends: "recurrent" (step by step), "parallel" (quadratic), "chunkwise" (torch, any S), "triton"
(GPU kernels, registered when Triton is importable), "auto" (ops/choose.py: triton on CUDA unless float64,
chunkwise otherwise; for mlstm_step triton or "torch").
The math is in docs/cells.md (mLSTM); `input_gate="sigmoid"` is mLSTMsig, computed as the
exponential gate applied to logsigmoid(i~).
`keep_h_lo` (the triton backend, 16-bit inputs, with gradients): whether the forward keeps h's rounding
residual (as many bytes as h) for the backward's per-step sums, which then run at more than 16-bit precision;
False saves that memory at some gradient accuracy (docs/kernels.md has the measured errors). The torch
backends keep no such residual; they ignore it.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..choose import choose_backend
from .checks import MLSTMState, check_devices, check_floating, check_mlstm_inputs, check_mlstm_state, check_sizes
from .chunkwise import mlstm_chunkwise, mlstm_parallel
from .packed import mlstm_chunkwise_packed, mlstm_recurrent_packed
from .recurrent import compute_dtype, mlstm_recurrent, mlstm_step as _torch_step, zero_state

__all__ = ["mlstm", "mlstm_step", "mlstm_reference", "zero_state", "register_backend", "BACKENDS", "MLSTMState"]

# name -> fn(q, k, v, i, f, state, *, chunk_size, eps, input_gate, cu_seqlens) -> (h, state); state None: zeros
BACKENDS: dict[str, Callable] = {}
# name -> fn(q, k, v, i, f, state, *, eps, input_gate) -> (h, state); the decode step
STEP_BACKENDS: dict[str, Callable] = {}


def register_backend(name: str, fn: Callable, *, step: bool = False) -> None:
    """Make a backend selectable by name (kernels register themselves on import)."""
    (STEP_BACKENDS if step else BACKENDS)[name] = fn


def _torch_form(single: Callable, packed: Callable) -> Callable:
    """One backend from a single-sequence form and its packed-documents form (packed.py: one pass, with the
    state reset at every document start). state None means zeros."""

    def run(q, k, v, i, f, state, *, chunk_size, eps, input_gate, cu_seqlens=None):
        if cu_seqlens is not None:
            return packed(q, k, v, i, f, state, cu_seqlens=cu_seqlens, chunk_size=chunk_size, eps=eps,
                          input_gate=input_gate)
        if state is None:
            state = zero_state(q.shape[0], q.shape[1], q.shape[3], v.shape[-1], q.device, compute_dtype(q))
        return single(q, k, v, i, f, state, chunk_size=chunk_size, eps=eps, input_gate=input_gate)

    return run


register_backend("recurrent", _torch_form(lambda *a, chunk_size, **kw: mlstm_recurrent(*a, **kw),
                                          lambda *a, chunk_size, **kw: mlstm_recurrent_packed(*a, **kw)))
register_backend("parallel", _torch_form(lambda *a, chunk_size, **kw: mlstm_parallel(*a, **kw),
                                         lambda *a, chunk_size, **kw: mlstm_chunkwise_packed(
                                             *a, chunk_size=a[0].shape[2], **kw)))
register_backend("chunkwise", _torch_form(mlstm_chunkwise, mlstm_chunkwise_packed))
register_backend("torch", _torch_step, step=True)

from .triton import triton_usable  # noqa: E402  (cheap: imports Triton only when it can run)

if triton_usable():
    from .triton.function import mlstm_triton
    from .triton.step import mlstm_step_triton

    register_backend("triton", mlstm_triton)
    register_backend("triton", mlstm_step_triton, step=True)


def mlstm(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, *,
    state: MLSTMState | None = None, backend: str = "auto", chunk_size: int = 64, eps: float = 1e-6,
    input_gate: str = "exp", cu_seqlens: Tensor | None = None, keep_h_lo: bool = True,
) -> tuple[Tensor, MLSTMState]:
    check_mlstm_inputs(q, k, v, i, f, state, input_gate, cu_seqlens)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"mlstm: chunk_size must be a positive int, got {chunk_size!r}")
    if not isinstance(keep_h_lo, bool):
        raise TypeError(f"mlstm: keep_h_lo must be a bool, got {keep_h_lo!r}")
    name = choose_backend("mlstm", backend, BACKENDS, fallback="chunkwise", device=q.device, dtype=q.dtype)
    options = {"keep_h_lo": keep_h_lo} if name == "triton" else {}  # the one backend that keeps the residual
    h, state = BACKENDS[name](q, k, v, i, f, state, chunk_size=chunk_size, eps=eps, input_gate=input_gate,
                              cu_seqlens=cu_seqlens, **options)
    return h.to(v.dtype), state


def mlstm_step(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, *, state: MLSTMState | None = None,
    backend: str = "auto", eps: float = 1e-6, input_gate: str = "exp",
) -> tuple[Tensor, MLSTMState]:
    """One decode step: q, k (B, NH, DQK), v (B, NH, DV), i, f (B, NH) -> h (B, NH, DV), new state."""
    check_floating("mlstm_step", q=q, k=k, v=v, i=i, f=f)
    if q.dim() != 3 or k.shape != q.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"mlstm_step: expected q, k (B, NH, DQK) and v (B, NH, DV), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if i.shape != q.shape[:2] or f.shape != q.shape[:2]:
        raise ValueError(f"mlstm_step: gates must have shape (B, NH) = {tuple(q.shape[:2])}, got {tuple(i.shape)}, {tuple(f.shape)}")
    B, NH, DQK = q.shape
    check_sizes("mlstm_step", B, NH, DQK, v.shape[-1])
    check_devices("mlstm_step", q, k, v, i, f)
    if state is None:
        state = zero_state(B, NH, DQK, v.shape[-1], q.device, compute_dtype(q))
    else:
        check_mlstm_state(state, B, NH, DQK, v.shape[-1], q.device, op="mlstm_step")
    name = choose_backend("mlstm_step", backend, STEP_BACKENDS, fallback="torch", device=q.device, dtype=q.dtype)
    h, state = STEP_BACKENDS[name](q, k, v, i, f, state, eps=eps, input_gate=input_gate)
    return h.to(v.dtype), state


def mlstm_reference(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, *, state: MLSTMState | None = None,
    eps: float = 1e-6, input_gate: str = "exp", cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, MLSTMState]:
    """The yardstick: the step-by-step recurrence in float64 (outputs float64)."""
    to64 = lambda t: t.to(torch.float64)
    st = None if state is None else tuple(to64(s) for s in state)
    return mlstm(to64(q), to64(k), to64(v), to64(i), to64(f), state=st, backend="recurrent", eps=eps,
                 input_gate=input_gate, cu_seqlens=cu_seqlens)
