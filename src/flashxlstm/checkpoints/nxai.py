"""The NX-AI side of the xLSTM-7B family: the official `xLSTMLarge` module and its key names.

The official module names its embedding `embedding.weight`; everything else already has the hub names
that flashxlstm's `xLSTMLarge` uses (backbone.blocks.{i}...., backbone.out_norm.weight, lm_head.weight).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..models.xlstm_large import xLSTMLarge, xLSTMLargeConfig


def is_official_large(module: object) -> bool:
    cls = type(module)
    return cls.__name__ == "xLSTMLarge" and cls.__module__.startswith("xlstm.")


def large_config_from_official(official_config: object) -> xLSTMLargeConfig:
    """Our config from the official xLSTMLargeConfig (kernel fields dropped)."""
    return xLSTMLargeConfig.from_dict(dataclasses.asdict(official_config))


def large_from_official(official: nn.Module) -> xLSTMLarge:
    """A flashxlstm `xLSTMLarge` with the official module's config and a copy of its weights (same dtype/device)."""
    if not is_official_large(official):
        raise TypeError(f"expected the official xlstm.xlstm_large xLSTMLarge, got {type(official).__name__}")
    model = large_from_official_state_dict(official.state_dict(), official.config)
    return model.train(official.training)


@torch.no_grad()
def large_from_official_state_dict(state_dict: dict, official_config: object) -> xLSTMLarge:
    """The same from an official xLSTMLarge state dict (embedding.weight naming) and its xLSTMLargeConfig."""
    config = large_config_from_official(official_config)
    weights = {("backbone.embeddings.weight" if k == "embedding.weight" else k): v for k, v in state_dict.items()}
    with torch.device("meta"):
        model = xLSTMLarge(config)
    ref = weights.get("backbone.embeddings.weight")
    if ref is None:
        raise ValueError("official xLSTMLarge state dict has no embedding.weight")
    model = model.to(ref.dtype).to_empty(device=ref.device)
    ours = model.state_dict()
    for key, t in weights.items():
        if key in ours and tuple(t.shape) != tuple(ours[key].shape):
            raise ValueError(f"official state dict: shape mismatch for {key!r}: {tuple(t.shape)}, config expects "
                             f"{tuple(ours[key].shape)}")
    missing = sorted(set(ours) - set(weights))
    unexpected = sorted(set(weights) - set(ours))
    if missing or unexpected:
        raise ValueError(f"official state dict does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict(weights)
    return model.eval()
