"""A matrix-vector product for one-token decoding: y = x W^T (+ b), optionally with a gated-linear prologue.

    y = linear_decode(x, weight, bias=None, z=None, backend="auto")

x (..., K) holding a single row in total (batch 1, one token), weight (N, K), bias (N,). With z (shaped like
x) the input is silu(x) * z, rounded to x's dtype after the SiLU and after the product as the unfused
SwiGLU does, so the down projection of the feed-forward needs no separate SiLU x up launch.

At batch 1 decoding streams the weights once per token and is bound by memory bandwidth; which kernel
streams fastest depends on the shape, so on CUDA the first call for a shape times cuBLAS (torch's linear)
against a few layouts of the Triton kernel (BN rows per program, BK columns per step) and keeps the
fastest; the choice never loses to cuBLAS by more than timing noise. More than one row, the CPU, or
backend="torch": torch's linear. backend="triton" forces the default Triton layout; under TRITON_INTERPRET=1
(the CPU tests) "auto" takes it too, so a model's one-row decode runs the kernel there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from ..triton_support import FirstCallTuner, interpreting

# shape key -> Triton layout, or None for torch's linear (the fastest of them on the first CUDA call)
TUNER = FirstCallTuner("FLASHXLSTM_GEMV_TUNE")
DEFAULT = (8, 512, 4, 3)  # (BN, BK, num_warps, num_stages)
CANDIDATES = [(8, 512, 4, 3), (16, 256, 4, 3), (4, 1024, 4, 3)]


@triton.jit
def gemv_kernel(x, z, W, b, y, N, K, BN: tl.constexpr, BK: tl.constexpr, GLU: tl.constexpr, HAS_B: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    mr = rows < N
    acc = tl.zeros([BN, BK], dtype=tl.float32)
    for k0 in range(0, K, BK):
        ok = k0 + tl.arange(0, BK)
        mk = ok < K
        xv = tl.load(x + ok, mask=mk, other=0.0).to(tl.float32)
        if GLU:
            a = (xv / (1.0 + tl.exp(-xv))).to(x.dtype.element_ty).to(tl.float32)
            xv = (a * tl.load(z + ok, mask=mk, other=0.0).to(tl.float32)).to(x.dtype.element_ty).to(tl.float32)
        w = tl.load(W + rows[:, None].to(tl.int64) * K + ok[None, :], mask=mr[:, None] & mk[None, :], other=0.0,
                    eviction_policy="evict_first")
        acc += w.to(tl.float32) * xv[None, :]
    out = tl.sum(acc, 1)
    if HAS_B:
        out += tl.load(b + rows, mask=mr, other=0.0).to(tl.float32)
    tl.store(y + rows, out.to(y.dtype.element_ty), mask=mr)


def _torch(x: Tensor, weight: Tensor, bias: Tensor | None, z: Tensor | None) -> Tensor:
    return F.linear(x if z is None else F.silu(x) * z, weight, bias)


def _triton(x: Tensor, weight: Tensor, bias: Tensor | None, z: Tensor | None, layout: tuple) -> Tensor:
    BN, BK, warps, stages = layout
    N, K = weight.shape
    x1 = x.reshape(K)
    z1 = x1 if z is None else z.reshape(K)
    x1, z1 = (t if t.stride(0) == 1 else t.contiguous() for t in (x1, z1))
    y = torch.empty(*x.shape[:-1], N, dtype=x.dtype, device=x.device)
    gemv_kernel[(triton.cdiv(N, BN),)](
        x1, z1, weight, weight if bias is None else bias, y, N, K, BN=BN, BK=min(BK, triton.next_power_of_2(K)),
        GLU=z is not None, HAS_B=bias is not None, num_warps=warps, num_stages=stages,
    )
    return y


def linear_decode(x: Tensor, weight: Tensor, bias: Tensor | None = None, z: Tensor | None = None,
                  backend: str = "auto") -> Tensor:
    """See the module docstring."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"linear_decode: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if z is not None and (z.shape != x.shape or z.dtype != x.dtype):
        raise ValueError(f"linear_decode: z must match x, got {tuple(z.shape)} {z.dtype} for {tuple(x.shape)} {x.dtype}")
    one_row = x.numel() == x.shape[-1] and weight.is_contiguous() and weight.dtype == x.dtype
    if backend == "torch" or not one_row:
        return _torch(x, weight, bias, z)
    if backend == "triton" or (interpreting() and not x.is_cuda):
        return _triton(x, weight, bias, z, DEFAULT)
    if not x.is_cuda:
        return _torch(x, weight, bias, z)
    key = (tuple(weight.shape), x.dtype, z is not None, bias is not None)
    # before a shape is timed (graph capture, tuning switched off) torch's linear serves it
    layout = TUNER.choose(key, x.device, None, CANDIDATES, lambda lay: _triton(x, weight, bias, z, lay),
                          baseline=lambda: _torch(x, weight, bias, z))
    return _torch(x, weight, bias, z) if layout is None else _triton(x, weight, bias, z, layout)
