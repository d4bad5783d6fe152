"""The one strict loader: copy (key, tensor) items into a model's parameters and buffers, or fail with one
line that names what is wrong. Every checkpoint format (ours, the hub and NX-AI layouts, the official
converters) goes through it.

    load_strict(model.state_dict(keep_vars=True), items, source, places=None)

Checks, each a ValueError naming the key: a key the model does not have; a shape that differs; a tensor of a
kind the target cannot hold (integers or booleans where the model keeps floating-point weights: casting them
would silently change the values' meaning); a place filled twice (a key present twice, or under two names);
and, at the end, every place the model needs filled exactly once. Tied parameters (one tensor under several
names, e.g. a head tied to the embedding) count as filled when any of their names is.

places: for checkpoints whose tensors are parts of a model parameter (the 7B "fused" projections hold q, k,
v, o in row blocks), key -> (parameter key, first row, shape of the part); default: every parameter key to
itself, whole.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

Place = tuple[str, int, tuple[int, ...]]


def whole_places(params: dict[str, Tensor]) -> dict[str, Place]:
    return {key: (key, 0, tuple(t.shape)) for key, t in params.items()}


def _kind(t: Tensor) -> str:
    return "floating" if t.is_floating_point() else "complex" if t.is_complex() else "bool" if t.dtype == torch.bool else "integer"


@torch.no_grad()
def load_strict(params: dict[str, Tensor], items: Iterable[tuple[str, Tensor]], source: str,
                places: dict[str, Place] | None = None) -> None:
    """Fill `params` (a state dict with keep_vars=True: written in place) from `items`; see the module doc."""
    places = whole_places(params) if places is None else places
    alias: dict[int, list[str]] = {}
    for key, t in params.items():
        alias.setdefault(id(t), []).append(key)
    filled: dict[str, str] = {}  # place key -> the item key that filled it
    unexpected: list[str] = []
    for key, tensor in items:
        if key not in places:
            unexpected.append(key)
            continue
        pkey, row, want = places[key]
        if tuple(tensor.shape) != tuple(want):
            raise ValueError(f"{source}: shape mismatch for {key!r}: checkpoint {tuple(tensor.shape)}, model expects "
                             f"{tuple(want)}")
        dest = params[pkey]
        if _kind(tensor) != _kind(dest):
            raise ValueError(f"{source}: {key!r} is stored as {tensor.dtype}, but the model holds {_kind(dest)} "
                             f"values there ({dest.dtype}); a checkpoint of another kind or a corrupt one")
        if key in filled:
            same = "twice" if filled[key] == key else f"twice (as {filled[key]!r} and {key!r})"
            raise ValueError(f"{source}: {key!r} is present {same}; a checkpoint holds each tensor once")
        filled[key] = key
        target = dest.data if isinstance(dest, torch.nn.Parameter) else dest
        (target[row : row + want[0]] if target.dim() else target).copy_(tensor)
    if unexpected:
        raise ValueError(f"{source} does not match the model's config: it holds {len(unexpected)} tensor(s) the "
                         f"model does not have, such as {unexpected[0]!r} (wrong model family or config?)")
    done_params = {places[k][0] for k in filled}
    missing = []
    for key, (pkey, _, _) in places.items():
        if key in filled:
            continue
        if pkey != key or not any(a in done_params for a in alias[id(params[pkey])] if a != pkey):
            missing.append(key)
    if missing:
        raise ValueError(f"{source} does not match the model's config: it lacks {len(missing)} tensor(s) the "
                         f"model needs, such as {missing[0]!r}")

