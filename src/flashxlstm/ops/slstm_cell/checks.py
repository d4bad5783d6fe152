"""Input validation for the sLSTM op: one place that names what was wrong and what was expected."""
from __future__ import annotations

import torch
from torch import Tensor

SLSTMState = tuple[Tensor, Tensor, Tensor, Tensor]

FORGET_GATES = ("sigmoid", "exp")
STATE_NAMES = ("c", "n", "m", "h")


def compute_dtype(t: Tensor) -> torch.dtype:
    """States and accumulation run in float32, or float64 when the inputs are float64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}")


def check_slstm_weights(op: str, R: Tensor, b: Tensor, NH: int, DH: int) -> None:
    _check_tensor(op, "R", R)
    _check_tensor(op, "b", b)
    if tuple(R.shape) != (4, NH, DH, DH):
        raise ValueError(f"{op}: R must have shape (4, NH, DH, DH) = {(4, NH, DH, DH)}, got {tuple(R.shape)}")
    if tuple(b.shape) != (4, NH, DH):
        raise ValueError(f"{op}: b must have shape (4, NH, DH) = {(4, NH, DH)}, got {tuple(b.shape)}")


def check_slstm_inputs(x: Tensor, R: Tensor, b: Tensor, state: SLSTMState | None, forget_gate: str,
                       cu_seqlens: Tensor | None = None) -> None:
    """Raise ValueError/TypeError with a clear message unless the inputs fit the sLSTM op's contract."""
    _check_tensor("slstm", "x", x)
    if x.dim() != 5 or x.shape[2] != 4:
        raise ValueError(f"slstm: x must have shape (B, S, 4, NH, DH) with gates (i, f, z, o), got {tuple(x.shape)}")
    B, S, _, NH, DH = x.shape
    if S == 0:
        raise ValueError("slstm: the sequence length S must be at least 1")
    if B == 0 or NH == 0 or DH == 0:
        raise ValueError(f"slstm: B, NH and DH must be positive, got x of shape {tuple(x.shape)}")
    check_slstm_weights("slstm", R, b, NH, DH)
    check_forget_gate("slstm", forget_gate)
    _check_devices("slstm", x, R, b)
    nseq = B
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
                or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError("slstm: cu_seqlens must be a 1-D int32/int64 tensor [0, ..., B * S] of document offsets")
        if not torch.compiler.is_compiling():  # a host sync; traced, the op that reads cu_seqlens checks it
            check_cu_seqlens_values("slstm", cu_seqlens, S, B)
        nseq = cu_seqlens.numel() - 1
    if state is not None:
        check_slstm_state("slstm", state, nseq, NH, DH, x.device)


def check_cu_seqlens_values(op: str, cu_seqlens: Tensor, S: int, B: int = 1) -> None:
    """The document offsets over the flattened B x S steps must rise strictly from 0 to B * S, and every row
    must start a document (reads the values: a host sync on a GPU)."""
    cs = cu_seqlens.tolist()
    if cs[0] != 0 or cs[-1] != B * S or any(b <= a for a, b in zip(cs, cs[1:])):
        raise ValueError(f"{op}: cu_seqlens must rise strictly from 0 to B * S = {B * S}, got {cs}")
    missing = sorted(set(range(0, B * S, S)) - set(cs))
    if missing:
        raise ValueError(f"{op}: with B = {B} rows of S = {S} steps every row must start a document: cu_seqlens "
                         f"lacks the row starts {missing[:8]}")


def check_forget_gate(op: str, forget_gate: str) -> None:
    if forget_gate not in FORGET_GATES:
        raise ValueError(f"{op}: forget_gate must be one of {FORGET_GATES}, got {forget_gate!r}")


def _check_devices(op: str, *ts: Tensor) -> None:
    devices = {t.device for t in ts}
    if len(devices) != 1:
        raise ValueError(f"{op}: x, R, b and the state must be on one device, got {sorted(map(str, devices))}")


def check_slstm_state(op: str, state: SLSTMState, B: int, NH: int, DH: int, device: torch.device) -> None:
    if not isinstance(state, (tuple, list)) or len(state) != 4:
        raise TypeError(f"{op}: state must be a tuple (c, n, m, h) of (B, NH, DH) tensors, got {type(state).__name__}")
    for name, t in zip(STATE_NAMES, state):
        _check_tensor(op, f"state {name}", t)
        if tuple(t.shape) != (B, NH, DH):
            raise ValueError(f"{op}: state {name} must have shape (B, NH, DH) = {(B, NH, DH)}, got {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"{op}: state {name} is on {t.device}, expected {device} like x")
