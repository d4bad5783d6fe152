"""Chunk-parallel backward: the backward state at every chunk end, then every chunk's gradients at once.

Notation as in backward.py (the stabilizer m_t held fixed; dnum_t = dh_t / z_t, dden_t from the prep
kernel; b cumulative log forget inside the chunk, g its total, li log input gate; m_in / m_out the
stabilizers entering / leaving the chunk, read from the per-step m_t; D_ts = exp(b_t - b_s + li_s - m_t),
w_t = exp(b_t + m_in - m_t), u_s = exp(g - b_s + li_s - m_out)):

All three passes work on a window of NT chunks c_first, c_first + 1, ... (the whole sequence, or one
of the time windows the launcher walks backwards to bound memory); the chunk and backward states of the
window's chunks sit in slots j = c - c_first.

  pass 1 (`mlstm_chunk_bwd_states_kernel`, grid (DQK blocks, DV blocks, batch*head), walks backwards):
      stores G_out, gn_out of every chunk (the gradient of the stabilized state leaving it), then
      G_in = exp(g + m_in - m_out) G_out + sum_t w_t q^_t dnum_t^T   (gn with dden_t), starting from
      (dCf, dnf), the gradient leaving the window, and ending as (dC0, dn0), the gradient entering it.
  pass 2 (`mlstm_chunk_bwd_dv_kernel`, grid (DV blocks, chunks, batch*head)):
      dv_s = sum_{t>=s} D_ts (q^_t . k_s) dnum_t + u_s G_out^T k_s
  pass 3 (`mlstm_chunk_bwd_dqk_kernel`, grid (DQK blocks, chunks, batch*head)), with P_ts = dnum_t . v_s + dden_t:
      dq^_t = sum_{s<=t} D_ts P_ts k_s + w'_t (C_c dnum_t + n_c dden_t)
      dk_s  = sum_{t>=s} D_ts P_ts q^_t + u_s (G_out v_s + gn_out)
      and k_s . dk_s (the log input gate's gradient) from fp32 products, added over DQK blocks.
  C_c, n_c (stabilized by their own m_c, and w'_t = exp(b_t + m_c - m_t)) are the forward's chunk states,
  recomputed by chunk_states.py. Every factor is at most 1.

The log forget gradient. With W_ts = D_ts (q^_t . k_s) P_ts the pair terms (s <= t, the initial state
counting as a step before the first and the returned final state as one after the last), the gradient of
log f_r is the sum of W_ts over the pairs that straddle r, s < r <= t. Summing per-step terms
(q_t . dq_t - k_t . dk_t) backwards from the end gives the same number, but as the difference of long
sums that nearly cancel (the normalizer makes every row of W sum to about zero), so bf16 rounding of
each term is amplified ~sqrt(S)-fold. Pass 3 instead adds, for every r of chunk c, the four kinds of
straddling pairs directly, in fp32:
      pairs across the whole chunk:   exp(g + m_c - m_out) (<G_out, C_c> + <gn_out, n_c>)
      s before the chunk, t >= r:     sum_{t >= r} q^_t . dq^_t (through C_c, n_c)
      s < r, t after the chunk:       sum_{s < r} k_s . dk_s (through G_out, gn_out)
      both inside the chunk:          sum_{j >= r} (sum_s W_js - sum_t W_tj)
so no sum runs beyond one chunk; only the final stabilizer's routing is added afterwards (gate_rows.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import chunk_program, finite_or_zero, load_gates, state_block, tile


@triton.jit
def _chunk_gates(ig, fg, mstat, m0, bh, row0, c, t, mt, S, L: tl.constexpr, EXP_GATE: tl.constexpr):
    """Gates and stabilizers of chunk c (steps t, mt = t < S): li, b (cumulative log forget), g (its total),
    m_in and m_out (the per-step stabilizer before the chunk's first step and at its last) and the
    per-step stabilizers m_t, with -inf (nothing seen) as 0 where they are subtracted. Steps past the end of
    the sequence take m_out: every exp(. - m_t) of theirs then stays at most 1 (with 0, a stabilizer near +90
    made exp(b + m_c - m_t) overflow to inf there, and inf * 0 put NaN into the chunk's sums)."""
    li, lf = load_gates(ig, fg, row0 + t, mt, EXP_GATE)
    b = tl.cumsum(lf, 0)
    g = tl.sum(lf, 0)
    m_in = tl.load(mstat + row0 + c * L - 1, mask=c > 0, other=0.0)
    m_in = tl.where(c > 0, m_in, tl.load(m0 + bh))
    m_out = finite_or_zero(tl.load(mstat + row0 + tl.minimum(c * L + L, S) - 1))
    m_t = tl.where(mt, finite_or_zero(tl.load(mstat + row0 + t, mask=mt, other=0.0)), m_out)
    return li, b, g, m_in, m_out, m_t


@triton.jit
def mlstm_chunk_bwd_states_kernel(
    q, ig, fg, m0, mstat, rz, dden, dh, dCf, dnf, Gs, gns, dC0, dn0,
    S, NT, c_first, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    EXP_GATE: tl.constexpr, PREC: tl.constexpr,
):
    kb, vb, bh, row0, ok, ov, mk, mkv = state_block(S, DQK, DV, BK, BV)
    ol = tl.arange(0, L)
    first_v = vb == 0

    G = tl.load(dCf + bh * DQK * DV + ok[:, None] * DV + ov[None, :], mask=mkv, other=0.0)
    gn = tl.load(dnf + bh * DQK + ok, mask=mk, other=0.0)
    for jj in range(0, NT):
        j = NT - 1 - jj
        st = bh * NT + j
        c = c_first + j
        tl.store(Gs + st * DQK * DV + ok[:, None] * DV + ov[None, :], G.to(Gs.dtype.element_ty), mask=mkv)
        if first_v:
            tl.store(gns + st * DQK + ok, gn, mask=mk)
        t = c * L + ol
        mt = t < S
        li, b, g, m_in, mos, mrs = _chunk_gates(ig, fg, mstat, m0, bh, row0, c, t, mt, S, L, EXP_GATE)
        w = tl.where(mt, tl.exp(b + m_in - mrs) * scale, 0.0)
        r = tl.load(rz + row0 + t, mask=mt, other=0.0)
        pq, pq_in = tile(q + row0 * DQK, kb * BK, c * L, DQK, S, 1, DQK, BK, L)
        pdh, pdh_in = tile(dh + row0 * DV, c * L, vb * BV, S, DV, DV, 1, L, BV)
        bqt = tl.load(pq, mask=pq_in, other=0.0)
        bdh = tl.load(pdh, mask=pdh_in, other=0.0)
        dnum = (bdh.to(tl.float32) * r[:, None]).to(bqt.dtype)
        decay = tl.exp(g + m_in - mos)
        qw = (bqt.to(tl.float32) * w[None, :]).to(bqt.dtype)
        G = G * decay + tl.dot(qw, dnum, input_precision=PREC)
        if first_v:
            dd = tl.load(dden + row0 + t, mask=mt, other=0.0)
            gn = gn * decay + tl.sum(bqt.to(tl.float32) * (w * dd)[None, :], 1)

    tl.store(dC0 + bh * DQK * DV + ok[:, None] * DV + ov[None, :], G, mask=mkv)
    if first_v:
        tl.store(dn0 + bh * DQK + ok, gn, mask=mk)


@triton.jit
def mlstm_chunk_bwd_dv_kernel(
    q, k, ig, fg, m0, mstat, rz, dh, Gs, dv,
    S, NT, c_first, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    EXP_GATE: tl.constexpr, PREC: tl.constexpr,
):
    vb = tl.program_id(0)
    c, bh, row0, st, t, mt = chunk_program(c_first, NT, S, L)
    ol = tl.arange(0, L)

    kq = tl.zeros([L, L], dtype=tl.float32)  # kq[s, t] = k_s . q_t
    kG = tl.zeros([L, BV], dtype=tl.float32)
    for k0 in range(0, DQK, BK):
        pk, pk_in = tile(k + row0 * DQK, c * L, k0, S, DQK, DQK, 1, L, BK)
        pq, pq_in = tile(q + row0 * DQK, k0, c * L, DQK, S, 1, DQK, BK, L)
        pG, pG_in = tile(Gs + st * DQK * DV, k0, vb * BV, DQK, DV, DV, 1, BK, BV)
        bk = tl.load(pk, mask=pk_in, other=0.0)
        bqt = tl.load(pq, mask=pq_in, other=0.0)
        bG = tl.load(pG, mask=pG_in, other=0.0)
        kq += tl.dot(bk, bqt, input_precision=PREC)
        kG += tl.dot(bk, bG.to(bk.dtype), input_precision=PREC)

    li, b, g, m_in, mos, mrs = _chunk_gates(ig, fg, mstat, m0, bh, row0, c, t, mt, S, L, EXP_GATE)
    # transposed gate matrix: row s, column t
    logDT = tl.where(ol[None, :] >= ol[:, None], b[None, :] - b[:, None] + li[:, None] - mrs[None, :], float("-inf"))
    AT = kq * scale * tl.exp(logDT)
    u = tl.exp(g - b + li - mos)
    r = tl.load(rz + row0 + t, mask=mt, other=0.0)
    pdh, pdh_in = tile(dh + row0 * DV, c * L, vb * BV, S, DV, DV, 1, L, BV)
    bdh = tl.load(pdh, mask=pdh_in, other=0.0)
    dnum = (bdh.to(tl.float32) * r[:, None]).to(bdh.dtype)
    bdv = tl.dot(AT.to(bdh.dtype), dnum, input_precision=PREC) + kG * u[:, None]
    pdv, pdv_in = tile(dv + row0 * DV, c * L, vb * BV, S, DV, DV, 1, L, BV)
    tl.store(pdv, bdv.to(dv.dtype.element_ty), mask=pdv_in)


@triton.jit
def mlstm_chunk_bwd_dqk_kernel(
    q, k, v, ig, fg, m0, mstat, rz, dden, dh, Cs, ns, ms, Gs, gns, dq, dk, dli32, dlf32,
    S, NT, c_first, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    EXP_GATE: tl.constexpr, PREC: tl.constexpr,
):
    kb = tl.program_id(0)
    c, bh, row0, st, t, mt = chunk_program(c_first, NT, S, L)
    ol = tl.arange(0, L)
    ok = kb * BK + tl.arange(0, BK)
    mk = ok < DQK

    r = tl.load(rz + row0 + t, mask=mt, other=0.0)
    P = tl.zeros([L, L], dtype=tl.float32)    # P[t, s] = dnum_t . v_s
    dqi = tl.zeros([L, BK], dtype=tl.float32)  # dnum C_c^T
    dki = tl.zeros([L, BK], dtype=tl.float32)  # v G_out^T
    GC = tl.zeros([BK], dtype=tl.float32)      # <G_out, C_c> per DQK row
    for v0 in range(0, DV, BV):
        pdh, pdh_in = tile(dh + row0 * DV, c * L, v0, S, DV, DV, 1, L, BV)
        pv, pv_in = tile(v + row0 * DV, c * L, v0, S, DV, DV, 1, L, BV)
        pvt, pvt_in = tile(v + row0 * DV, v0, c * L, DV, S, 1, DV, BV, L)
        pCt, pCt_in = tile(Cs + st * DQK * DV, v0, kb * BK, DV, DQK, 1, DV, BV, BK)
        pGt, pGt_in = tile(Gs + st * DQK * DV, v0, kb * BK, DV, DQK, 1, DV, BV, BK)
        bdh = tl.load(pdh, mask=pdh_in, other=0.0)
        bv = tl.load(pv, mask=pv_in, other=0.0)
        bvt = tl.load(pvt, mask=pvt_in, other=0.0)
        bCt = tl.load(pCt, mask=pCt_in, other=0.0)
        bGt = tl.load(pGt, mask=pGt_in, other=0.0)
        dnum = (bdh.to(tl.float32) * r[:, None]).to(bdh.dtype)
        P += tl.dot(dnum, bvt, input_precision=PREC)
        dqi += tl.dot(dnum, bCt.to(bdh.dtype), input_precision=PREC)
        dki += tl.dot(bv, bGt.to(bv.dtype), input_precision=PREC)
        GC += tl.sum(bGt.to(tl.float32) * bCt.to(tl.float32), 0)

    pq, pq_in = tile(q + row0 * DQK, c * L, kb * BK, S, DQK, DQK, 1, L, BK)
    pk, pk_in = tile(k + row0 * DQK, c * L, kb * BK, S, DQK, DQK, 1, L, BK)
    pkt, pkt_in = tile(k + row0 * DQK, kb * BK, c * L, DQK, S, 1, DQK, BK, L)
    bq = tl.load(pq, mask=pq_in, other=0.0)
    bk = tl.load(pk, mask=pk_in, other=0.0)
    bkt = tl.load(pkt, mask=pkt_in, other=0.0)

    li, b, g, m_in, mos, mrs = _chunk_gates(ig, fg, mstat, m0, bh, row0, c, t, mt, S, L, EXP_GATE)
    dd = tl.load(dden + row0 + t, mask=mt, other=0.0)
    D = tl.exp(tl.where(ol[:, None] >= ol[None, :], b[:, None] - b[None, :] + li[None, :], float("-inf")) - mrs[:, None])
    P += dd[:, None]
    DP = D * P
    W = tl.dot(bq, bkt, input_precision=PREC) * scale * D * P  # this DQK block's share of the pair terms W_ts
    u = tl.exp(g - b + li - mos)
    gn = tl.load(gns + st * DQK + ok, mask=mk, other=0.0)
    # k_s . dk_s (the log input gate's gradient) from fp32 products, in two parts: pairs inside the chunk
    # and pairs whose t lies after it (through G_out)
    colsum = tl.sum(W, 0)
    intra = tl.sum(W, 1) - colsum  # the pairs inside the chunk, per step (for the log forget gradient)
    k_out = u * tl.sum(bk.to(tl.float32) * (dki + gn[None, :]), 1)
    tl.atomic_add(dli32 + row0 + t, colsum + k_out, mask=mt)

    DPc = DP.to(bq.dtype)
    bdk = tl.dot(tl.trans(DPc), bq, input_precision=PREC) * scale + (dki + gn[None, :]) * u[:, None]
    pdk, pdk_in = tile(dk + row0 * DQK, c * L, kb * BK, S, DQK, DQK, 1, L, BK)
    tl.store(pdk, bdk.to(dk.dtype.element_ty), mask=pdk_in)

    mc = tl.load(ms + st)
    nc = tl.load(ns + st * DQK + ok, mask=mk, other=0.0)
    w = tl.exp(b + mc - mrs)
    dq_in = dqi + dd[:, None] * nc[None, :]  # pairs whose s lies before the chunk (through C_c, n_c)
    bdq = (tl.dot(DPc, bk, input_precision=PREC) + dq_in * w[:, None]) * scale
    pdq, pdq_in = tile(dq + row0 * DQK, c * L, kb * BK, S, DQK, DQK, 1, L, BK)
    tl.store(pdq, bdq.to(dq.dtype.element_ty), mask=pdq_in)

    # the log forget gradient straight from the pairs s < r <= t that straddle each step r of the chunk
    # (see the module docstring): no long sums of nearly cancelling per-step terms
    q_in = tl.sum(bq.to(tl.float32) * dq_in, 1) * w * scale
    across = tl.exp(g + mc - mos) * tl.sum(GC + gn * nc, 0)
    x = q_in + intra
    after = tl.sum(x, 0) - tl.cumsum(x, 0) + x      # sum over j >= r
    before = tl.cumsum(k_out, 0) - k_out             # sum over j < r
    tl.atomic_add(dlf32 + row0 + t, across + after + before, mask=mt)
