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


@torch.no_grad()
def large_from_official(official: nn.Module) -> xLSTMLarge:
    """A flashxlstm `xLSTMLarge` with the official module's config and a copy of its weights (same dtype/device)."""
    if not is_official_large(official):
        raise TypeError(f"expected the official xlstm.xlstm_large xLSTMLarge, got {type(official).__name__}")
    config = large_config_from_official(official.config)
    weights = {("backbone.embeddings.weight" if k == "embedding.weight" else k): v
               for k, v in official.state_dict().items()}
    ref = weights["backbone.embeddings.weight"]
    with torch.device("meta"):
        model = xLSTMLarge(config)
    model = model.to_empty(device=ref.device).to(ref.dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.backbone.embeddings.weight
    ours = model.state_dict()
    missing = sorted(set(ours) - set(weights))
    unexpected = sorted(set(weights) - set(ours))
    if missing or unexpected:
        raise ValueError(f"official xLSTMLarge does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict(weights)
    return model.eval() if not official.training else model
