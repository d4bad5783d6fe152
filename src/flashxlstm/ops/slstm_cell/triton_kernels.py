"""Triton kernels for the sLSTM op: the whole time loop in one persistent launch, forward and backward.

Parallelisation. The recurrent weights are block-diagonal per head, so heads never talk to each other. A
program owns one head h, a block of BJ output units j (all four gates of them) and a set of batch blocks of
BB rows, which it runs one after another; a head is split over NJ = ceil(DH / BJ) programs. Per step a
program computes raw = x + b + h_prev @ R for its units (tensor-core dots over the head's DH inputs), applies
the stabilized cell of docs/cells.md in float32 and stores h. R is either resident (this program's
slice, 4 x DH x BJ, loaded once before the time loop in two power-of-two K pieces; the compiler keeps such a
loop-invariant 16-bit dot operand in shared memory) or streamed from L2 in chunks of BK rows each step. The
next step needs the whole h_prev of the head, written by the NJ programs of that head, so each step also
writes h in the dot dtype to a two-slot ring (HK) that the dots read, and the programs of a (head, batch
group) meet at a barrier (an atomic counter in global memory) once per step; there is no launch per step.
Loads of values other programs wrote bypass L1 (".cg"). The grid stays below the SM count, so all programs
are resident at once. When one program holds a whole head (NJ = 1) there is no head barrier, and with REG
h_prev never leaves registers. The cell state stays in registers, and the next step's inputs are loaded
while the current step computes.

t_start/t_end let one launch run a slice of the steps; with single steps (no barrier) the launch boundary
is the barrier: used under TRITON_INTERPRET=1, which runs programs one after another.

The backward runs the same loop in reverse: dh_t = dH_t + sum_g draw_{t+1,g} @ R_g for the program's units,
then the hand-derived gradient of the stabilized step, including the path through the stabilizer m (the
max routes it to raw_i or to log f and m_{t-1}); draw (= dx) is written per step in float32 (the output)
and, for the other programs of the head to read after the barrier, to a two-slot ring (DK) in the dot
dtype; with 16-bit dots as hi + lo (the value rounded, and its rounding residual rounded), multiplied by R
in two dots: draw rounded to 8 bits alone makes the gradients drift by several percent over a few hundred
steps. dR, db and dh_0 are plain float32 matmuls/sums over the saved float32 tensors.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..triton_support import both


@triton.jit
def _head_barrier(cnt_ptr, target):
    """All programs of one (head, batch group) wait here until `target` arrivals (cumulative) are counted."""
    tl.debug_barrier()
    tl.atomic_add(cnt_ptr, 1, sem="release", scope="gpu")
    while tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()


@triton.jit
def _mm(acc, a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _mm_split(acc, a, b, IEEE: tl.constexpr, SPLIT: tl.constexpr):
    """acc + a @ b for float32 a and b in the dot dtype: a rounded to b's dtype, plus (SPLIT) its rounding
    residual as a second dot, which keeps a to about twice the dtype's significant bits."""
    hi = a.to(b.dtype)
    acc = _mm(acc, hi, b, IEEE)
    if SPLIT:
        acc = _mm(acc, (a - hi.to(tl.float32)).to(b.dtype), b, IEEE)
    return acc


@triton.jit
def _mm2(acc, hi, lo, b, IEEE: tl.constexpr, SPLIT: tl.constexpr):
    """acc + (hi + lo) @ b as two dots with fp32 accumulation (SPLIT), else acc + hi @ b."""
    acc = _mm(acc, hi, b, IEEE)
    if SPLIT:
        acc = _mm(acc, lo, b, IEEE)
    return acc


