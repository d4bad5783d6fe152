"""Chunk-parallel forward, pass 2: the outputs of every chunk at once, from the states of pass 1.

One program per (block of DV columns, chunk, b * NH + h or, with cu_seqlens, h; chunks as in common.py:
a slot past the last chunk of a head has no steps and stores nothing). With the state (C_c, n_c, m_c)
entering chunk c (chunk_states.py) and, inside the chunk, b = cumulative log forget, li = log input gate:

    m_t   = max(b_t + m_c, max_{s<=t} b_t - b_s + li_s)        (the recurrent stabilizer)
          = b_t + max(m_c, running max_{s<=t} (li_s - b_s))  (a scan: no (L x L) tile)
    num_t = exp(b_t + m_c - m_t) q^_t C_c + sum_{s<=t} exp(b_t - b_s + li_s - m_t) (q^_t . k_s) v_s
    den_t = the same with n_c for C_c and 1 for v_s;  h_t = num_t / (max(|den_t|, exp(-m_t)) + eps)

q^ = q / sqrt(DQK). The products q C_c, q k^T and q n_c are summed over DQK in blocks of BK
(q n_c for bf16 on the tensor cores with n_c split into a bf16 head and residual: matvec_fp32). The programs of
the first DV block also write m_t and den_t (fp32) for the backward; for 16-bit outputs that need
gradients every program writes h's rounding residual h_lo = h - round(h) (docs/kernels.md: the
backward's d den sums DV products of h and loses precision to h's rounding). k is read transposed
straight from memory, so no tile is transposed in registers. With DESC the tiles of q, k, C and v come
through tensor descriptors (TMA on Hopper) sized to the chunk, k transposed in shared memory; h is stored
through masked pointers either way (a slot past the last chunk must not write). The gates are loaded before the DQK loop
and used after it, so their load latency overlaps the loop's and only the vectors b, li stay live in it.

Values outside the math: a forget gate of -inf (or sums of gates that would overflow) is an exact reset
(common.forget_sums: no pair weight across it, the running maximum restarts there), and a non-finite k or v
at step s touches no output before s (weights selected with where; the product with v on its finite part).
The v handling runs only for a tile whose v is not all finite (a uniform branch): its (L x BV) masks would
otherwise push the pass past its 128-register cap into spills.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import chunk_span, finite_mask, finite_or_zero, forget_sums, load_gates, tile


@triton.jit
def matvec_fp32(a, x, PREC: tl.constexpr):
    """a @ x for an fp32 vector x, at about fp32 precision.

    bf16 a: on the tensor cores, x split into a bf16 head and its residual in columns 0 and 1 of a
    16-wide tile, the two products summed in fp32; this keeps an fp32 copy of a out of the registers.
    fp16 (whose range x may exceed) and fp32 a: elementwise in fp32.
    """
    if a.dtype == tl.bfloat16:
        col = tl.arange(0, 16)
        hi = x.to(tl.bfloat16)
        lo = (x - hi.to(tl.float32)).to(tl.bfloat16)
        X = tl.where(col[None, :] == 0, hi[:, None], tl.where(col[None, :] == 1, lo[:, None], 0.0).to(tl.bfloat16))
        return tl.sum(tl.dot(a, X, input_precision=PREC), 1)
    else:
        return tl.sum(a.to(tl.float32) * x[None, :], 1)


@triton.jit
def _segment_max(z1, a1, z2, a2):
    """Running maximum restarted at every reset: (z, a) pairs with z non-decreasing along the scan."""
    return z2, tl.where(z2 > z1, a2, tl.maximum(a1, a2))


@triton.jit
def mlstm_chunk_output_kernel(
    q, k, v, ig, fg, Cs, ns, ms, h, hlo, mstat, dstat, cu, coff, cdoc,
    S, nt, scale, eps,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    NH: tl.constexpr, EXP_GATE: tl.constexpr, PREC: tl.constexpr, STORE_LO: tl.constexpr,
    IS_VARLEN: tl.constexpr, DESC: tl.constexpr,
):
    vb = tl.program_id(0)
    rc, nr, st, sidx, first = chunk_span(cu, coff, cdoc, 0, nt, S, L, NH, IS_VARLEN)
    ol = tl.arange(0, L)
    mt = ol < nr

    # gate loads first (their latency overlaps the DQK loop's); the (L x L) gate tile comes after the loop
    m = tl.load(ms + st, mask=nr > 0, other=0.0)  # a slot past the last chunk holds no state
    li, lf = load_gates(ig, fg, rc + ol, mt, EXP_GATE)

    qk = tl.zeros([L, L], dtype=tl.float32)
    qC = tl.zeros([L, BV], dtype=tl.float32)
    qn = tl.zeros([L], dtype=tl.float32)
    if DESC:  # tensor descriptors (TMA on Hopper) over exactly this chunk's rows: the rest reads as zeros
        rows = tl.maximum(nr, 1)
        dq_ = tl.make_tensor_descriptor(q + rc * DQK, shape=[rows, DQK], strides=[DQK, 1], block_shape=[L, BK])
        dk_ = tl.make_tensor_descriptor(k + rc * DQK, shape=[rows, DQK], strides=[DQK, 1], block_shape=[L, BK])
        dC_ = tl.make_tensor_descriptor(Cs + st * DQK * DV, shape=[DQK, DV], strides=[DV, 1], block_shape=[BK, BV])
    for k0 in range(0, DQK, BK):
        ok = k0 + tl.arange(0, BK)
        if DESC:
            bq = dq_.load([0, k0])
            bkt = tl.trans(dk_.load([0, k0]))
            bC = dC_.load([k0, vb * BV])
        else:
            pq, pq_in = tile(q + rc * DQK, 0, k0, nr, DQK, DQK, 1, L, BK)
            pk, pk_in = tile(k + rc * DQK, k0, 0, DQK, nr, 1, DQK, BK, L)
            pC, pC_in = tile(Cs + st * DQK * DV, k0, vb * BV, DQK, DV, DV, 1, BK, BV)
            bq = tl.load(pq, mask=pq_in, other=0.0)
            bkt = tl.load(pk, mask=pk_in, other=0.0)
            bC = tl.load(pC, mask=pC_in, other=0.0)
        nk = tl.load(ns + st * DQK + ok, mask=ok < DQK, other=0.0)
        qk += tl.dot(bq, bkt, input_precision=PREC)
        qC += tl.dot(bq, bC.to(bq.dtype), input_precision=PREC)
        qn += matvec_fp32(bq, nk, PREC)

    b, z, g, zg = forget_sums(lf)
    _, run = tl.associative_scan((z, li - b), 0, _segment_max)  # max over s <= t since the last reset
    m_row = b + tl.maximum(tl.where(z == 0, m, float("-inf")), run)
    mrs = finite_or_zero(m_row)
    pair = (ol[:, None] >= ol[None, :]) & (z[:, None] == z[None, :])  # causal, no reset between s and t
    w_inter = tl.where(z == 0, tl.exp(b + m - mrs), 0.0) * scale
    # weights selected with where, never 0 * inf: an infinite k_s touches no row before s
    s = tl.where(pair, qk * scale * tl.exp(b[:, None] - b[None, :] + li[None, :] - mrs[:, None]), 0.0)
    if DESC:
        dv_ = tl.make_tensor_descriptor(v + rc * DV, shape=[rows, DV], strides=[DV, 1], block_shape=[L, BV])
        bv = dv_.load([0, vb * BV])
    else:
        pv, pv_in = tile(v + rc * DV, 0, vb * BV, nr, DV, DV, 1, L, BV)
        bv = tl.load(pv, mask=pv_in, other=0.0)
    # A tile whose v is all finite (the rule) takes the plain product: one uniform branch on a reduction, so
    # the (L x BV) masks of the exact path hold no registers there. Otherwise the product runs on v's finite
    # part (0 * inf would reach earlier rows), and a column whose v is not finite at step s is non-finite from
    # s on, as in the recurrence.
    if tl.min(finite_mask(bv).to(tl.int32)) == 1:
        num = tl.dot(s.to(bv.dtype), bv, qC * w_inter[:, None], input_precision=PREC)
    else:
        fin = finite_mask(bv)
        first_bad = tl.min(tl.where(fin, L, ol[:, None]), 0)
        num = tl.dot(s.to(bv.dtype), tl.where(fin, bv, 0.0).to(bv.dtype), qC * w_inter[:, None], input_precision=PREC)
        num = tl.where(ol[:, None] >= first_bad[None, :], float("nan"), num)
    den = tl.sum(s, 1) + qn * w_inter
    z = tl.maximum(tl.abs(den), tl.exp(-mrs)) + eps
    hv = num / z[:, None]
    hb = hv.to(h.dtype.element_ty)
    ph, ph_in = tile(h + rc * DV, 0, vb * BV, nr, DV, DV, 1, L, BV)
    tl.store(ph, hb, mask=ph_in)
    if STORE_LO:
        plo, plo_in = tile(hlo + rc * DV, 0, vb * BV, nr, DV, DV, 1, L, BV)
        tl.store(plo, (hv - hb.to(tl.float32)).to(h.dtype.element_ty), mask=plo_in)
    if vb == 0:
        tl.store(mstat + rc + ol, m_row, mask=mt)
        tl.store(dstat + rc + ol, den, mask=mt)
