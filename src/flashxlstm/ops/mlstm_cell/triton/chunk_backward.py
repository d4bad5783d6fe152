"""Chunk-parallel backward: the backward state at every chunk end, then every chunk's gradients at once.

The stabilizer m_t is treated as a constant (the output is invariant to it up to the eps term), so the
output is a gated linear attention with DV + 1 value columns: num (with v) and den (with 1),
h_t = num_t / z_t, z_t = max(|den_t|, exp(-m_t)) + eps. The prep kernel forms per step 1 / z_t and
dden_t = -(dh_t . h_t) / z_t * sign(den_t) [|den_t| > exp(-m_t)]; dnum_t = dh_t / z_t. Inside a chunk
(b cumulative log forget, g its total, li log input gate; m_in / m_out the stabilizers entering / leaving
the chunk, read from the per-step m_t) the factors D_ts = exp(b_t - b_s + li_s - m_t),
w_t = exp(b_t + m_in - m_t), u_s = exp(g - b_s + li_s - m_out) are all at most 1, so the backward state G
(the gradient of the stabilized state, DQK x DV) is as well scaled as the forward state.

Chunks and sequences as in common.py (rows (b, h), or the documents of cu_seqlens, each cut into chunks
from its own start). All three passes work on a window [c0, c1) of chunk numbers (the whole sequence, or
one of the time windows the launcher walks backwards to bound memory); the chunk and backward states of
the window's chunks sit in slots carry * nt + (gc - c0).

  pass 1 (`mlstm_chunk_bwd_states_kernel`, grid (DQK blocks, DV blocks, sequences), walks backwards):
      stores G_out, gn_out of every chunk (the gradient of the stabilized state leaving it), then
      G_in = exp(g + m_in - m_out) G_out + sum_t w_t q^_t dnum_t^T   (gn with dden_t), starting from the
      gradient of the sequence's final state (dCf, dnf) if it ends in the window, else from the carry the
      window after this one left, and ending as the gradient of its initial state (dC0, dn0) if it starts
      in the window, else as the carry for the window before.
  pass 2 (`mlstm_chunk_bwd_dv_kernel`, grid (DV blocks, chunks, b * NH + h or h)):
      dv_s = sum_{t>=s} D_ts (q^_t . k_s) dnum_t + u_s G_out^T k_s
  pass 3 (`mlstm_chunk_bwd_dqk_kernel`, grid (DQK blocks, chunks, b * NH + h or h)), with
  P_ts = dnum_t . v_s + dden_t:
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

from ...triton_support import both
from .common import chunk_span, doc_span, finite_or_zero, forget_sums, load_gates, state_block, tile, window_part


@triton.jit
def mlstm_bwd_prep_kernel(h, hlo, dh, mstat, dstat, rz, dden, R, eps,
                          DV: tl.constexpr, BR: tl.constexpr, BVP: tl.constexpr, HAS_LO: tl.constexpr):
    """Per step: 1 / z_t and dden_t = -(dh_t . h_t) / z_t (times sign(den_t); 0 where the exp(-m_t) floor of z_t
    is active), h = h + h_lo when the forward stored h's rounding residual."""
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


@triton.jit
def _to_dot_rows(x, like):
    """An fp32 tile as a dot operand in like's dtype, and the row scales to multiply the product's rows by.

    fp16 (largest value 65504): each row is divided by its largest magnitude first, so no factor overflows
    where the product fits (near a zero denominator dh / z and (D P)_ts exceed fp16 while the gradients do not).
    bf16 and fp32 have fp32's range: cast as is, scales 1.
    """
    if like.dtype == tl.float16:
        s = tl.max(tl.abs(x), 1)
        s = tl.where(s > 0, s, 1.0)
        return (x / s[:, None]).to(tl.float16), s
    else:
        return x.to(like.dtype), tl.full([x.shape[0]], 1.0, tl.float32)


@triton.jit
def _chunk_gates(ig, fg, mstat, m0, rc, nr, sidx, first, L: tl.constexpr, EXP_GATE: tl.constexpr):
    """Gates and stabilizers of the chunk of nr steps from row rc: li, b (cumulative log forget), g (its total),
    m_in and m_out (the per-step stabilizer before the chunk's first step, the initial state's m0[sidx] for the
    sequence's first chunk, and at its last) and the per-step stabilizers m_t, with -inf (nothing seen) as 0
    where they are subtracted; b, g from the finite gates and z, zg the resets through each step and in the
    chunk (common.forget_sums: weights across a reset are 0). Steps past the chunk's end take m_out: every
    exp(. - m_t) of theirs then stays at most 1 (with 0, a stabilizer near +90 made exp(b + m_c - m_t) overflow
    to inf there, and inf * 0 put NaN into the chunk's sums)."""
    ol = tl.arange(0, L)
    mt = ol < nr
    li, lf = load_gates(ig, fg, rc + ol, mt, EXP_GATE)
    b, z, g, zg = forget_sums(lf)
    m_in = tl.where(first, tl.load(m0 + sidx), tl.load(mstat + rc - 1, mask=(first == 0) & (nr > 0), other=0.0))
    m_out = finite_or_zero(tl.load(mstat + rc + nr - 1, mask=nr > 0, other=0.0))
    m_t = tl.where(mt, finite_or_zero(tl.load(mstat + rc + ol, mask=mt, other=0.0)), m_out)
    return li, b, g, z, zg, m_in, m_out, m_t


