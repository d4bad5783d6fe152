"""The one rule behind backend="auto" for every op: mlstm, mlstm_step, slstm and the fused decode glue.

    name = choose_backend("mlstm", backend, available, fallback="chunkwise", device=q.device, dtype=q.dtype)

An explicit name is checked against what is available (a ValueError lists the choices). "auto" means the
Triton kernels on a CUDA device when they are available and the inputs are not float64 (the kernels compute
in float32 at best, and a float64 caller asks for float64 accuracy); otherwise the op's torch fallback,
which runs on any device.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


def choose_backend(op: str, backend: str, available: Iterable[str], *, fallback: str, device: torch.device,
                   dtype: torch.dtype) -> str:
    names = set(available)
    if backend == "auto":
        if torch.device(device).type == "cuda" and "triton" in names and dtype != torch.float64:
            return "triton"
        return fallback
    if backend not in names:
        raise ValueError(f"{op}: unknown backend {backend!r}; available: auto, {', '.join(sorted(names))}")
    return backend
