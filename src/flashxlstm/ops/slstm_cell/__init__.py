"""`slstm`: the sLSTM cell over a sequence, one signature for every backend.

    h, state = slstm(x, R, b, state=None, backend="auto", forget_gate="sigmoid", cu_seqlens=None)

x: (B, S, 4, NH, DH) gate pre-activations in the order (i, f, z, o), already holding W x.
R: (4, NH, DH, DH), block-diagonal recurrent weights: raw[g, h, j] += sum_p R[g, h, j, p] * h_prev[h, p].
b: (4, NH, DH). h: (B, S, NH, DH) in x's dtype. state = (c, n, m, h), each (B, NH, DH), float32 (float64 for
float64 inputs); None means zeros. The returned state continues the sequence exactly (splitting a sequence
and carrying the state gives one pass); inputs are never modified in place. A state element with n == 0 is
empty: the next step starts afresh from it (m = raw_i), which for the zero state is exactly the official
xlstm behaviour. The math is in docs/cells.md (sLSTM); `forget_gate="exp"` uses raw_f directly as log f.
With `cu_seqlens` (FlashAttention convention: int offsets 0 < ... < B * S of N documents in the flattened
B x S steps; with B > 1 every row starts a document) every backend runs the packed rows in one pass, the
state reset at each document start (h_prev included); the Triton kernels run the rows side by side, so B
rows of S steps take S sequential steps. `state`, if given, then holds one initial state per document and
the returned state one final state per document.

Backends: "recurrent" (the stabilized step, plain loop, torch autograd), "fused" (a fused loop with a
hand-written backward; runs on any device), "triton" (persistent GPU kernels, registered when Triton is
importable), "auto" (ops/choose.py: triton on CUDA, fused otherwise and for float64 inputs, which the
kernels would compute in float32).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..choose import choose_backend
from .checks import SLSTMState, check_forget_gate, check_slstm_inputs, check_slstm_state, check_slstm_weights, compute_dtype
from .fused_loop import slstm_fused_loop
from .recurrent import slstm_cell_step, slstm_recurrent, zero_state

__all__ = ["slstm", "slstm_step", "slstm_reference", "zero_state", "register_backend", "BACKENDS", "SLSTMState"]

# name -> fn(x, R, b, state, *, forget_gate, cu_seqlens) -> (h (B, S, NH, DH), state)
BACKENDS: dict[str, Callable] = {}


def register_backend(name: str, fn: Callable) -> None:
    """Make a backend selectable by name (kernels register themselves on import)."""
    BACKENDS[name] = fn


register_backend("recurrent", slstm_recurrent)
register_backend("fused", slstm_fused_loop)

try:  # the GPU kernels need Triton; without it "auto" uses the fused form on every device
    import triton as _triton  # noqa: F401

    from .triton import slstm_triton

    register_backend("triton", slstm_triton)
except ImportError:  # pragma: no cover - depends on the installation
    pass


def slstm(
    x: Tensor, R: Tensor, b: Tensor, *, state: SLSTMState | None = None, backend: str = "auto",
    forget_gate: str = "sigmoid", cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, SLSTMState]:
    check_slstm_inputs(x, R, b, state, forget_gate, cu_seqlens)
    name = choose_backend("slstm", backend, BACKENDS, fallback="fused", device=x.device, dtype=x.dtype)
    B, _, _, NH, DH = x.shape
    nseq = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(x.device)
    dt = compute_dtype(x)
    state = zero_state(nseq, NH, DH, x.device, dt) if state is None else tuple(s.to(dt) for s in state)
    if cu_seqlens is not None and B > 1 and name != "triton":  # the torch loops walk the rows one after another
        h, state = BACKENDS[name](x.flatten(0, 1)[None], R, b, state, forget_gate=forget_gate, cu_seqlens=cu_seqlens)
        return h.view(B, -1, NH, DH).to(x.dtype), state
    h, state = BACKENDS[name](x, R, b, state, forget_gate=forget_gate, cu_seqlens=cu_seqlens)
    return h.to(x.dtype), state


def slstm_step(
    x: Tensor, R: Tensor, b: Tensor, *, state: SLSTMState | None = None, forget_gate: str = "sigmoid",
) -> tuple[Tensor, SLSTMState]:
    """One decode step: x (B, 4, NH, DH) -> h (B, NH, DH) in x's dtype, new state (c, n, m, h)."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"slstm_step: x must have shape (B, 4, NH, DH) with gates (i, f, z, o), got {got}")
    if not x.is_floating_point():
        raise TypeError(f"slstm_step: x must be a floating-point tensor, got dtype {x.dtype}")
    B, _, NH, DH = x.shape
    check_slstm_weights("slstm_step", R, b, NH, DH)
    check_forget_gate("slstm_step", forget_gate)
    dt = compute_dtype(x)
    if state is None:
        state = zero_state(B, NH, DH, x.device, dt)
    else:
        check_slstm_state("slstm_step", state, B, NH, DH, x.device)
    h, state = slstm_cell_step(x, R, b, state, forget_gate=forget_gate)
    return h.to(x.dtype), state


def slstm_reference(
    x: Tensor, R: Tensor, b: Tensor, *, state: SLSTMState | None = None, forget_gate: str = "sigmoid",
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, SLSTMState]:
    """The yardstick: the stabilized step-by-step recurrence in float64 (outputs float64)."""
    to64 = lambda t: t.to(torch.float64)
    st = None if state is None else tuple(to64(s) for s in state)
    return slstm(to64(x), to64(R), to64(b), state=st, backend="recurrent", forget_gate=forget_gate,
                 cu_seqlens=cu_seqlens)
