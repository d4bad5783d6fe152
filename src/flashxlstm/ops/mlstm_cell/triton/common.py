"""Small Triton helpers shared by the mLSTM kernels: gate transforms, stabilizers, sequence and chunk bounds.

Every sequence kernel sees its input as sequences of rows, one initial and one final state each: without
`cu_seqlens` a sequence is the row (b, h) of S steps; with `cu_seqlens` (B == 1) it is the document
cu[d] .. cu[d + 1] of head h. Sequences are cut into chunks of L steps from their own start, so no chunk
holds steps of two documents: the last chunk of a sequence may be shorter. With cu_seqlens the chunks of
one head are numbered through all its documents (document d owns chunks coff[d] .. coff[d + 1], and
cdoc[gc] is the document of chunk gc); time windows and chunk-state slots run over that numbering.
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


# A log forget gate at or below RESET is a reset: the state before it is erased exactly, as the recurrence
# erases it with f = -inf (exp(log f + m) = 0 for every stabilizer m a sequence can reach). Decays are then
# summed from the finite gates only and pairs of steps across a reset get weight 0, so -inf - (-inf) and sums
# of gates like -3e38 that overflow never appear.
RESET = tl.constexpr(-1e30)


@triton.jit
def forget_sums(lf):
    """Cumulative log forget of a chunk through each step t, from its finite gates (b_t), and the number of
    resets through t (z_t): the decay from step s to step t is b_t - b_s where z_s == z_t, and -inf (an exact
    reset) where z_t > z_s. Also the chunk's totals g = b_last and zg = z_last."""
    reset = lf <= RESET
    b = tl.cumsum(tl.where(reset, 0.0, lf), 0)
    z = tl.cumsum(reset.to(tl.int32), 0)
    return b, z, tl.sum(tl.where(reset, 0.0, lf), 0), tl.sum(reset.to(tl.int32), 0)


@triton.jit
def finite_mask(x):
    """True where x is finite (x - x is NaN exactly at +-inf and NaN)."""
    y = x.to(tl.float32)
    return (y - y) == 0.0


@triton.jit
def doc_span(cu, coff, pid, S, NT, NH: tl.constexpr, IS_VARLEN: tl.constexpr):
    """The sequence a state-walk program walks (program id `pid` along grid axis 2): (first row, steps, first
    chunk, end chunk, state index, carry index), rows in the flat (B * NH * S) layout. Only the first row is
    64-bit: steps inside one sequence fit 32 bits, and 64-bit row masks cost registers in the loops.

    Without cu_seqlens pid = b * NH + h: the whole row, chunks 0 .. NT, state and carry index pid. With
    cu_seqlens (B == 1) pid = d * NH + h: document d of head h, its chunks coff[d] .. coff[d + 1] of the
    head's chunk list (every document starts a chunk), state index pid (states are (N, NH, ...)) and carry
    index h (a time window carries one state per head, of the document that straddles its start).
    """
    if IS_VARLEN:
        d = pid // NH
        h = pid % NH
        bos = tl.load(cu + d).to(tl.int64)
        eos = tl.load(cu + d + 1).to(tl.int64)
        return (h.to(tl.int64) * S + bos, (eos - bos).to(tl.int32), tl.load(coff + d), tl.load(coff + d + 1),
                pid.to(tl.int64), h.to(tl.int64))
    else:
        bh = pid.to(tl.int64)
        return bh * S, S, 0, NT, bh, bh


@triton.jit
def window_part(lo, hi, c0, c1):
    """The chunks [a, b) of a sequence with chunks [lo, hi) inside the window [c0, c1), and whether the
    sequence's program has work there: chunks in the window, or an empty sequence placed in it."""
    a = tl.maximum(lo, c0)
    b = tl.minimum(hi, c1)
    return a, b, (a < b) | ((lo == hi) & (c0 <= lo) & (lo < c1))


@triton.jit
def state_block(DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Coordinates of a state-walk program (chunk_states.py, the backward state walk), grid (DQK blocks,
    DV blocks, sequences): (kb, vb, DQK rows ok, DV columns ov, ok mask, block mask)."""
    kb = tl.program_id(0)
    vb = tl.program_id(1)
    ok = kb * BK + tl.arange(0, BK)
    ov = vb * BV + tl.arange(0, BV)
    mk = ok < DQK
    return kb, vb, ok, ov, mk, mk[:, None] & (ov < DV)[None, :]


@triton.jit
def chunk_span(cu, coff, cdoc, c0, nt, S, L: tl.constexpr, NH: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Coordinates of a per-chunk program, grid (blocks, chunks of the window, b * NH + h or h): chunk
    gc = c0 + program_id(1) of its row (or of the head's chunk list with cu_seqlens, cdoc[gc] its document).
    Returns (first row rc (a slot past the last chunk gets its document's first row, so that nothing reads
    outside the tensor), steps n in the chunk (0 for a slot past the last chunk), chunk-state slot
    p * nt + (gc - c0), state index of the sequence, whether the chunk is its sequence's first)."""
    j = tl.program_id(1)
    gc = c0 + j
    p = tl.program_id(2).to(tl.int64)
    if IS_VARLEN:
        d = tl.load(cdoc + gc)
        bos = tl.load(cu + d).to(tl.int64)
        eos = tl.load(cu + d + 1).to(tl.int64)
        lo = tl.load(coff + d)
        off = (gc - lo) * L
        n = tl.minimum(tl.maximum(eos - bos - off, 0), L).to(tl.int32)
        off = tl.where(n > 0, off, 0)  # a slot past the last chunk points at a real row (tensor descriptors read it)
        return p * S + bos + off, n, p * nt + j, d.to(tl.int64) * NH + p, gc == lo
    else:
        off = gc * L
        return p * S + off, tl.minimum(S - off, L).to(tl.int32), p * nt + j, p, gc == 0


@triton.jit
def load_gates(ig, fg, rows, mask, EXP_GATE: tl.constexpr):
    """log input gate and log forget gate of a chunk; rows past its end leave the state untouched."""
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
