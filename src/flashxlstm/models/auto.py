"""`from_pretrained(dir_or_hub_id)`: the right flashxlstm model for a checkpoint, whichever family.

The checkpoint decides: config.json with "model_type": "flashxlstm-neurips" is an xLSTMLM (our own
format); config.json of the xLSTM-7B family (transformers' "xlstm", or ours "flashxlstm-large") or an NX-AI
config.yaml is an xLSTMLarge. A name that is not a local directory is read as a Hugging Face hub id.
"""
from __future__ import annotations

import os

import torch

from ..checkpoints.download import resolve_checkpoint
from ..checkpoints.pretrained import checkpoint_family
from .xlstm_large import xLSTMLarge
from .xlstm_lm import xLSTMLM


def from_pretrained(path_or_hub_id: str | os.PathLike, dtype: torch.dtype | str | None = None, device=None,
                    **overrides) -> xLSTMLM | xLSTMLarge:
    """Load a checkpoint directory or hub id as a flashxlstm model in eval mode.

    dtype: the parameters' dtype or its name (default: as stored); device: where to put them (default CPU).
    overrides: config fields to change on load for the 7B family (e.g. weight_mode="fused", backend=...).
    """
    family, path = checkpoint_family(resolve_checkpoint(path_or_hub_id, "from_pretrained"))
    if family == "neurips":
        if overrides:
            raise ValueError(f"from_pretrained: config overrides {sorted(overrides)} are for the xLSTM-7B family; "
                             f"{path} holds an xLSTMLM (NeurIPS family)")
        return xLSTMLM.load_checkpoint(path, dtype=dtype, device=device)
    return xLSTMLarge.load_checkpoint(path, dtype=dtype, device=device, **overrides)