@triton.jit
def mlstm_chunk_bwd_states_kernel(
    q, ig, fg, m0, mstat, rz, dden, dh, dCf, dnf, Gc, gnc, Gs, gns, dC0, dn0, Go, gno, cu, coff,
    S, NT, c0, c1, nt, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    NH: tl.constexpr, EXP_GATE: tl.constexpr, PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    kb, vb, ok, ov, mk, mkv = state_block(DQK, DV, BK, BV)
    rd, T, lo, hi, sidx, cidx = doc_span(cu, coff, tl.program_id(2), S, NT, NH, IS_VARLEN)
    a, b, active = window_part(lo, hi, c0, c1)
    ol = tl.arange(0, L)
    first_v = vb == 0
    CC = DQK * DV

    # the gradient leaving chunk b - 1: of the sequence's final state if it ends in the window, else the
    # carry (Gc, gnc: the gradient entering chunk c1, from the window after this one)
    ends = hi <= c1
    carried = hi > c1
    G = tl.load(dCf + sidx * CC + ok[:, None] * DV + ov[None, :], mask=both(mkv, ends), other=0.0) + \
        tl.load(Gc + cidx * CC + ok[:, None] * DV + ov[None, :], mask=both(mkv, carried), other=0.0)
    gn = tl.load(dnf + sidx * DQK + ok, mask=both(mk, ends), other=0.0) + \
        tl.load(gnc + cidx * DQK + ok, mask=both(mk, carried), other=0.0)
    for jj in range(0, b - a):
        gc = b - 1 - jj
        st = cidx * nt + (gc - c0)
        tl.store(Gs + st * CC + ok[:, None] * DV + ov[None, :], G.to(Gs.dtype.element_ty), mask=mkv)
        if first_v:
            tl.store(gns + st * DQK + ok, gn, mask=mk)
        off = (gc - lo) * L
        nr = tl.minimum(T - off, L)
        rc = rd + off
        mt = ol < nr
        li, bb, g, z, zg, m_in, mos, mrs = _chunk_gates(ig, fg, mstat, m0, rc, nr, sidx, gc == lo, L, EXP_GATE)
        w = tl.where(mt & (z == 0), tl.exp(bb + m_in - mrs) * scale, 0.0)
        r = tl.load(rz + rc + ol, mask=mt, other=0.0)
        pq, pq_in = tile(q + rc * DQK, kb * BK, 0, DQK, nr, 1, DQK, BK, L)
        pdh, pdh_in = tile(dh + rc * DV, 0, vb * BV, nr, DV, DV, 1, L, BV)
        bqt = tl.load(pq, mask=pq_in, other=0.0)
        bdh = tl.load(pdh, mask=pdh_in, other=0.0)
        decay = tl.where(zg == 0, tl.exp(g + m_in - mos), 0.0)
        # sum_t (w_t / z_t) q_t dh_t^T: for fp16 the per-step factors are scaled by their maximum before the cast
        # (dh / z overflows fp16 near a zero denominator where the gradients are finite)
        wr = w * r
        x = tl.max(wr, 0)
        x = tl.where((x > 0) & (bqt.dtype == tl.float16), x, 1.0)
        qw = (bqt.to(tl.float32) * (wr / x)[None, :]).to(bqt.dtype)
        G = G * decay + tl.dot(qw, bdh.to(bqt.dtype), input_precision=PREC) * x
        if first_v:
            dd = tl.load(dden + rc + ol, mask=mt, other=0.0)
            gn = gn * decay + tl.sum(bqt.to(tl.float32) * (w * dd)[None, :], 1)

    # the gradient entering chunk a: of the initial state if the sequence starts in the window, else the
    # carry for the window before this one
    starts = active & (lo >= c0)
    passes = active & (lo < c0)
    tl.store(dC0 + sidx * CC + ok[:, None] * DV + ov[None, :], G, mask=both(mkv, starts))
    tl.store(Go + cidx * CC + ok[:, None] * DV + ov[None, :], G, mask=both(mkv, passes))
    if first_v:
        tl.store(dn0 + sidx * DQK + ok, gn, mask=both(mk, starts))
        tl.store(gno + cidx * DQK + ok, gn, mask=both(mk, passes))


@triton.jit
def mlstm_chunk_bwd_dv_kernel(
    q, k, ig, fg, m0, mstat, rz, dh, Gs, dv, cu, coff, cdoc,
    S, c0, nt, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    NH: tl.constexpr, EXP_GATE: tl.constexpr, PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    vb = tl.program_id(0)
    rc, nr, st, sidx, first = chunk_span(cu, coff, cdoc, c0, nt, S, L, NH, IS_VARLEN)
    ol = tl.arange(0, L)
    mt = ol < nr

    kq = tl.zeros([L, L], dtype=tl.float32)  # kq[s, t] = k_s . q_t
    kG = tl.zeros([L, BV], dtype=tl.float32)
    for k0 in range(0, DQK, BK):
        pk, pk_in = tile(k + rc * DQK, 0, k0, nr, DQK, DQK, 1, L, BK)
        pq, pq_in = tile(q + rc * DQK, k0, 0, DQK, nr, 1, DQK, BK, L)
        pG, pG_in = tile(Gs + st * DQK * DV, k0, vb * BV, DQK, DV, DV, 1, BK, BV)
        bk = tl.load(pk, mask=pk_in, other=0.0)
        bqt = tl.load(pq, mask=pq_in, other=0.0)
        bG = tl.load(pG, mask=pG_in, other=0.0)
        kq += tl.dot(bk, bqt, input_precision=PREC)
        kG += tl.dot(bk, bG.to(bk.dtype), input_precision=PREC)

    li, b, g, z, zg, m_in, mos, mrs = _chunk_gates(ig, fg, mstat, m0, rc, nr, sidx, first, L, EXP_GATE)
    # transposed gate matrix: row s, column t
    pairT = (ol[None, :] >= ol[:, None]) & (z[None, :] == z[:, None])
    AT = tl.where(pairT, kq * scale * tl.exp(b[None, :] - b[:, None] + li[:, None] - mrs[None, :]), 0.0)
    u = tl.where(z == zg, tl.exp(g - b + li - mos), 0.0)
    r = tl.load(rz + rc + ol, mask=mt, other=0.0)
    pdh, pdh_in = tile(dh + rc * DV, 0, vb * BV, nr, DV, DV, 1, L, BV)
    bdh = tl.load(pdh, mask=pdh_in, other=0.0)
    # sum_t AT[s, t] / z_t dh_t (dh / z in the input dtype overflows fp16 near a zero denominator)
    ATr, x = _to_dot_rows(AT * r[None, :], bdh)
    bdv = tl.dot(ATr, bdh, input_precision=PREC) * x[:, None] + kG * u[:, None]
    pdv, pdv_in = tile(dv + rc * DV, 0, vb * BV, nr, DV, DV, 1, L, BV)
    tl.store(pdv, bdv.to(dv.dtype.element_ty), mask=pdv_in)


@triton.jit
def mlstm_chunk_bwd_dqk_kernel(
    q, k, v, ig, fg, m0, mstat, rz, dden, dh, Cs, ns, ms, Gs, gns, dq, dk, dli32, dlf32, cu, coff, cdoc,
    S, c0, nt, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    NH: tl.constexpr, EXP_GATE: tl.constexpr, PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    kb = tl.program_id(0)
    rc, nr, st, sidx, first = chunk_span(cu, coff, cdoc, c0, nt, S, L, NH, IS_VARLEN)
    ol = tl.arange(0, L)
    mt = ol < nr
    ok = kb * BK + tl.arange(0, BK)
    mk = ok < DQK

    r = tl.load(rz + rc + ol, mask=mt, other=0.0)
    P = tl.zeros([L, L], dtype=tl.float32)    # P[t, s] = dnum_t . v_s
    dqi = tl.zeros([L, BK], dtype=tl.float32)  # dnum C_c^T
    dki = tl.zeros([L, BK], dtype=tl.float32)  # v G_out^T
    GC = tl.zeros([BK], dtype=tl.float32)      # <G_out, C_c> per DQK row
    for v0 in range(0, DV, BV):
        pdh, pdh_in = tile(dh + rc * DV, 0, v0, nr, DV, DV, 1, L, BV)
        pv, pv_in = tile(v + rc * DV, 0, v0, nr, DV, DV, 1, L, BV)
        pvt, pvt_in = tile(v + rc * DV, v0, 0, DV, nr, 1, DV, BV, L)
        pCt, pCt_in = tile(Cs + st * DQK * DV, v0, kb * BK, DV, DQK, 1, DV, BV, BK)
        pGt, pGt_in = tile(Gs + st * DQK * DV, v0, kb * BK, DV, DQK, 1, DV, BV, BK)
        bdh = tl.load(pdh, mask=pdh_in, other=0.0)
        bv = tl.load(pv, mask=pv_in, other=0.0)
        bvt = tl.load(pvt, mask=pvt_in, other=0.0)
        bCt = tl.load(pCt, mask=pCt_in, other=0.0)
        bGt = tl.load(pGt, mask=pGt_in, other=0.0)
        P += tl.dot(bdh, bvt, input_precision=PREC)
        dqi += tl.dot(bdh, bCt.to(bdh.dtype), input_precision=PREC)
        dki += tl.dot(bv, bGt.to(bv.dtype), input_precision=PREC)
        GC += tl.sum(bGt.to(tl.float32) * bCt.to(tl.float32), 0)

    pq, pq_in = tile(q + rc * DQK, 0, kb * BK, nr, DQK, DQK, 1, L, BK)
    pk, pk_in = tile(k + rc * DQK, 0, kb * BK, nr, DQK, DQK, 1, L, BK)
    pkt, pkt_in = tile(k + rc * DQK, kb * BK, 0, DQK, nr, 1, DQK, BK, L)
    bq = tl.load(pq, mask=pq_in, other=0.0)
    bk = tl.load(pk, mask=pk_in, other=0.0)
    bkt = tl.load(pkt, mask=pkt_in, other=0.0)

    li, b, g, z, zg, m_in, mos, mrs = _chunk_gates(ig, fg, mstat, m0, rc, nr, sidx, first, L, EXP_GATE)
    dd = tl.load(dden + rc + ol, mask=mt, other=0.0)
    pair = (ol[:, None] >= ol[None, :]) & (z[:, None] == z[None, :])
    D = tl.where(pair, tl.exp(b[:, None] - b[None, :] + li[None, :] - mrs[:, None]), 0.0)
    # dnum = dh / z applied to the fp32 products (dh / z in the input dtype overflows fp16 near a zero denominator)
    P = P * r[:, None]
    dqi = dqi * r[:, None]
    P += dd[:, None]
    DP = D * P
    W = tl.dot(bq, bkt, input_precision=PREC) * scale * D * P  # this DQK block's share of the pair terms W_ts
    u = tl.where(z == zg, tl.exp(g - b + li - mos), 0.0)
    gn = tl.load(gns + st * DQK + ok, mask=mk, other=0.0)
    # k_s . dk_s (the log input gate's gradient) from fp32 products, in two parts: pairs inside the chunk
    # and pairs whose t lies after it (through G_out)
    colsum = tl.sum(W, 0)
    intra = tl.sum(W, 1) - colsum  # the pairs inside the chunk, per step (for the log forget gradient)
    k_out = u * tl.sum(bk.to(tl.float32) * (dki + gn[None, :]), 1)
    tl.atomic_add(dli32 + rc + ol, colsum + k_out, mask=mt)

    DPk, xk = _to_dot_rows(tl.trans(DP), bq)
    bdk = tl.dot(DPk, bq, input_precision=PREC) * (xk * scale)[:, None] + (dki + gn[None, :]) * u[:, None]
    pdk, pdk_in = tile(dk + rc * DQK, 0, kb * BK, nr, DQK, DQK, 1, L, BK)
    tl.store(pdk, bdk.to(dk.dtype.element_ty), mask=pdk_in)

    mc = tl.load(ms + st, mask=nr > 0, other=0.0)
    nc = tl.load(ns + st * DQK + ok, mask=mk, other=0.0)
    w = tl.where(z == 0, tl.exp(b + mc - mrs), 0.0)
    dq_in = dqi + dd[:, None] * nc[None, :]  # pairs whose s lies before the chunk (through C_c, n_c)
    DPq, xq = _to_dot_rows(DP, bk)
    bdq = (tl.dot(DPq, bk, input_precision=PREC) * xq[:, None] + dq_in * w[:, None]) * scale
    pdq, pdq_in = tile(dq + rc * DQK, 0, kb * BK, nr, DQK, DQK, 1, L, BK)
    tl.store(pdq, bdq.to(dq.dtype.element_ty), mask=pdq_in)

    # the log forget gradient straight from the pairs s < r <= t that straddle each step r of the chunk
    # (see the module docstring): no long sums of nearly cancelling per-step terms
    q_in = tl.sum(bq.to(tl.float32) * dq_in, 1) * w * scale
    across = tl.where(zg == 0, tl.exp(g + mc - mos), 0.0) * tl.sum(GC + gn * nc, 0)
    x = q_in + intra
    after = tl.sum(x, 0) - tl.cumsum(x, 0) + x      # sum over j >= r
    before = tl.cumsum(k_out, 0) - k_out             # sum over j < r
    tl.atomic_add(dlf32 + rc + ol, across + after + before, mask=mt)
