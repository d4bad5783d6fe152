"""Triton kernels for the mLSTM cell: chunkwise forward/backward and the fused decode step.

`triton_usable()` says whether the kernels can run here: Triton importable and either a CUDA device
or `TRITON_INTERPRET=1` (the CPU interpreter the tests use). Triton itself is imported only then, so
importing flashxlstm on a machine without a GPU stays cheap.
"""
from __future__ import annotations

import importlib.util
import os

import torch


def triton_usable() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
