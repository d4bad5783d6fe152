"""Input validation for the mLSTM op: one place that names what was wrong and what was expected."""
from __future__ import annotations

import weakref
from collections.abc import Hashable

import torch
from torch import Tensor

MLSTMState = tuple[Tensor, Tensor, Tensor]

INPUT_GATES = ("exp", "sigmoid")


def check_mlstm_inputs(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState | None,
    input_gate: str, cu_seqlens: Tensor | None = None,
) -> None:
    """Raise ValueError/TypeError with a clear message unless the inputs fit the mLSTM op's contract."""
    check_floating("mlstm", q=q, k=k, v=v, i=i, f=f)
    if q.dim() != 4:
        raise ValueError(f"mlstm: q must have shape (B, NH, S, DQK), got {tuple(q.shape)}")
    B, NH, S, DQK = q.shape
    if k.shape != q.shape:
        raise ValueError(f"mlstm: k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"mlstm: v must have shape (B, NH, S, DV) = ({B}, {NH}, {S}, DV), got {tuple(v.shape)}")
    for name, g in (("i", i), ("f", f)):
        if g.shape != q.shape[:3]:
            raise ValueError(f"mlstm: gate {name} must have shape (B, NH, S) = {tuple(q.shape[:3])}, got {tuple(g.shape)}")
    if S == 0:
        raise ValueError("mlstm: the sequence length S must be at least 1")
    check_sizes("mlstm", B, NH, DQK, v.shape[-1])
    check_devices("mlstm", q, k, v, i, f)
    if input_gate not in INPUT_GATES:
        raise ValueError(f"mlstm: input_gate must be one of {INPUT_GATES}, got {input_gate!r}")
    nseq = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"mlstm: cu_seqlens needs packed inputs with B == 1, got B == {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError("mlstm: cu_seqlens must be a 1-D int32/int64 tensor [0, ..., S] of document offsets")
        if not torch.compiler.is_compiling():  # a host sync; traced, the op that reads cu_seqlens checks it
            check_cu_seqlens_values(cu_seqlens, S)
        nseq = cu_seqlens.numel() - 1
    if state is not None:
        check_mlstm_state(state, nseq, NH, DQK, v.shape[-1], q.device)


def check_cu_seqlens_values(cu_seqlens: Tensor, S: int) -> None:
    """The document offsets must rise strictly from 0 to S. Reads the values, a host sync on a GPU, once per
    offsets tensor: the layers of a model share one cu_seqlens, and a sync per layer drains the GPU's queue
    every time (see checked_before)."""
    if checked_before(cu_seqlens, ("mlstm", S)):
        return
    cs = cu_seqlens.tolist()
    if cs[0] != 0 or cs[-1] != S or any(b <= a for a, b in zip(cs, cs[1:])):
        raise ValueError(f"mlstm: cu_seqlens must rise strictly from 0 to S={S}, got {cs}")
    remember_checked(cu_seqlens, ("mlstm", S))


# id(tensor) -> (weak reference, version counter, the checks it passed): a tensor that is still alive and was not
# written since (same version counter) holds the values it had when a check passed
_CHECKED: dict[int, tuple] = {}


def checked_before(t: Tensor, check: Hashable) -> bool:
    """Whether `check` already passed on this very tensor, unmodified since (never for inference tensors, which
    have no version counter)."""
    if t.is_inference():
        return False
    entry = _CHECKED.get(id(t))
    return entry is not None and entry[0]() is t and entry[1] == t._version and check in entry[2]


def remember_checked(t: Tensor, check: Hashable) -> None:
    """Record that `check` passed on t as it is now (forgotten when t is freed or written)."""
    if t.is_inference():
        return
    entry = _CHECKED.get(id(t))
    if entry is not None and entry[0]() is t and entry[1] == t._version:
        entry[2].add(check)
        return
    key = id(t)
    _CHECKED[key] = (weakref.ref(t, lambda _ref, key=key: _CHECKED.pop(key, None)), t._version, {check})


def check_floating(op: str, **tensors) -> None:
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}")


def check_sizes(op: str, B: int, NH: int, DQK: int, DV: int) -> None:
    """Every dimension but S must be positive: DQK == 0 has no 1/sqrt(DQK) scale, and empty batches or heads
    are the caller's to skip."""
    for name, size in (("B", B), ("NH", NH), ("DQK", DQK), ("DV", DV)):
        if size < 1:
            raise ValueError(f"{op}: {name} must be at least 1, got {name} = {size}")


def check_devices(op: str, *ts: Tensor) -> None:
    devices = {t.device for t in ts}
    if len(devices) != 1:
        raise ValueError(f"{op}: all inputs (and the state) must be on one device, got {sorted(map(str, devices))}")


def check_mlstm_state(state: MLSTMState, B: int, NH: int, DQK: int, DV: int, device: torch.device | None = None,
                      op: str = "mlstm") -> None:
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise TypeError(f"{op}: state must be a tuple (C, n, m)")
    C, n, m = state
    want = {"C": (B, NH, DQK, DV), "n": (B, NH, DQK), "m": (B, NH)}
    for name, t in zip("Cnm", (C, n, m)):
        if not isinstance(t, Tensor) or tuple(t.shape) != want[name]:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{op}: state {name} must have shape {want[name]}, got {got}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: state {name} must be a floating-point tensor, got dtype {t.dtype}")
        if device is not None and t.device != device:
            raise ValueError(f"{op}: state {name} is on {t.device}, expected {device} like q")
