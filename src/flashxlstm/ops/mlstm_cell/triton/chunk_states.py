"""Chunk-parallel forward, pass 1: the state entering every chunk, written to memory.

One program per (block of DQK rows, block of DV columns, batch*head) walks the NT chunks (L steps each)
c_first, c_first + 1, ... of its sequence, starting from the state (C0, n0, m0) entering chunk c_first,
and keeps its state block C[kb, vb] (BK x BV) in fp32 registers. Before each chunk it writes the
stabilized state entering that chunk to slot j = c - c_first: C_c (in the input dtype, which is the
precision the output pass multiplies it in anyway), n_c and m_c (fp32); after the last chunk it writes
the final state in fp32. With EVERY > 0 it also writes the fp32 state entering every EVERY-th chunk
walked (window w = j // EVERY of Ew, En, Em, laid out (windows, batch*head, ...)): the backward restarts
its time windows from these, so the chunk states it recomputes equal the forward's to the bit.
Per chunk (b = cumulative log forget inside the chunk, g = its total, li = log input gate, stabilizer m
of the entering state):

    a_s = g - b_s + li_s;  m' = max(g + m, max_s a_s)
    C'  = exp(g + m - m') C + k^T diag(exp(a - m')) v        (one (BK x L) @ (L x BV) product)
    n'  = exp(g + m - m') n + k^T exp(a - m')

m' is the recurrent stabilizer at the chunk's end, so the states equal the step-by-step recurrence's.
Stabilizers that are -inf (empty state) are replaced by 0 where subtracted. Rows past the end of the
sequence have li = -inf and log forget 0: they leave the state untouched.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import finite_or_zero, load_gates, state_block, tile


@triton.jit
def mlstm_chunk_states_kernel(
    k, v, ig, fg, C0, n0, m0, Cs, ns, ms, Cf, nf, mf, Ew, En, Em,
    S, NT, c_first,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    EXP_GATE: tl.constexpr, PREC: tl.constexpr, EVERY: tl.constexpr,
):
    kb, vb, bh, row0, ok, ov, mk, mkv = state_block(S, DQK, DV, BK, BV)
    ol = tl.arange(0, L)
    first_v = vb == 0

    C = tl.load(C0 + bh * DQK * DV + ok[:, None] * DV + ov[None, :], mask=mkv, other=0.0).to(tl.float32)
    n = tl.load(n0 + bh * DQK + ok, mask=mk, other=0.0).to(tl.float32)
    m = tl.load(m0 + bh).to(tl.float32)

    for j in range(0, NT):
        st = bh * NT + j
        tl.store(Cs + st * DQK * DV + ok[:, None] * DV + ov[None, :], C.to(Cs.dtype.element_ty), mask=mkv)
        if first_v:
            tl.store(ns + st * DQK + ok, n, mask=mk)
            if kb == 0:
                tl.store(ms + st, m)
        if EVERY > 0:
            if j % EVERY == 0:
                se = (j // EVERY) * tl.num_programs(2) + bh  # Ew is (windows, batch*head, DQK, DV)
                tl.store(Ew + se * DQK * DV + ok[:, None] * DV + ov[None, :], C, mask=mkv)
                if first_v:
                    tl.store(En + se * DQK + ok, n, mask=mk)
                    if kb == 0:
                        tl.store(Em + se, m)
        t0 = (c_first + j) * L
        t = t0 + ol
        li, lf = load_gates(ig, fg, row0 + t, t < S, EXP_GATE)
        b = tl.cumsum(lf, 0)
        g = tl.sum(lf, 0)
        a = g - b + li
        m_new = tl.maximum(g + m, tl.max(a, 0))
        mns = finite_or_zero(m_new)
        decay = tl.exp(g + m - mns)
        wk = tl.exp(a - mns)
        pk, pk_in = tile(k + row0 * DQK, kb * BK, t0, DQK, S, 1, DQK, BK, L)
        pv, pv_in = tile(v + row0 * DV, t0, vb * BV, S, DV, DV, 1, L, BV)
        bkt = tl.load(pk, mask=pk_in, other=0.0)
        bv = tl.load(pv, mask=pv_in, other=0.0)
        vw = (bv.to(tl.float32) * wk[:, None]).to(bv.dtype)
        C = C * decay + tl.dot(bkt, vw, input_precision=PREC)
        if first_v:  # only these programs store n
            n = n * decay + tl.sum(bkt.to(tl.float32) * wk[None, :], 1)
        m = m_new

    tl.store(Cf + bh * DQK * DV + ok[:, None] * DV + ov[None, :], C, mask=mkv)
    if first_v:
        tl.store(nf + bh * DQK + ok, n, mask=mk)
        if kb == 0:
            tl.store(mf + bh, m)
