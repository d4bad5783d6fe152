"""Triton kernels of head_norm_gate_seq (see that module for the math and the rounding points).

Programs take a block of BT tokens of one head (BD >= DH lanes), grid (token blocks, heads). Token t of the
flattened B * S tokens is (b, s) = (t // S, t % S): h is read at b * shb + head * shh + s * shs (unit stride
along DH), o, out, dout and do at t * row stride + head * DH, mean and rstd at t * NH + head. The backward
programs walk token blocks pid, pid + NP, ... and keep their partial sums of the weight and bias gradients in
registers, written once per program to row pid of (NP, NH * DH) buffers that the caller sums.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _rows(t0, T, S, BT: tl.constexpr, BD: tl.constexpr, DH):
    t = t0 + tl.arange(0, BT).to(tl.int64)
    d = tl.arange(0, BD)
    tm = t < T
    dm = d < DH
    return t, d, t // S, t % S, tm, dm, tm[:, None] & dm[None, :]


@triton.jit
def head_norm_gate_seq_fwd_kernel(h, o, w, b, out, mean_out, rstd_out, T, S, NH, DH, shb, shh, shs, sor, eps,
                                  BT: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr):
    hd = tl.program_id(1)
    t, d, bi, si, tm, dm, m2 = _rows(tl.program_id(0).to(tl.int64) * BT, T, S, BT, BD, DH)
    x = tl.load(h + (bi * shb + hd * shh + si * shs)[:, None] + d[None, :], mask=m2, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / DH
    xc = tl.where(m2, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / DH + eps)
    xr = (xc * rstd[:, None]).to(h.dtype.element_ty).to(tl.float32)  # the norm module's one rounding
    y = xr * tl.load(w + hd * DH + d, mask=dm, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y += tl.load(b + hd * DH + d, mask=dm, other=0.0).to(tl.float32)[None, :]
    col = hd * DH + d
    og = tl.load(o + t[:, None] * sor + col[None, :], mask=m2, other=0.0).to(tl.float32)
    y = y / (1.0 + tl.exp(-og))
    tl.store(out + t[:, None] * (NH * DH) + col[None, :], y.to(out.dtype.element_ty), mask=m2)
    tl.store(mean_out + t * NH + hd, mean, mask=tm)
    tl.store(rstd_out + t * NH + hd, rstd, mask=tm)


@triton.jit
def head_norm_gate_seq_bwd_kernel(dout, h, o, w, b, mean_in, rstd_in, dh, do, dw_part, db_part, T, S, NH, DH, NP,
                                  shb, shh, shs, sor, sdr,
                                  BT: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr):
    pid = tl.program_id(0)
    hd = tl.program_id(1)
    d = tl.arange(0, BD)
    dm = d < DH
    col = hd * DH + d
    wv = tl.load(w + col, mask=dm, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bv = tl.load(b + col, mask=dm, other=0.0).to(tl.float32)
    acc_w = tl.zeros([BD], dtype=tl.float32)
    acc_b = tl.zeros([BD], dtype=tl.float32)
    for t0 in range(pid * BT, T, NP * BT):
        t, d2, bi, si, tm, dm2, m2 = _rows(t0, T, S, BT, BD, DH)
        hoff = (bi * shb + hd * shh + si * shs)[:, None] + d2[None, :]
        x = tl.load(h + hoff, mask=m2, other=0.0).to(tl.float32)
        mean = tl.load(mean_in + t * NH + hd, mask=tm, other=0.0)
        rstd = tl.load(rstd_in + t * NH + hd, mask=tm, other=0.0)
        xhat = tl.where(m2, (x - mean[:, None]) * rstd[:, None], 0.0)
        xr = xhat.to(h.dtype.element_ty).to(tl.float32)
        y = xr * wv[None, :]
        if HAS_BIAS:
            y += bv[None, :]
        og = tl.load(o + t[:, None] * sor + col[None, :], mask=m2, other=0.0).to(tl.float32)
        g = 1.0 / (1.0 + tl.exp(-og))
        du = tl.load(dout + t[:, None] * sdr + col[None, :], mask=m2, other=0.0).to(tl.float32)
        tl.store(do + t[:, None] * (NH * DH) + col[None, :], (du * y * g * (1.0 - g)).to(do.dtype.element_ty),
                 mask=m2)
        dy = tl.where(m2, du * g, 0.0)
        acc_w += tl.sum(dy * xr, 0)
        if HAS_BIAS:
            acc_b += tl.sum(dy, 0)
        dxh = dy * wv[None, :]
        c1 = tl.sum(dxh, 1) / DH
        c2 = tl.sum(dxh * xhat, 1) / DH
        dx = (dxh - c1[:, None] - xhat * c2[:, None]) * rstd[:, None]
        # dh is (B, NH, S, DH), contiguous
        tl.store(dh + ((bi * NH + hd) * S + si)[:, None] * DH + d2[None, :], dx.to(dh.dtype.element_ty), mask=m2)
    tl.store(dw_part + pid * (NH * DH) + col, acc_w, mask=dm)
    if HAS_BIAS:
        tl.store(db_part + pid * (NH * DH) + col, acc_b, mask=dm)
