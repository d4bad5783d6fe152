"""Recurrent state as plain nested tuples of tensors, and the few tree operations on it.

A model's state is a tuple with one entry per block; each entry is a tuple of tensors (or None for a
stateless block). These helpers never modify tensors in place.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

State = Any  # nested tuples/lists of Tensors (and None)


def map_state(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """Apply fn to every tensor in a nested state, keeping its structure."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, s) for s in state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    raise TypeError(f"state must be nested tuples/lists/dicts of tensors, found {type(state).__name__}")


def detach_state(state: State) -> State:
    """Cut the autograd graph at a state (truncated backpropagation through time)."""
    return map_state(Tensor.detach, state)


def state_to(state: State, device=None, dtype=None) -> State:
    return map_state(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None), state)
