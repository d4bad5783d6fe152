"""Chunk-parallel forward, pass 1: the state entering every chunk, written to memory.

One program per (block of DQK rows, block of DV columns, sequence) walks the chunks (L steps each) of its
sequence that lie in the window [c0, c1) of chunk numbers (common.py: rows (b, h), or documents of
cu_seqlens with chunks numbered through the head), and keeps its state block C[kb, vb] (BK x BV) in fp32
registers. It starts from the sequence's initial state (C0, n0, m0) if the sequence starts in the window,
else from the carry (Ec, Enc, Emc): the state entering chunk c0, one per carry index (b * NH + h, or h with
cu_seqlens, where only one document per head straddles c0). Before each chunk gc it writes the stabilized
state entering that chunk to slot carry * nt + (gc - c0): C_c (in the input dtype, which is the precision
the output pass multiplies it in anyway), n_c and m_c (fp32); if the sequence ends in the window it writes
its final state in fp32. With EVERY > 0 it also writes the fp32 state entering every chunk gc with
gc % EVERY == 0 (window gc // EVERY of Ew, En, Em, laid out (windows, carry index, ...)): the backward
restarts its time windows from these, so the chunk states it recomputes equal the forward's to the bit.
With DESC the k and v tiles come through tensor descriptors (TMA on Hopper) over the sequence's rows.
Per chunk (b = cumulative log forget inside the chunk, g = its total, li = log input gate, stabilizer m
of the entering state):

    a_s = g - b_s + li_s;  m' = max(g + m, max_s a_s)
    C'  = exp(g + m - m') C + k^T diag(exp(a - m')) v        (one (BK x L) @ (L x BV) product)
    n'  = exp(g + m - m') n + k^T exp(a - m')

m' is the recurrent stabilizer at the chunk's end, so the states equal the step-by-step recurrence's.
Stabilizers that are -inf (empty state) are replaced by 0 where subtracted. A forget gate of -inf (or one
so negative that sums of them overflow) is an exact reset (common.forget_sums): weights across it are 0. Rows past the end of a
sequence's last (shorter) chunk have li = -inf and log forget 0: they leave the state untouched.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...triton_support import both
from .common import doc_span, finite_or_zero, forget_sums, load_gates, state_block, tile, window_part


@triton.jit
def mlstm_chunk_states_kernel(
    k, v, ig, fg, C0, n0, m0, Ec, Enc, Emc, Cs, ns, ms, Cf, nf, mf, Ew, En, Em, cu, coff,
    S, NT, c0, c1, nt, NC,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    NH: tl.constexpr, EXP_GATE: tl.constexpr, PREC: tl.constexpr, EVERY: tl.constexpr,
    IS_VARLEN: tl.constexpr, DESC: tl.constexpr,
):
    kb, vb, ok, ov, mk, mkv = state_block(DQK, DV, BK, BV)
    rd, T, lo, hi, sidx, cidx = doc_span(cu, coff, tl.program_id(2), S, NT, NH, IS_VARLEN)
    a, b, active = window_part(lo, hi, c0, c1)
    ol = tl.arange(0, L)
    first_v = vb == 0
    CC = DQK * DV

    # the state entering chunk a: the sequence's initial state if it starts in the window, else the carry
    # (Ec, Enc, Emc: the state entering chunk c0 of the sequence that straddles c0, one per carry index)
    init = lo >= c0
    carried = lo < c0
    C = tl.load(C0 + sidx * CC + ok[:, None] * DV + ov[None, :], mask=both(mkv, init), other=0.0) + \
        tl.load(Ec + cidx * CC + ok[:, None] * DV + ov[None, :], mask=both(mkv, carried), other=0.0)
    n = tl.load(n0 + sidx * DQK + ok, mask=both(mk, init), other=0.0) + \
        tl.load(Enc + cidx * DQK + ok, mask=both(mk, carried), other=0.0)
    m = tl.where(init, tl.load(m0 + sidx, mask=init, other=0.0), tl.load(Emc + cidx, mask=carried, other=0.0))

    if DESC:  # tensor descriptors (TMA on Hopper) over the sequence's rows: rows past its end read as zeros
        dk_ = tl.make_tensor_descriptor(k + rd * DQK, shape=[tl.maximum(T, 1), DQK], strides=[DQK, 1],
                                        block_shape=[L, BK])
        dv_ = tl.make_tensor_descriptor(v + rd * DV, shape=[tl.maximum(T, 1), DV], strides=[DV, 1],
                                        block_shape=[L, BV])
    for gc in range(a, b):
        st = cidx * nt + (gc - c0)
        tl.store(Cs + st * CC + ok[:, None] * DV + ov[None, :], C.to(Cs.dtype.element_ty), mask=mkv)
        if first_v:
            tl.store(ns + st * DQK + ok, n, mask=mk)
            if kb == 0:
                tl.store(ms + st, m)
        if EVERY > 0:
            if gc % EVERY == 0:
                se = (gc // EVERY) * NC + cidx  # Ew is (windows, carry index, DQK, DV)
                tl.store(Ew + se * CC + ok[:, None] * DV + ov[None, :], C, mask=mkv)
                if first_v:
                    tl.store(En + se * DQK + ok, n, mask=mk)
                    if kb == 0:
                        tl.store(Em + se, m)
        off = (gc - lo) * L
        nrow = tl.minimum(T - off, L)
        r0 = rd + off
        li, lf = load_gates(ig, fg, r0 + ol, ol < nrow, EXP_GATE)
        bb, z, g, zg = forget_sums(lf)
        aa = tl.where(z == zg, g - bb + li, float("-inf"))  # a reset after step s erases it
        carry = tl.where(zg == 0, g + m, float("-inf"))    # a reset in the chunk erases the entering state
        m_new = tl.maximum(carry, tl.max(aa, 0))
        mns = finite_or_zero(m_new)
        decay = tl.exp(carry - mns)
        wk = tl.exp(aa - mns)
        if DESC:
            bkt = tl.trans(dk_.load([off, kb * BK]))
            bv = dv_.load([off, vb * BV])
        else:
            pk, pk_in = tile(k + r0 * DQK, kb * BK, 0, DQK, nrow, 1, DQK, BK, L)
            pv, pv_in = tile(v + r0 * DV, 0, vb * BV, nrow, DV, DV, 1, L, BV)
            bkt = tl.load(pk, mask=pk_in, other=0.0)
            bv = tl.load(pv, mask=pv_in, other=0.0)
        vw = (bv.to(tl.float32) * wk[:, None]).to(bv.dtype)
        C = C * decay + tl.dot(bkt, vw, input_precision=PREC)
        if first_v:  # only these programs store n
            n = n * decay + tl.sum(bkt.to(tl.float32) * wk[None, :], 1)
        m = m_new

    if active & (hi <= c1):  # the sequence ends in the window: its final state
        tl.store(Cf + sidx * CC + ok[:, None] * DV + ov[None, :], C, mask=mkv)
        if first_v:
            tl.store(nf + sidx * DQK + ok, n, mask=mk)
            if kb == 0:
                tl.store(mf + sidx, m)
