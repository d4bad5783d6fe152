"""Shape checks for layer inputs and carried states: clear errors instead of tracebacks from inside torch."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def check_sequence_input(name: str, x: object, dim: int) -> None:
    """x must be a floating-point (B, S, dim) tensor with S >= 1."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: input must be floating point, got dtype {x.dtype}")
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name}: input must have shape (B, S, {dim}), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name}: the sequence length must be at least 1")


def check_state(name: str, state: object, fields: Sequence[str], shapes: Sequence[tuple[int, ...] | None]) -> None:
    """state must be a tuple of tensors of the given shapes (None where the shape is None)."""
    if not isinstance(state, (tuple, list)) or len(state) != len(fields):
        got = f"{type(state).__name__} of length {len(state)}" if isinstance(state, (tuple, list)) else type(state).__name__
        raise ValueError(f"{name}: state must be a tuple ({', '.join(fields)}), got {got}")
    for field, t, shape in zip(fields, state, shapes):
        if shape is None:
            if t is not None:
                raise ValueError(f"{name}: state {field} must be None for this layer, got {type(t).__name__}")
            continue
        if not isinstance(t, Tensor):
            raise ValueError(f"{name}: state {field} must be a tensor of shape {shape}, got {type(t).__name__}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name}: state {field} must have shape {tuple(shape)}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: state {field} must be floating point, got dtype {t.dtype}")


def state_dtype(x: Tensor) -> torch.dtype:
    """Recurrent states are float32 (float64 for float64 inputs), whatever the activation dtype."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