@triton.jit
def _log_forget(rf, EXP_FORGET: tl.constexpr):
    if EXP_FORGET:
        return rf
    else:
        return tl.minimum(rf, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(rf)))


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _load4(ptr, off, stride, mask):
    """The four gate slices (i, f, z, o) at off, gates `stride` apart, as float32."""
    a = tl.load(ptr + off, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(ptr + off + stride, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(ptr + off + 2 * stride, mask=mask, other=0.0).to(tl.float32)
    d = tl.load(ptr + off + 3 * stride, mask=mask, other=0.0).to(tl.float32)
    return a, b, c, d


@triton.jit
def _store4(ptr, off, stride, a, b, c, d, mask):
    tl.store(ptr + off, a, mask=mask)
    tl.store(ptr + off + stride, b, mask=mask)
    tl.store(ptr + off + 2 * stride, c, mask=mask)
    tl.store(ptr + off + 3 * stride, d, mask=mask)


@triton.jit
def _gate_piece(g: tl.constexpr, a, b, c, d):
    """The piece of gate g (0..3: i, f, z, o) among four, chosen at compile time."""
    if g == 0:
        x = a
    elif g == 1:
        x = b
    elif g == 2:
        x = c
    else:
        x = d
    return x


@triton.jit
def _load_r_piece(r_base, k0, KP: tl.constexpr, DH: tl.constexpr, gate_stride, offs_j, mj):
    """Rows [k0, k0 + KP) (masked to DH) of the four (k, j) gate matrices at r_base, columns offs_j."""
    offs_k = k0 + tl.arange(0, KP)
    r_ptr = r_base + offs_k[:, None] * DH + offs_j[None, :]
    rmask = (offs_k[:, None] < DH) & mj[None, :]
    a = tl.load(r_ptr, mask=rmask, other=0.0)
    b = tl.load(r_ptr + gate_stride, mask=rmask, other=0.0)
    c = tl.load(r_ptr + 2 * gate_stride, mask=rmask, other=0.0)
    d = tl.load(r_ptr + 3 * gate_stride, mask=rmask, other=0.0)
    return a, b, c, d


@triton.jit
def _load_k_piece(row_ptr, k0, KP: tl.constexpr, DH: tl.constexpr, mb):
    """Columns [k0, k0 + KP) (masked to DH) of the rows at row_ptr (BB, 1): a dot operand written by others."""
    offs_k = k0 + tl.arange(0, KP)
    return tl.load(row_ptr + offs_k[None, :], mask=mb[:, None] & (offs_k[None, :] < DH), other=0.0,
                   cache_modifier=".cg")


@triton.jit
def slstm_fw_kernel(
    X, BIAS, RT, H0, C0, N0, M0,
    H, HK, HKL, C, N, M, RAW, CNT, RST, FIN, CF, NF, MF,
    Bsz, S, NH, SLOTS, NBP, t_start, t_end,
    DH: tl.constexpr, EXP_FORGET: tl.constexpr, STORE_RAW: tl.constexpr, STORE_STATES: tl.constexpr,
    USE_BARRIER: tl.constexpr, CTA_SYNC: tl.constexpr, IEEE: tl.constexpr, R_RESIDENT: tl.constexpr,
    REG: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, KR0: tl.constexpr, KR1: tl.constexpr,
    DOCS: tl.constexpr, SPLIT: tl.constexpr,
):
    """X (B, S, 4, NH, DH) any float; BIAS (4, NH, DH) f32; RT (NH, 4, DH_k, DH_j) = R^T in the dot dtype;
    H0/C0/N0/M0 (B, NH, DH) f32; H (B, S, NH, DH) f32; C/N/M (B, SLOTS, NH, DH) f32: the state after step t
    in slot t % SLOTS (every step when STORE_STATES, else the last of the launch); RAW (B, S, 4, NH, DH) f32
    (when STORE_RAW); CNT int32 (NH * NBP) barrier counters. HK (B, 2, NH, DH) in the dot dtype: h_t in slot
    t % 2, the copy the next step's dot reads (slot 1 holds h0 on entry). SPLIT (16-bit dots): HKL (same
    shape) holds h's rounding residual round(h - round(h)) and each product runs twice (hi and lo, fp32
    accumulation), so raw sees h to about 16 significant bits. R_RESIDENT: this program's slice of
    R is loaded once, in two K pieces of KR0 and KR1 (0: none) rows, and stays on chip for all steps (the
    compiler keeps a loop-invariant dot operand in shared memory); else it is streamed in BK chunks per step.
    REG (needs BJ >= DH, KR0 == BJ, KR1 == 0, R_RESIDENT): a program holds a whole head and keeps h_prev in
    registers; CTA_SYNC: a whole head per program, h_prev through memory (a block-level barrier per step
    instead of the head barrier).
    DOCS (packed documents: rows of documents, every row starting one): H0/C0/N0/M0 hold one initial state
    per document; RST (Bsz, S + 1) int32 is the document starting at each step of each row (-1: none; column S
    is -1), FIN (Bsz, S) the document ending there; at a start c, n, m come from that document's initial
    state, and the step before writes that document's h0 (not its own h) as the next dot operand; at an end
    c, n, m go to the final states CF/NF/MF (documents, NH, DH)."""
    NJ: tl.constexpr = (DH + BJ - 1) // BJ
    NK: tl.constexpr = (DH + BK - 1) // BK
    pid = tl.program_id(0)
    h = pid // NJ
    offs_j = (pid % NJ) * BJ + tl.arange(0, BJ)
    mj = offs_j < DH
    pid_b = tl.program_id(1)
    NB = tl.cdiv(Bsz, BB)
    HD = NH * DH
    GHD = 4 * HD
    RG = DH * DH
    b_i, b_f, b_z, b_o = _load4(BIAS, h * DH + offs_j[None, :], HD, mj[None, :])
    r_base = RT + h * 4 * RG
    if R_RESIDENT:  # this program's slice of R, loaded once: rows [0, KR0) and [KR0, KR0 + KR1)
        R_i, R_f, R_z, R_o = _load_r_piece(r_base, 0, KR0, DH, RG, offs_j, mj)
        if KR1 > 0:
            R_i1, R_f1, R_z1, R_o1 = _load_r_piece(r_base, KR0, KR1, DH, RG, offs_j, mj)
    nsteps = t_end - t_start
    for bblk in range(pid_b, NB, NBP):
        offs_b = bblk * BB + tl.arange(0, BB)
        mb = offs_b < Bsz
        mask = mb[:, None] & mj[None, :]
        if t_start == 0:
            s_off = offs_b[:, None] * HD + h * DH + offs_j[None, :]
            c = tl.load(C0 + s_off, mask=mask, other=0.0)
            n = tl.load(N0 + s_off, mask=mask, other=0.0)
            m = tl.load(M0 + s_off, mask=mask, other=0.0)
        else:
            s_off = offs_b[:, None] * (SLOTS * HD) + ((t_start - 1) % SLOTS) * HD + h * DH + offs_j[None, :]
            c = tl.load(C + s_off, mask=mask, other=0.0)
            n = tl.load(N + s_off, mask=mask, other=0.0)
            m = tl.load(M + s_off, mask=mask, other=0.0)
        if REG:  # the whole h_prev of the head is this program's own: it stays in registers
            if t_start == 0:
                hp_ptr = H0 + offs_b[:, None] * HD
            else:
                hp_ptr = H + offs_b[:, None] * (S * HD) + (t_start - 1) * HD
            h_reg = tl.load(hp_ptr + h * DH + offs_j[None, :], mask=mask, other=0.0, cache_modifier=".cg")
            if DOCS:  # a document starts at t_start: its h0
                rst0 = tl.load(RST + offs_b * (S + 1) + t_start, mask=mb, other=-1)[:, None]
                h0_off = rst0 * HD + h * DH + offs_j[None, :]
                h_reg = tl.where(rst0 >= 0, tl.load(H0 + h0_off, mask=mask & (rst0 >= 0), other=0.0), h_reg)
        x_off = offs_b[:, None] * (S * GHD) + t_start * GHD + h * DH + offs_j[None, :]
        x_i, x_f, x_z, x_o = _load4(X, x_off, HD, mask)
        for t in range(t_start, t_end):
            ri = x_i + b_i
            rf = x_f + b_f
            rz = x_z + b_z
            ro = x_o + b_o
            if DOCS:  # a document starts: its initial state replaces the carried one
                rst = tl.load(RST + offs_b * (S + 1) + t, mask=mb, other=-1)[:, None]
                i_off = rst * HD + h * DH + offs_j[None, :]
                c = tl.where(rst >= 0, tl.load(C0 + i_off, mask=mask & (rst >= 0), other=0.0), c)
                n = tl.where(rst >= 0, tl.load(N0 + i_off, mask=mask & (rst >= 0), other=0.0), n)
                m = tl.where(rst >= 0, tl.load(M0 + i_off, mask=mask & (rst >= 0), other=0.0), m)
            x_off = offs_b[:, None] * (S * GHD) + (t + 1) * GHD + h * DH + offs_j[None, :]
            x_i, x_f, x_z, x_o = _load4(X, x_off, HD, both(mask, t + 1 < t_end))  # the next step's inputs
            if REG:
                ri = _mm_split(ri, h_reg, R_i, IEEE, SPLIT)
                rf = _mm_split(rf, h_reg, R_f, IEEE, SPLIT)
                rz = _mm_split(rz, h_reg, R_z, IEEE, SPLIT)
                ro = _mm_split(ro, h_reg, R_o, IEEE, SPLIT)
            else:
                k_off = offs_b[:, None] * (2 * HD) + ((t + 1) % 2) * HD + h * DH  # h_{t-1}
                hp_ptr = HK + k_off
                lp_ptr = HKL + k_off
                if R_RESIDENT:
                    for part in tl.static_range(1 + SPLIT):  # hi, then (SPLIT) lo
                        hk = _load_k_piece(hp_ptr if part == 0 else lp_ptr, 0, KR0, DH, mb)
                        ri = _mm(ri, hk, R_i, IEEE)
                        rf = _mm(rf, hk, R_f, IEEE)
                        rz = _mm(rz, hk, R_z, IEEE)
                        ro = _mm(ro, hk, R_o, IEEE)
                        if KR1 > 0:
                            hk = _load_k_piece(hp_ptr if part == 0 else lp_ptr, KR0, KR1, DH, mb)
                            ri = _mm(ri, hk, R_i1, IEEE)
                            rf = _mm(rf, hk, R_f1, IEEE)
                            rz = _mm(rz, hk, R_z1, IEEE)
                            ro = _mm(ro, hk, R_o1, IEEE)
                else:
                    for kc in tl.static_range(NK):  # one R tile live at a time: it is the large operand
                        offs_k = kc * BK + tl.arange(0, BK)
                        mk = offs_k < DH
                        r_ptr = r_base + offs_k[:, None] * DH + offs_j[None, :]
                        rmask = mk[:, None] & mj[None, :]
                        hmask = mb[:, None] & mk[None, :]
                        hk = tl.load(hp_ptr + offs_k[None, :], mask=hmask, other=0.0, cache_modifier=".cg")
                        hl = hk
                        if SPLIT:
                            hl = tl.load(lp_ptr + offs_k[None, :], mask=hmask, other=0.0, cache_modifier=".cg")
                        ri = _mm2(ri, hk, hl, tl.load(r_ptr, mask=rmask, other=0.0), IEEE, SPLIT)
                        rf = _mm2(rf, hk, hl, tl.load(r_ptr + RG, mask=rmask, other=0.0), IEEE, SPLIT)
                        rz = _mm2(rz, hk, hl, tl.load(r_ptr + 2 * RG, mask=rmask, other=0.0), IEEE, SPLIT)
                        ro = _mm2(ro, hk, hl, tl.load(r_ptr + 3 * RG, mask=rmask, other=0.0), IEEE, SPLIT)
            if STORE_RAW:
                _store4(RAW, offs_b[:, None] * (S * GHD) + t * GHD + h * DH + offs_j[None, :], HD, ri, rf, rz, ro, mask)
            # the stabilized step; n == 0 marks an empty state (m_t = raw_i, f' = 0)
            a = _log_forget(rf, EXP_FORGET) + tl.where(n == 0.0, float("-inf"), m)
            m = tl.maximum(ri, a)
            ig = tl.exp(ri - m)
            fg = tl.exp(a - m)
            c = fg * c + ig * _tanh(rz)
            n = fg * n + ig
            h_new = tl.sigmoid(ro) * c / n
            tl.store(H + offs_b[:, None] * (S * HD) + t * HD + h * DH + offs_j[None, :], h_new, mask=mask)
            h_next = h_new  # what the next step's dot reads as h_prev
            if DOCS:
                fin = tl.load(FIN + offs_b * S + t, mask=mb, other=-1)[:, None]
                f_off = fin * HD + h * DH + offs_j[None, :]
                tl.store(CF + f_off, c, mask=mask & (fin >= 0))
                tl.store(NF + f_off, n, mask=mask & (fin >= 0))
                tl.store(MF + f_off, m, mask=mask & (fin >= 0))
                # the next step starts a document: it reads that document's h0
                nxt = tl.load(RST + offs_b * (S + 1) + t + 1, mask=mb, other=-1)[:, None]
                n_off = nxt * HD + h * DH + offs_j[None, :]
                h_next = tl.where(nxt >= 0, tl.load(H0 + n_off, mask=mask & (nxt >= 0), other=0.0), h_new)
            if not REG:
                k_off = offs_b[:, None] * (2 * HD) + (t % 2) * HD + h * DH + offs_j[None, :]
                h_hi = h_next.to(HK.dtype.element_ty)
                tl.store(HK + k_off, h_hi, mask=mask)
                if SPLIT:
                    tl.store(HKL + k_off, (h_next - h_hi.to(tl.float32)).to(HK.dtype.element_ty), mask=mask)
            st_off = offs_b[:, None] * (SLOTS * HD) + (t % SLOTS) * HD + h * DH + offs_j[None, :]
            if STORE_STATES:
                tl.store(C + st_off, c, mask=mask)
                tl.store(N + st_off, n, mask=mask)
                tl.store(M + st_off, m, mask=mask)
            else:
                if t == t_end - 1:
                    tl.store(C + st_off, c, mask=mask)
                    tl.store(N + st_off, n, mask=mask)
                    tl.store(M + st_off, m, mask=mask)
            if REG:
                h_reg = h_next
            if USE_BARRIER:
                _head_barrier(CNT + h * NBP + pid_b, (((bblk - pid_b) // NBP) * nsteps + (t - t_start) + 1) * NJ)
            if CTA_SYNC:
                tl.debug_barrier()


@triton.jit
def _load_bw_step(RAW, C0, N0, M0, C, N, M, GH, RST, offs_b, h, offs_j, t, S, HD, DH: tl.constexpr, mask,
                  DOCS: tl.constexpr, Bsz):
    """Everything step t's gradient needs that does not depend on the carried gradients."""
    x_off = offs_b[:, None] * (S * 4 * HD) + t * 4 * HD + h * DH + offs_j[None, :]
    ri, rf, rz, ro = _load4(RAW, x_off, HD, mask)
    c_off = offs_b[:, None] * (S * HD) + t * HD + h * DH + offs_j[None, :]
    c_t = tl.load(C + c_off, mask=mask, other=0.0)
    n_t = tl.load(N + c_off, mask=mask, other=1.0)
    gh = tl.load(GH + c_off, mask=mask, other=0.0)
    if DOCS:  # the state before a document's first step is that document's initial state
        rst = tl.load(RST + offs_b * (S + 1) + t, mask=offs_b < Bsz, other=-1)[:, None]
        first = rst >= 0
        p_off = tl.where(first, rst * HD + h * DH + offs_j[None, :], c_off - HD)
        c_p = tl.where(first, tl.load(C0 + p_off, mask=mask & first, other=0.0), tl.load(C + p_off, mask=both(mask, t > 0), other=0.0))
        n_p = tl.where(first, tl.load(N0 + p_off, mask=mask & first, other=0.0), tl.load(N + p_off, mask=both(mask, t > 0), other=0.0))
        m_p = tl.where(first, tl.load(M0 + p_off, mask=mask & first, other=0.0), tl.load(M + p_off, mask=both(mask, t > 0), other=0.0))
        return ri, rf, rz, ro, c_t, n_t, gh, c_p, n_p, m_p
    first = t == 0
    p_off = tl.where(first, offs_b[:, None] * HD + h * DH + offs_j[None, :], c_off - HD)
    c_p = tl.where(first, tl.load(C0 + p_off, mask=both(mask, first), other=0.0), tl.load(C + p_off, mask=both(mask, t > 0), other=0.0))
    n_p = tl.where(first, tl.load(N0 + p_off, mask=both(mask, first), other=0.0), tl.load(N + p_off, mask=both(mask, t > 0), other=0.0))
    m_p = tl.where(first, tl.load(M0 + p_off, mask=both(mask, first), other=0.0), tl.load(M + p_off, mask=both(mask, t > 0), other=0.0))
    return ri, rf, rz, ro, c_t, n_t, gh, c_p, n_p, m_p


@triton.jit
def slstm_bw_kernel(
    RAW, R, C0, N0, M0, C, N, M, GH, DC, DN, DM, DRAW, DK, DKL, CNT, RST, FIN, GCF, GNF, GMF, DC0, DN0, DM0,
    Bsz, S, NH, NBP, t_start, t_end,
    DH: tl.constexpr, EXP_FORGET: tl.constexpr, USE_BARRIER: tl.constexpr, CTA_SYNC: tl.constexpr,
    IEEE: tl.constexpr, R_RESIDENT: tl.constexpr, REG: tl.constexpr,
    BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, KR0: tl.constexpr, KR1: tl.constexpr,
    DOCS: tl.constexpr, SPLIT: tl.constexpr,
):
    """Reverse loop over t in [t_start, t_end). RAW (B, S, 4, NH, DH) f32; R (4, NH, DH, DH) in the dot dtype;
    C/N/M (B, S, NH, DH) f32 states after each step; GH (B, S, NH, DH) f32 = dL/dh; DC/DN/DM (B, NH, DH) f32
    carried state gradients (in: of the state after t_end - 1, out: of the state before t_start);
    DRAW (B, S, 4, NH, DH) f32 = dL/draw; DK (B, 2, 4, NH, DH) in the dot dtype: draw_t in slot t % 2, the
    copy the previous step's dot reads. SPLIT (16-bit dots): DK holds hi = round(draw) and DKL (same shape)
    lo = round(draw - hi), and each product runs twice (hi and lo, fp32 accumulation), so the recurrent
    product sees draw to about 16 significant bits instead of 8 (R itself is exact when it is a 16-bit
    parameter). R_RESIDENT, KR0, KR1, REG: as in the forward.
    DOCS (rows of packed documents): RST/FIN as in the forward; C0/N0/M0 hold the documents' initial states.
    At a document's last step the carried gradients become those of its final state (GCF/GNF/GMF) and h gets
    no gradient from the next step (which starts from its own h0); after a document's first step they are
    the gradients of its initial state, stored to DC0/DN0/DM0 (documents, NH, DH)."""
    NJ: tl.constexpr = (DH + BJ - 1) // BJ
    NK: tl.constexpr = (DH + BK - 1) // BK
    pid = tl.program_id(0)
    h = pid // NJ
    offs_j = (pid % NJ) * BJ + tl.arange(0, BJ)
    mj = offs_j < DH
    pid_b = tl.program_id(1)
    NB = tl.cdiv(Bsz, BB)
    HD = NH * DH
    GHD = 4 * HD
    RG = NH * DH * DH
    r_base = R + h * DH * DH
    if R_RESIDENT:
        R_i, R_f, R_z, R_o = _load_r_piece(r_base, 0, KR0, DH, RG, offs_j, mj)
        if KR1 > 0:
            R_i1, R_f1, R_z1, R_o1 = _load_r_piece(r_base, KR0, KR1, DH, RG, offs_j, mj)
    nsteps = t_end - t_start
    for bblk in range(pid_b, NB, NBP):
        offs_b = bblk * BB + tl.arange(0, BB)
        mb = offs_b < Bsz
        mask = mb[:, None] & mj[None, :]
        s_off = offs_b[:, None] * HD + h * DH + offs_j[None, :]
        dc = tl.load(DC + s_off, mask=mask, other=0.0)
        dn = tl.load(DN + s_off, mask=mask, other=0.0)
        dm = tl.load(DM + s_off, mask=mask, other=0.0)
        if REG:  # the next step's draw of the whole head is this program's own: keep it in registers
            d_off = offs_b[:, None] * (S * GHD) + t_end * GHD + h * DH + offs_j[None, :]
            d_i, d_f, d_z, d_o = _load4(DRAW, d_off, HD, both(mask, t_end < S))
        n_ri, n_rf, n_rz, n_ro, n_c, n_n, n_gh, n_cp, n_np, n_mp = _load_bw_step(
            RAW, C0, N0, M0, C, N, M, GH, RST, offs_b, h, offs_j, t_end - 1, S, HD, DH, mask, DOCS, Bsz)
        for tt in range(t_start, t_end):
            t = t_end - 1 - (tt - t_start)
            ri, rf, rz, ro, c_t, n_t, dh, c_p, n_p, m_p = n_ri, n_rf, n_rz, n_ro, n_c, n_n, n_gh, n_cp, n_np, n_mp
            # the previous step's inputs load while this step computes
            n_ri, n_rf, n_rz, n_ro, n_c, n_n, n_gh, n_cp, n_np, n_mp = _load_bw_step(
                RAW, C0, N0, M0, C, N, M, GH, RST, offs_b, h, offs_j, tl.maximum(t - 1, 0), S, HD, DH,
                both(mask, t > t_start), DOCS, Bsz)
            gh_own = dh
            if DOCS:  # t ends a document in this row: the carried gradients are its final state's
                fin = tl.load(FIN + offs_b * S + t, mask=mb, other=-1)[:, None]
                f_off = fin * HD + h * DH + offs_j[None, :]
                dc = tl.where(fin >= 0, tl.load(GCF + f_off, mask=mask & (fin >= 0), other=0.0), dc)
                dn = tl.where(fin >= 0, tl.load(GNF + f_off, mask=mask & (fin >= 0), other=0.0), dn)
                dm = tl.where(fin >= 0, tl.load(GMF + f_off, mask=mask & (fin >= 0), other=0.0), dm)
            if t < S - 1:  # h_t feeds step t + 1
                if REG:
                    dh = _mm_split(dh, d_i, R_i, IEEE, SPLIT)
                    dh = _mm_split(dh, d_f, R_f, IEEE, SPLIT)
                    dh = _mm_split(dh, d_z, R_z, IEEE, SPLIT)
                    dh = _mm_split(dh, d_o, R_o, IEEE, SPLIT)
                else:
                    d_off = offs_b[:, None] * (2 * GHD) + ((t + 1) % 2) * GHD + h * DH  # draw_{t+1}
                    d_row = DK + d_off
                    l_row = DKL + d_off
                    for g in tl.static_range(4):
                        if R_RESIDENT:
                            r = _gate_piece(g, R_i, R_f, R_z, R_o)
                            dh = _mm(dh, _load_k_piece(d_row + g * HD, 0, KR0, DH, mb), r, IEEE)
                            if SPLIT:
                                dh = _mm(dh, _load_k_piece(l_row + g * HD, 0, KR0, DH, mb), r, IEEE)
                            if KR1 > 0:
                                r = _gate_piece(g, R_i1, R_f1, R_z1, R_o1)
                                dh = _mm(dh, _load_k_piece(d_row + g * HD, KR0, KR1, DH, mb), r, IEEE)
                                if SPLIT:
                                    dh = _mm(dh, _load_k_piece(l_row + g * HD, KR0, KR1, DH, mb), r, IEEE)
                        else:
                            for kc in tl.static_range(NK):
                                offs_k = kc * BK + tl.arange(0, BK)
                                mk = offs_k < DH
                                dmask = mb[:, None] & mk[None, :]
                                r = tl.load(r_base + g * RG + offs_k[:, None] * DH + offs_j[None, :],
                                            mask=mk[:, None] & mj[None, :], other=0.0)
                                d = tl.load(d_row + g * HD + offs_k[None, :], mask=dmask, other=0.0,
                                            cache_modifier=".cg")
                                dh = _mm(dh, d, r, IEEE)
                                if SPLIT:
                                    d = tl.load(l_row + g * HD + offs_k[None, :], mask=dmask, other=0.0,
                                                cache_modifier=".cg")
                                    dh = _mm(dh, d, r, IEEE)
            if DOCS:  # ... unless step t + 1 starts a document (from its own h0) in this row
                dh = tl.where(fin >= 0, gh_own, dh)
            # recompute the step
            a = _log_forget(rf, EXP_FORGET) + tl.where(n_p == 0.0, float("-inf"), m_p)
            m_t = tl.maximum(ri, a)
            ig = tl.exp(ri - m_t)
            fg = tl.exp(a - m_t)
            zt = _tanh(rz)
            ot = tl.sigmoid(ro)
            q = c_t / n_t
            # its gradient
            d_o = dh * q * ot * (1.0 - ot)
            dc = dc + dh * ot / n_t
            dn = dn - dh * ot * q / n_t
            d_z = dc * ig * (1.0 - zt * zt)
            gi = (dc * zt + dn) * ig
            gf = (dc * c_p + dn * n_p) * fg
            dmt = dm - gi - gf
            i_wins = ri >= a
            d_i = gi + tl.where(i_wins, dmt, 0.0)
            da = gf + tl.where(i_wins, 0.0, dmt)
            if EXP_FORGET:
                d_f = da
            else:
                d_f = da * tl.sigmoid(-rf)
            _store4(DRAW, offs_b[:, None] * (S * GHD) + t * GHD + h * DH + offs_j[None, :], HD, d_i, d_f, d_z, d_o, mask)
            if not REG:
                dk = R.dtype.element_ty
                k_off = offs_b[:, None] * (2 * GHD) + (t % 2) * GHD + h * DH + offs_j[None, :]
                hi_i, hi_f, hi_z, hi_o = d_i.to(dk), d_f.to(dk), d_z.to(dk), d_o.to(dk)
                _store4(DK, k_off, HD, hi_i, hi_f, hi_z, hi_o, mask)
                if SPLIT:
                    _store4(DKL, k_off, HD, (d_i - hi_i.to(tl.float32)).to(dk), (d_f - hi_f.to(tl.float32)).to(dk),
                            (d_z - hi_z.to(tl.float32)).to(dk), (d_o - hi_o.to(tl.float32)).to(dk), mask)
            dc = dc * fg
            dn = dn * fg
            dm = da
            if DOCS:  # t starts a document: these are the gradients of its initial state
                rst = tl.load(RST + offs_b * (S + 1) + t, mask=mb, other=-1)[:, None]
                r_off = rst * HD + h * DH + offs_j[None, :]
                tl.store(DC0 + r_off, dc, mask=mask & (rst >= 0))
                tl.store(DN0 + r_off, dn, mask=mask & (rst >= 0))
                tl.store(DM0 + r_off, dm, mask=mask & (rst >= 0))
            if USE_BARRIER:
                _head_barrier(CNT + h * NBP + pid_b, (((bblk - pid_b) // NBP) * nsteps + (tt - t_start) + 1) * NJ)
            if CTA_SYNC:
                tl.debug_barrier()
        tl.store(DC + s_off, dc, mask=mask)
        tl.store(DN + s_off, dn, mask=mask)
        tl.store(DM + s_off, dm, mask=mask)
