"""The chunkwise mLSTM backward kernels.

The stabilizer m_t is treated as a constant (the output is invariant to it up to the eps term), so
the output is a gated linear attention with DV + 1 value columns: num (with v) and den (with 1),
h_t = num_t / z_t, z_t = max(|den_t|, exp(-m_t)) + eps. With dnum_t = dh_t / z_t and
dden_t = -(dh_t . h_t) / z_t * sign(den_t) [|den_t| > exp(-m_t)] the gradients are, per chunk:

    dq^_t = sum_{s<=t} D_ts (dnum_t . v_s + dden_t) k_s + w_t (C_in dnum_t + n_in dden_t)
    dk_s  = sum_{t>=s} D_ts (dnum_t . v_s + dden_t) q^_t + u_s (G v_s + gn)
    dv_s  = sum_{t>=s} D_ts (q^_t . k_s) dnum_t + u_s G^T k_s
    G_in  = exp(g + m_in - m_out) G + sum_t w_t q^_t dnum_t^T        (gn likewise with dden_t)

with D_ts = exp(b_t - b_s + li_s - m_t), w_t = exp(b_t + m_in - m_t), u_s = exp(g - b_s + li_s - m_out):
every factor is at most 1, so the backward state G (the gradient of the stabilized state, DQK x DV) is
as well scaled as the forward state. It starts from the gradient of the final state and ends as the
gradient of the initial state.

Kernels: `prep` (per step: 1/z, dden and dh.h), `dkv` (documents walked backwards, carrying G per
DV block: dv complete, dk summed over DV blocks with atomic adds), `dq` (documents walked forwards,
recomputing C per DV block: dq summed with atomic adds), `finalize` (casts dq, dk and forms the
per-step terms of the gate gradients). k_s . dk_s, the log input gate's gradient, is summed from fp32
products inside `dkv` rather than from the rounded dk, which would lose it to cancellation in bf16.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...triton_support import both
from .common import finite_or_zero, load_gates, seq_bounds


@triton.jit
def mlstm_bwd_prep_kernel(h, hlo, dh, mstat, dstat, rz, dden, dfo, R, eps,
                          DV: tl.constexpr, BR: tl.constexpr, BVP: tl.constexpr, HAS_LO: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    mr = r < R
    hdh = tl.zeros([BR], dtype=tl.float32)
    for v0 in range(0, DV, BVP):
        ov = v0 + tl.arange(0, BVP)
        msk = mr[:, None] & (ov < DV)[None, :]
        x = tl.load(h + r[:, None] * DV + ov[None, :], mask=msk, other=0.0).to(tl.float32)
        if HAS_LO:
            x += tl.load(hlo + r[:, None] * DV + ov[None, :], mask=msk, other=0.0).to(tl.float32)
        y = tl.load(dh + r[:, None] * DV + ov[None, :], mask=msk, other=0.0).to(tl.float32)
        hdh += tl.sum(x * y, 1)
    m = tl.load(mstat + r, mask=mr, other=0.0)
    den = tl.load(dstat + r, mask=mr, other=0.0)
    floor = tl.exp(-finite_or_zero(m))
    z = tl.maximum(tl.abs(den), floor) + eps
    sgn = tl.where(den >= 0, 1.0, -1.0)
    dd = tl.where(tl.abs(den) > floor, -hdh / z * sgn, 0.0)
    tl.store(rz + r, 1.0 / z, mask=mr)
    tl.store(dden + r, dd, mask=mr)
    tl.store(dfo + r, hdh + dd * den, mask=mr)


@triton.jit
def mlstm_bwd_dkv_kernel(
    q, k, v, ig, fg, m0, mstat, rz, dden, dh, dCf, dnf, dk32, dli32, dv, dC0, dn0, cu,
    S, TSEG, NSEG, scale,
    NH: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
    L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    EXP_GATE: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    vb = tl.program_id(1)
    row0, T, st = seq_bounds(cu, tl.program_id(0), S, TSEG, NSEG, NH, IS_VARLEN)
    first = vb == 0

    ok = tl.arange(0, BK)
    ov = vb * BV + tl.arange(0, BV)
    ol = tl.arange(0, L)
    mk = ok < DQK
    mv = ov < DV
    mkv = mk[:, None] & mv[None, :]
    causal = ol[:, None] >= ol[None, :]

    G = tl.load(dCf + st * DQK * DV + ok[:, None] * DV + ov[None, :], mask=mkv, other=0.0).to(tl.float32)
    gn = tl.load(dnf + st * DQK + ok, mask=both(mk, first), other=0.0).to(tl.float32)
    m_init = tl.load(m0 + st).to(tl.float32)

    NC = (T + L - 1) // L
    for cc in range(0, NC):
        c = NC - 1 - cc
        t = c * L + ol
        mt = t < T
        rows = row0 + t
        mtk = mt[:, None] & mk[None, :]
        mtv = mt[:, None] & mv[None, :]
        bq = tl.load(q + rows[:, None] * DQK + ok[None, :], mask=mtk, other=0.0)
        bk = tl.load(k + rows[:, None] * DQK + ok[None, :], mask=mtk, other=0.0)
        bv = tl.load(v + rows[:, None] * DV + ov[None, :], mask=mtv, other=0.0)
        bdh = tl.load(dh + rows[:, None] * DV + ov[None, :], mask=mtv, other=0.0)
        li, lf = load_gates(ig, fg, rows, mt, EXP_GATE)
        b = tl.cumsum(lf, 0)
        g = tl.sum(lf, 0)
        m_row = tl.load(mstat + rows, mask=mt, other=0.0)
        r = tl.load(rz + rows, mask=mt, other=0.0)
        dd = tl.load(dden + rows, mask=both(mt, first), other=0.0)
        m_in = tl.load(mstat + row0 + c * L - 1, mask=c > 0, other=0.0)
        m_in = tl.where(c > 0, m_in, m_init)
        m_out = tl.load(mstat + row0 + tl.minimum(c * L + L, T) - 1)

        mos = finite_or_zero(m_out)
        ms = tl.where(mt, finite_or_zero(m_row), mos)  # steps past the end: every exp(. - ms) stays <= 1
        Dm = tl.exp(tl.where(causal, b[:, None] - b[None, :] + li[None, :], float("-inf")) - ms[:, None])
        w = tl.exp(b + m_in - ms) * scale
        u = tl.exp(g - b + li - mos)
        decay = tl.exp(g + m_in - mos)
        dnum = (bdh.to(tl.float32) * r[:, None]).to(bv.dtype)
        Gc = G.to(bv.dtype)

        # dv: complete here, every program holds all of DQK
        A = tl.dot(bq, tl.trans(bk), input_precision=PREC) * scale * Dm
        kG = tl.dot(bk, Gc, input_precision=PREC)
        bdv = tl.dot(tl.trans(A.to(bv.dtype)), dnum, input_precision=PREC) + kG * u[:, None]
        tl.store(dv + rows[:, None] * DV + ov[None, :], bdv.to(dv.dtype.element_ty), mask=mtv)

        # dk: this DV block's share
        P = tl.dot(dnum, tl.trans(bv), input_precision=PREC) + dd[:, None]
        DP = (Dm * P).to(bq.dtype)
        # k_s . dk_s (the log input gate's gradient) from fp32 products, not from the rounded dk:
        # intra sum_t A_ts P_ts, inter u_s (k_s^T G v_s + k_s . gn)
        kgn = tl.sum(bk.to(tl.float32) * gn[None, :], 1)
        dli_part = tl.sum(A * P, 0) + u * (tl.sum(kG * bv.to(tl.float32), 1) + kgn)
        tl.atomic_add(dli32 + rows, dli_part, mask=mt)
        bdk = tl.dot(tl.trans(DP), bq, input_precision=PREC) * scale
        bdk += (tl.dot(bv, tl.trans(Gc), input_precision=PREC) + gn[None, :]) * u[:, None]
        tl.atomic_add(dk32 + rows[:, None] * DQK + ok[None, :], bdk, mask=mtk)

        # the backward state entering this chunk
        qw = (bq.to(tl.float32) * w[:, None])
        G = G * decay + tl.dot(tl.trans(qw.to(bq.dtype)), dnum, input_precision=PREC)
        gn = gn * decay + tl.sum(qw * dd[:, None], 0)

    tl.store(dC0 + st * DQK * DV + ok[:, None] * DV + ov[None, :], G, mask=mkv)
    if vb == 0:
        tl.store(dn0 + st * DQK + ok, gn, mask=mk)


@triton.jit
def mlstm_bwd_dq_kernel(
    k, v, ig, fg, C0, n0, m0, mstat, rz, dden, dh, dq32, cu,
    S, TSEG, NSEG, scale,
    NH: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
    L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    EXP_GATE: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    vb = tl.program_id(1)
    row0, T, st = seq_bounds(cu, tl.program_id(0), S, TSEG, NSEG, NH, IS_VARLEN)
    first = vb == 0

    ok = tl.arange(0, BK)
    ov = vb * BV + tl.arange(0, BV)
    ol = tl.arange(0, L)
    mk = ok < DQK
    mv = ov < DV
    mkv = mk[:, None] & mv[None, :]
    causal = ol[:, None] >= ol[None, :]

    C = tl.load(C0 + st * DQK * DV + ok[:, None] * DV + ov[None, :], mask=mkv, other=0.0).to(tl.float32)
    n = tl.load(n0 + st * DQK + ok, mask=mk, other=0.0).to(tl.float32)
    m = tl.load(m0 + st).to(tl.float32)

    for c in range(0, (T + L - 1) // L):
        t = c * L + ol
        mt = t < T
        rows = row0 + t
        mtk = mt[:, None] & mk[None, :]
        mtv = mt[:, None] & mv[None, :]
        bk = tl.load(k + rows[:, None] * DQK + ok[None, :], mask=mtk, other=0.0)
        bv = tl.load(v + rows[:, None] * DV + ov[None, :], mask=mtv, other=0.0)
        bdh = tl.load(dh + rows[:, None] * DV + ov[None, :], mask=mtv, other=0.0)
        li, lf = load_gates(ig, fg, rows, mt, EXP_GATE)
        b = tl.cumsum(lf, 0)
        g = tl.sum(lf, 0)
        m_row = tl.load(mstat + rows, mask=mt, other=0.0)
        r = tl.load(rz + rows, mask=mt, other=0.0)
        dd = tl.load(dden + rows, mask=both(mt, first), other=0.0)

        m_last = finite_or_zero(tl.load(mstat + row0 + tl.minimum(c * L + L, T) - 1))
        ms = tl.where(mt, finite_or_zero(m_row), m_last)  # steps past the end: every exp(. - ms) stays <= 1
        Dm = tl.exp(tl.where(causal, b[:, None] - b[None, :] + li[None, :], float("-inf")) - ms[:, None])
        w = tl.exp(b + m - ms)
        dnum = (bdh.to(tl.float32) * r[:, None]).to(bv.dtype)

        P = tl.dot(dnum, tl.trans(bv), input_precision=PREC) + dd[:, None]
        DP = (Dm * P).to(bk.dtype)
        bdq = tl.dot(DP, bk, input_precision=PREC)
        bdq += (tl.dot(dnum, tl.trans(C.to(bv.dtype)), input_precision=PREC) + dd[:, None] * n[None, :]) * w[:, None]
        tl.atomic_add(dq32 + rows[:, None] * DQK + ok[None, :], bdq * scale, mask=mtk)

        # the forward state after the chunk, as in the forward kernel
        a = g - b + li
        m_new = tl.maximum(g + m, tl.max(a, 0))
        mns = finite_or_zero(m_new)
        decay = tl.exp(g + m - mns)
        kw = bk.to(tl.float32) * tl.exp(a - mns)[:, None]
        C = C * decay + tl.dot(tl.trans(kw.to(bk.dtype)), bv, input_precision=PREC)
        n = n * decay + tl.sum(kw, 0)
        m = m_new


@triton.jit
def mlstm_bwd_finalize_kernel(dk32, dq32, dk, dq, dfo, dli, dF, R,
                              DQK: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    ok = tl.arange(0, BK)
    mr = r < R
    msk = mr[:, None] & (ok < DQK)[None, :]
    off = r[:, None] * DQK + ok[None, :]
    tl.store(dk + off, tl.load(dk32 + off, mask=msk, other=0.0).to(dk.dtype.element_ty), mask=msk)
    tl.store(dq + off, tl.load(dq32 + off, mask=msk, other=0.0).to(dq.dtype.element_ty), mask=msk)
    dF_t = tl.load(dfo + r, mask=mr, other=0.0) - tl.load(dli + r, mask=mr, other=0.0)
    tl.store(dF + r, dF_t, mask=mr)
