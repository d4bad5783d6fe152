"""Small Triton helpers shared by the mLSTM kernels: gate transforms, stabilizers, sequence bounds.

Every sequence kernel sees its input as spans of rows, one initial and one final state each: without
`cu_seqlens` a span is a segment of TSEG steps of batch entry b (the whole sequence when there is one
segment); with `cu_seqlens` (B == 1) it is the document cu[d]..cu[d+1] of head h.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tile(base, r0, c0, R, C, sr, sc, BR: tl.constexpr, BC: tl.constexpr):
    """Pointers to the (BR x BC) tile at (r0, c0) of an R x C matrix at `base` with strides (sr, sc), and the
    mask of the elements inside the matrix. Load with other=0.0 and store with the mask: plain pointer
    arithmetic, which every Triton from 3.6 on compiles and interprets (block pointers left in 3.9)."""
    rr = r0 + tl.arange(0, BR)
    cc = c0 + tl.arange(0, BC)
    return base + rr[:, None] * sr + cc[None, :] * sc, (rr < R)[:, None] & (cc < C)[None, :]


@triton.jit
def logsigmoid(x):
    # min(x, 0) - log(1 + exp(-|x|)): exact at +-inf (0 and -inf), no overflow anywhere
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def finite_or_zero(m):
    """A stabilizer safe to subtract: -inf (nothing seen yet) becomes 0."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def seq_bounds(cu, pid, S, TSEG, NSEG, NH: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(first row, length, state index) of the span program `pid` walks, in the (rows, features) layout.

    Packed documents: pid = d * NH + h, span = document d of head h, state index pid. Otherwise
    pid = (b * NSEG + s) * NH + h, span = segment s (TSEG steps, the last one shorter) of batch entry b,
    head h, state index (b * NH + h) * NSEG + s, so that segment states are laid out (B, NH, NSEG, ...);
    one segment (NSEG = 1, TSEG = S) is the whole sequence.
    """
    d = pid // NH
    h = pid % NH
    if IS_VARLEN:
        bos = tl.load(cu + d).to(tl.int64)
        eos = tl.load(cu + d + 1).to(tl.int64)
        return h.to(tl.int64) * S + bos, (eos - bos).to(tl.int32), pid.to(tl.int64)
    else:
        b = d // NSEG
        sg = d % NSEG
        start = sg * TSEG
        row0 = (b * NH + h).to(tl.int64) * S + start
        st = (b * NH + h).to(tl.int64) * NSEG + sg
        return row0, tl.minimum(TSEG, S - start), st


@triton.jit
def state_block(S, DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Coordinates of a state-walk program (chunk_states.py, the backward state walk), grid (DQK blocks,
    DV blocks, batch*head): (kb, vb, bh, first row, DQK rows ok, DV columns ov, ok mask, block mask)."""
    kb = tl.program_id(0)
    vb = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    ok = kb * BK + tl.arange(0, BK)
    ov = vb * BV + tl.arange(0, BV)
    mk = ok < DQK
    return kb, vb, bh, bh * S, ok, ov, mk, mk[:, None] & (ov < DV)[None, :]


@triton.jit
def chunk_program(c_first, NT, S, L: tl.constexpr):
    """Coordinates of a per-chunk program, grid (blocks, chunks of the window, batch*head), over the NT
    chunks from c_first: (chunk c, bh, first row, state slot bh * NT + j, the chunk's steps t, t < S)."""
    j = tl.program_id(1)
    c = c_first + j
    bh = tl.program_id(2).to(tl.int64)
    t = c * L + tl.arange(0, L)
    return c, bh, bh * S, bh * NT + j, t, t < S


@triton.jit
def load_gates(ig, fg, rows, mask, EXP_GATE: tl.constexpr):
    """log input gate and log forget gate of a chunk; rows past the end leave the state untouched."""
    i = tl.load(ig + rows, mask=mask, other=0.0).to(tl.float32)
    f = tl.load(fg + rows, mask=mask, other=0.0).to(tl.float32)
    if EXP_GATE:
        li = i
    else:
        li = logsigmoid(i)
    li = tl.where(mask, li, float("-inf"))
    lf = tl.where(mask, logsigmoid(f), 0.0)
    return li, lf


@triton.jit
def matvec(a, x, PREC: tl.constexpr):
    """a @ x for a 2-D tile and a vector, on the tensor cores: x rides in column 0 of a 16-wide tile.

    This keeps vector products (q . n, k^T w) out of (rows x DQK) fp32 temporaries, which would not
    fit in registers next to the state.
    """
    col = tl.arange(0, 16)
    X = tl.where(col[None, :] == 0, x[:, None], 0.0).to(a.dtype)
    return tl.sum(tl.dot(a, X, input_precision=PREC), 1)
