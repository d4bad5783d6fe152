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


def patch_interpreter() -> None:
    """Let Triton 3.6's CPU interpreter run loops with run-time bounds under numpy >= 2.4.

    The interpreter holds every scalar as a one-element array and turns it into a loop bound with
    int(array), which numpy 2.4 rejects for arrays of one dimension. We convert through .item().
    Only called when TRITON_INTERPRET=1; compiled kernels are untouched.
    """
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "flashxlstm_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.flashxlstm_patched = True
    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None:
    patch_interpreter()
