"""Recurrent state: one typed tuple per layer, a model's state a tuple of those, and tree operations on it.

    mLSTMLayerState(conv, C, n, m)      NeurIPS mLSTM layer: conv window (B, K-1, Din) or None, C (B, NH, DH, DH),
                                        n (B, NH, DH), m (B, NH)
    sLSTMLayerState(conv, c, n, m, h)   NeurIPS sLSTM layer: conv window (B, K-1, D) or None, c/n/m/h (B, NH, DH)
    mLSTMCellState(C, n, m)             7B-family block: C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH)

They are NamedTuples, so they unpack like the plain tuples earlier code passed around (plain tuples of the
same fields are still accepted as input), index by name (`state[0].C`) and are pytrees for torch.compile
and torch.export; torch.load(weights_only=True) accepts them. These helpers never modify tensors in place.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

State = Any  # nested (named) tuples/lists/dicts of Tensors (and None)


class mLSTMLayerState(NamedTuple):
    conv: Optional[Tensor]
    C: Tensor
    n: Tensor
    m: Tensor


class sLSTMLayerState(NamedTuple):
    conv: Optional[Tensor]
    c: Tensor
    n: Tensor
    m: Tensor
    h: Tensor


class mLSTMCellState(NamedTuple):
    C: Tensor
    n: Tensor
    m: Tensor


# states saved inside training checkpoints load with torch.load(weights_only=True)
torch.serialization.add_safe_globals([mLSTMLayerState, sLSTMLayerState, mLSTMCellState])


def _rebuild(like: tuple | list, items) -> tuple | list:
    items = list(items)
    if hasattr(like, "_fields"):  # a NamedTuple takes its fields positionally
        return type(like)(*items)
    return type(like)(items)


def map_state(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """Apply fn to every tensor in a nested state, keeping its structure (and its tuple types)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return _rebuild(state, (map_state(fn, s) for s in state))
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    raise TypeError(f"state must be nested tuples/lists/dicts of tensors, found {type(state).__name__}")


def detach_state(state: State) -> State:
    """Cut the autograd graph at a state (truncated backpropagation through time)."""
    return map_state(Tensor.detach, state)


def state_to(state: State, device=None, dtype=None) -> State:
    return map_state(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None), state)


def select_rows(state: State, index: Tensor) -> State:
    """The state of the batch rows `index` (an index tensor or a boolean mask over rows)."""
    return map_state(lambda t: t[index], state)


def merge_rows(state: State, rows: State, index: Tensor) -> State:
    """A new state equal to `state` with the batch rows `index` replaced by `rows` (same structure)."""
    leaves: list[Tensor] = []
    map_state(lambda t: leaves.append(t) or t, rows)
    it = iter(leaves)

    def put(t: Tensor) -> Tensor:
        out = t.clone()
        out[index] = next(it).to(t.dtype)
        return out

    return map_state(put, state)
