"""Triton kernels for the decode glue of the xLSTM-7B block (see reference.py for what each computes).

One program per row (per (row, head) for the head norm), the whole row in registers: these run at decode,
where a row is one token's D = 4096 features and launching is what costs, not arithmetic. Every kernel
reduces in float32 and rounds to the activation dtype at the same points as the torch reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def add_rms_norm_kernel(x, y, w, b, s_out, n_out, D, sx, sy, eps,
                        BD: tl.constexpr, HAS_Y: tl.constexpr, HAS_BIAS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, BD)
    mask = o < D
    s = tl.load(x + row * sx + o, mask=mask, other=0.0)
    if HAS_Y:
        s = (s.to(tl.float32) + tl.load(y + row * sy + o, mask=mask, other=0.0).to(tl.float32)).to(s_out.dtype.element_ty)
        tl.store(s_out + row * D + o, s, mask=mask)
    sf = s.to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(sf * sf, 0) / D + eps)
    out = (sf * r * tl.load(w + o, mask=mask, other=0.0).to(tl.float32)).to(n_out.dtype.element_ty)
    if HAS_BIAS:
        out = (out.to(tl.float32) + tl.load(b + o, mask=mask, other=0.0).to(tl.float32)).to(n_out.dtype.element_ty)
    tl.store(n_out + row * D + o, out, mask=mask)


@triton.jit
def norm_gate_row(x, mask, DH, w, b, og, eps, dt: tl.constexpr, BH: tl.constexpr, HAS_BIAS: tl.constexpr):
    """sigmoid(og) * LayerNorm(x) * w (+ b) for one head's row x (BH float32 lanes, those outside `mask`
    ignored), w and b pointers to the head's DH weights; rounded to dt where the torch modules round."""
    j = tl.arange(0, BH)
    mean = tl.sum(tl.where(mask, x, 0.0), 0) / DH
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, 0) / DH
    y = (xc / tl.sqrt(var + eps)).to(dt)
    y = (y.to(tl.float32) * tl.load(w + j, mask=mask, other=0.0).to(tl.float32)).to(dt)
    if HAS_BIAS:
        y = (y.to(tl.float32) + tl.load(b + j, mask=mask, other=0.0).to(tl.float32)).to(dt)
    g = (1.0 / (1.0 + tl.exp(-og))).to(dt)
    return (g.to(tl.float32) * y.to(tl.float32)).to(dt)


@triton.jit
def head_norm_gate_kernel(h, o, w, b, out, NH, DH, so, eps, BH: tl.constexpr, HAS_BIAS: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)  # row * NH + head
    row = p // NH
    hd = p % NH
    j = tl.arange(0, BH)
    mask = j < DH
    x = tl.load(h + p * DH + j, mask=mask, other=0.0).to(tl.float32)
    og = tl.load(o + row * so + hd * DH + j, mask=mask, other=0.0).to(tl.float32)
    y = norm_gate_row(x, mask, DH, w + hd * DH, b + hd * DH, og, eps, out.dtype.element_ty, BH, HAS_BIAS)
    tl.store(out + row * NH * DH + hd * DH + j, y, mask=mask)


@triton.jit
def silu_mul_kernel(gate, zp, out, H, sg, sz, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = j < H
    g = tl.load(gate + row * sg + j, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(zp + row * sz + j, mask=mask, other=0.0).to(tl.float32)
    dt = out.dtype.element_ty
    a = (g / (1.0 + tl.exp(-g))).to(dt)
    tl.store(out + row * H + j, (a.to(tl.float32) * z).to(dt), mask=mask)


def _rows(t: Tensor) -> Tensor:
    """t (..., D) as (R, D) with unit stride along D (a view when possible)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _warps(n: int) -> int:
    return 8 if n >= 4096 else 4 if n >= 1024 else 2


def add_rms_norm_triton(x: Tensor, y: Tensor | None, weight: Tensor, bias: Tensor | None, eps: float
                        ) -> tuple[Tensor, Tensor]:
    D = x.shape[-1]
    x2 = _rows(x)
    y2 = x2 if y is None else _rows(y)
    s = x if y is None else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    n = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    BD = triton.next_power_of_2(D)
    add_rms_norm_kernel[(x2.shape[0],)](
        x2, y2, weight, weight if bias is None else bias, s, n, D, x2.stride(0), y2.stride(0), float(eps),
        BD=BD, HAS_Y=y is not None, HAS_BIAS=bias is not None, num_warps=_warps(BD),
    )
    return s, n


def head_norm_gate_triton(h: Tensor, o: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
    B, NH, DH = h.shape
    h = h.contiguous()
    if o.stride(-1) != 1:
        o = o.contiguous()
    out = torch.empty(B, NH * DH, dtype=h.dtype, device=h.device)
    BH = triton.next_power_of_2(DH)
    head_norm_gate_kernel[(B * NH,)](
        h, o, weight, weight if bias is None else bias, out, NH, DH, o.stride(0), float(eps),
        BH=BH, HAS_BIAS=bias is not None, num_warps=_warps(BH),
    )
    return out


def silu_mul_triton(gate: Tensor, z: Tensor) -> Tensor:
    if gate.shape != z.shape or gate.dtype != z.dtype:
        raise ValueError(f"silu_mul: gate and z must have one shape and dtype, got {tuple(gate.shape)} {gate.dtype} "
                         f"and {tuple(z.shape)} {z.dtype}")
    H = gate.shape[-1]
    g2, z2 = _rows(gate), _rows(z)
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    BLOCK = min(2048, triton.next_power_of_2(H))
    silu_mul_kernel[(g2.shape[0], triton.cdiv(H, BLOCK))](g2, z2, out, H, g2.stride(0), z2.stride(0), BLOCK=BLOCK,
                                                          num_warps=4)
    return out
