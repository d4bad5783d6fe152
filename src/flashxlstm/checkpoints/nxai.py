"""The NX-AI side of the xLSTM-7B family: the official `xLSTMLarge` module, its config and its key names.

The official module names its embedding `embedding.weight`; everything else already has the hub names
that flashxlstm's `xLSTMLarge` uses (backbone.blocks.{i}...., backbone.out_norm.weight, lm_head.weight).
The model is built from these in flashxlstm.models.official.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor


def is_official_large(module: object) -> bool:
    cls = type(module)
    return cls.__name__ == "xLSTMLarge" and cls.__module__.startswith("xlstm.")


def large_config_fields(official_config: Any) -> dict[str, Any]:
    """The official xLSTMLargeConfig as a dict (our config's from_dict drops its kernel fields)."""
    return dataclasses.asdict(official_config)


def large_weights_from_official(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """An official xLSTMLarge state dict in the hub naming flashxlstm uses."""
    if "embedding.weight" not in state_dict:
        raise ValueError("official xLSTMLarge state dict has no embedding.weight")
    return {("backbone.embeddings.weight" if k == "embedding.weight" else k): v for k, v in state_dict.items()}
