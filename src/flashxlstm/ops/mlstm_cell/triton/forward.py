"""The fused chunkwise mLSTM forward kernel.

One program per (document, head, block of DV columns) walks its document chunk by chunk, keeping the
state block C[:, block] (DQK x BV), n and m in fp32 registers, so no chunk state ever goes to memory.
Per chunk of L steps (b = cumulative log forget inside the chunk, g = its total, m the carried
stabilizer):

    m_t   = max(b_t + m, max_{s<=t} b_t - b_s + li_s)        (exactly the recurrent stabilizer)
    num_t = exp(b_t + m - m_t) q^_t C + sum_{s<=t} exp(b_t - b_s + li_s - m_t) (q^_t . k_s) v_s
    den_t = the same with n for C and 1 for v_s;  h_t = num_t / (max(|den_t|, exp(-m_t)) + eps)
    m'    = max(g + m, max_s g - b_s + li_s);  C' = exp(g + m - m') C + sum_s exp(g - b_s + li_s - m') k_s v_s^T

The per-step stabilizer m_t and denominator den_t are written out (fp32, one number per step) for
the backward pass, and, for 16-bit outputs that need gradients, the rounding residual of h (h_lo, so
that dh . h in the backward is not lost to bf16 rounding: it enters every gradient through d den). Stabilizers that are -inf (an empty state) are replaced by 0 where subtracted.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import finite_or_zero, load_gates, matvec, seq_bounds, tile


@triton.jit
def mlstm_fwd_kernel(
    q, k, v, ig, fg, C0, n0, m0, h, hlo, Cf, nf, mf, mstat, dstat, cu,
    S, TSEG, NSEG, scale, eps,
    NH: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
    L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    EXP_GATE: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr, STORE_LO: tl.constexpr,
):
    vb = tl.program_id(1)
    row0, T, st = seq_bounds(cu, tl.program_id(0), S, TSEG, NSEG, NH, IS_VARLEN)

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
        pq, pq_in = tile(q + row0 * DQK, c * L, 0, T, DQK, DQK, 1, L, BK)
        pk, pk_in = tile(k + row0 * DQK, c * L, 0, T, DQK, DQK, 1, L, BK)
        pv, pv_in = tile(v + row0 * DV, c * L, vb * BV, T, DV, DV, 1, L, BV)
        bq = tl.load(pq, mask=pq_in, other=0.0)
        bk = tl.load(pk, mask=pk_in, other=0.0)
        bv = tl.load(pv, mask=pv_in, other=0.0)
        li, lf = load_gates(ig, fg, rows, mt, EXP_GATE)
        b = tl.cumsum(lf, 0)
        g = tl.sum(lf, 0)

        # outputs: the carried state's part plus the causal quadratic part inside the chunk
        logD = tl.where(causal, b[:, None] - b[None, :] + li[None, :], float("-inf"))
        m_row = tl.maximum(b + m, tl.max(logD, 1))
        ms = finite_or_zero(m_row)
        Dm = tl.exp(logD - ms[:, None])
        w_inter = tl.exp(b + m - ms) * scale
        s = tl.dot(bq, tl.trans(bk), input_precision=PREC) * scale * Dm
        num = tl.dot(bq, C.to(bq.dtype), input_precision=PREC) * w_inter[:, None]
        num += tl.dot(s.to(bv.dtype), bv, input_precision=PREC)
        den = tl.sum(s, 1) + matvec(bq, n, PREC) * w_inter
        z = tl.maximum(tl.abs(den), tl.exp(-ms)) + eps
        hv = num / z[:, None]
        hb = hv.to(h.dtype.element_ty)
        ph, ph_in = tile(h + row0 * DV, c * L, vb * BV, T, DV, DV, 1, L, BV)
        tl.store(ph, hb, mask=ph_in)
        if STORE_LO:  # what rounding h lost, so that the backward sees h to ~fp32 precision
            plo, plo_in = tile(hlo + row0 * DV, c * L, vb * BV, T, DV, DV, 1, L, BV)
            tl.store(plo, (hv - hb.to(tl.float32)).to(h.dtype.element_ty), mask=plo_in)
        if vb == 0:
            tl.store(mstat + rows, m_row, mask=mt)
            tl.store(dstat + rows, den, mask=mt)

        # the state after the chunk
        a = g - b + li
        m_new = tl.maximum(g + m, tl.max(a, 0))
        mns = finite_or_zero(m_new)
        decay = tl.exp(g + m - mns)
        wk = tl.exp(a - mns)
        vw = (bv.to(tl.float32) * wk[:, None]).to(bv.dtype)
        C = C * decay + tl.dot(tl.trans(bk), vw, input_precision=PREC)
        n = n * decay + tl.sum(bk.to(tl.float32) * wk[:, None], 0)
        m = m_new

    tl.store(Cf + st * DQK * DV + ok[:, None] * DV + ov[None, :], C, mask=mkv)
    if vb == 0:
        tl.store(nf + st * DQK + ok, n, mask=mk)
        tl.store(mf + st, m)
