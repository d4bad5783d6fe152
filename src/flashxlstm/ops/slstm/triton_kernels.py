"""Triton kernels for the sLSTM op: the whole time loop in one persistent launch, forward and backward.

Parallelisation. The recurrent weights are block-diagonal per head, so heads never talk to each other. A
program owns one head h, a block of BJ output units j (all four gates of them) and a set of batch blocks; a
head is split over NJ = ceil(DH / BJ) programs. Per step a program computes raw = x + b + h_prev @ R for its
units (one K loop of tensor-core dots over the head's DH inputs, R streamed from L1/L2, where the per-program
slice stays resident), applies the stabilized cell of xlstm-spec section 2 in float32, and stores h. The
next step needs the whole h_prev of the head, written by the NJ programs of that head, so the programs of a
(head, batch group) meet at a barrier (an atomic counter in global memory) once per step; there is no launch
per step. Loads of values other programs wrote bypass L1 (".cg"). Grid size stays below the SM count so all
programs are resident at once. With t_start/t_end one launch can also run a single step (no barrier): used
under TRITON_INTERPRET=1, which runs programs one after another.

The backward runs the same loop in reverse: dh_t = dH_t + sum_g draw_{t+1,g} @ R_g for the program's units,
then the hand-derived gradient of the stabilized step, including the path through the stabilizer m (the
max routes it to raw_i or to log f and m_{t-1}); draw (= dx) is written per step and read by the other
programs of the head after the barrier. dR, db and dh_0 are plain matmuls/sums over the saved tensors.
"""
from __future__ import annotations

import triton
import triton.language as tl


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
def slstm_fw_kernel(
    X, BIAS, RT, H0, C0, N0, M0,
    H, C, N, M, RAW, CNT,
    Bsz, S, NH, DH, SLOTS, NBP, t_start, t_end,
    EXP_FORGET: tl.constexpr, STORE_RAW: tl.constexpr, USE_BARRIER: tl.constexpr, IEEE: tl.constexpr,
    BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
):
    """X (B, S, 4, NH, DH) any float; BIAS (4, NH, DH) f32; RT (NH, 4, DH_k, DH_j) = R^T in the dot dtype;
    H0/C0/N0/M0 (B, NH, DH) f32; H (B, S, NH, DH) f32; C/N/M (B, SLOTS, NH, DH) f32, step t in slot t % SLOTS;
    RAW (B, S, 4, NH, DH) f32 (written when STORE_RAW); CNT int32 (NH * NBP) barrier counters."""
    NJ = tl.cdiv(DH, BJ)
    pid = tl.program_id(0)
    h = pid // NJ
    offs_j = (pid % NJ) * BJ + tl.arange(0, BJ)
    mj = offs_j < DH
    pid_b = tl.program_id(1)
    NB = tl.cdiv(Bsz, BB)
    HD = NH * DH
    GHD = 4 * HD
    RG = DH * DH
    bias_i = tl.load(BIAS + 0 * HD + h * DH + offs_j, mask=mj, other=0.0)[None, :]
    bias_f = tl.load(BIAS + 1 * HD + h * DH + offs_j, mask=mj, other=0.0)[None, :]
    bias_z = tl.load(BIAS + 2 * HD + h * DH + offs_j, mask=mj, other=0.0)[None, :]
    bias_o = tl.load(BIAS + 3 * HD + h * DH + offs_j, mask=mj, other=0.0)[None, :]
    r_base = RT + h * 4 * RG
    for t in range(t_start, t_end):
        for bblk in range(pid_b, NB, NBP):
            offs_b = bblk * BB + tl.arange(0, BB)
            mb = offs_b < Bsz
            mask = mb[:, None] & mj[None, :]
            if t == 0:
                hp_ptr = H0
                hp_stride = HD
                sp_off = offs_b[:, None] * HD + h * DH + offs_j[None, :]
                c = tl.load(C0 + sp_off, mask=mask, other=0.0)
                n = tl.load(N0 + sp_off, mask=mask, other=0.0)
                m = tl.load(M0 + sp_off, mask=mask, other=0.0)
            else:
                hp_ptr = H + (t - 1) * HD
                hp_stride = S * HD
                sp_off = offs_b[:, None] * (SLOTS * HD) + ((t - 1) % SLOTS) * HD + h * DH + offs_j[None, :]
                c = tl.load(C + sp_off, mask=mask, other=0.0)
                n = tl.load(N + sp_off, mask=mask, other=0.0)
                m = tl.load(M + sp_off, mask=mask, other=0.0)
            x_off = offs_b[:, None] * (S * GHD) + t * GHD + h * DH + offs_j[None, :]
            ri = tl.load(X + x_off, mask=mask, other=0.0).to(tl.float32) + bias_i
            rf = tl.load(X + x_off + HD, mask=mask, other=0.0).to(tl.float32) + bias_f
            rz = tl.load(X + x_off + 2 * HD, mask=mask, other=0.0).to(tl.float32) + bias_z
            ro = tl.load(X + x_off + 3 * HD, mask=mask, other=0.0).to(tl.float32) + bias_o
            for k0 in range(0, DH, BK):
                offs_k = k0 + tl.arange(0, BK)
                mk = offs_k < DH
                hk = tl.load(hp_ptr + offs_b[:, None] * hp_stride + h * DH + offs_k[None, :],
                             mask=mb[:, None] & mk[None, :], other=0.0, cache_modifier=".cg").to(RT.dtype.element_ty)
                r_ptr = r_base + offs_k[:, None] * DH + offs_j[None, :]
                rmask = mk[:, None] & mj[None, :]
                ri = _mm(ri, hk, tl.load(r_ptr, mask=rmask, other=0.0), IEEE)
                rf = _mm(rf, hk, tl.load(r_ptr + RG, mask=rmask, other=0.0), IEEE)
                rz = _mm(rz, hk, tl.load(r_ptr + 2 * RG, mask=rmask, other=0.0), IEEE)
                ro = _mm(ro, hk, tl.load(r_ptr + 3 * RG, mask=rmask, other=0.0), IEEE)
            if STORE_RAW:
                tl.store(RAW + x_off, ri, mask=mask)
                tl.store(RAW + x_off + HD, rf, mask=mask)
                tl.store(RAW + x_off + 2 * HD, rz, mask=mask)
                tl.store(RAW + x_off + 3 * HD, ro, mask=mask)
            # the stabilized step; n == 0 marks an empty state (m_t = raw_i, f' = 0)
            m_prev = tl.where(n == 0.0, float("-inf"), m)
            a = _log_forget(rf, EXP_FORGET) + m_prev
            m_new = tl.maximum(ri, a)
            ig = tl.exp(ri - m_new)
            fg = tl.exp(a - m_new)
            c_new = fg * c + ig * _tanh(rz)
            n_new = fg * n + ig
            h_new = tl.sigmoid(ro) * c_new / n_new
            st_off = offs_b[:, None] * (SLOTS * HD) + (t % SLOTS) * HD + h * DH + offs_j[None, :]
            tl.store(C + st_off, c_new, mask=mask)
            tl.store(N + st_off, n_new, mask=mask)
            tl.store(M + st_off, m_new, mask=mask)
            tl.store(H + offs_b[:, None] * (S * HD) + t * HD + h * DH + offs_j[None, :], h_new, mask=mask)
        if USE_BARRIER:
            _head_barrier(CNT + h * NBP + pid_b, (t - t_start + 1) * NJ)


@triton.jit
def slstm_bw_kernel(
    RAW, R, C0, N0, M0, C, N, M, GH, DC, DN, DM, DRAW, CNT,
    Bsz, S, NH, DH, NBP, t_start, t_end,
    EXP_FORGET: tl.constexpr, USE_BARRIER: tl.constexpr, IEEE: tl.constexpr,
    BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
):
    """Reverse loop over t in [t_start, t_end). RAW (B, S, 4, NH, DH) f32; R (4, NH, DH, DH) in the dot dtype;
    C/N/M (B, S, NH, DH) f32 states after each step; GH (B, S, NH, DH) f32 = dL/dh; DC/DN/DM (B, NH, DH) f32
    carried state gradients (in: of the state after t_end - 1, out: of the state before t_start);
    DRAW (B, S, 4, NH, DH) f32 = dL/draw."""
    NJ = tl.cdiv(DH, BJ)
    pid = tl.program_id(0)
    h = pid // NJ
    offs_j = (pid % NJ) * BJ + tl.arange(0, BJ)
    mj = offs_j < DH
    pid_b = tl.program_id(1)
    NB = tl.cdiv(Bsz, BB)
    HD = NH * DH
    GHD = 4 * HD
    RG = NH * DH * DH
    for tt in range(t_start, t_end):
        t = t_end - 1 - (tt - t_start)
        for bblk in range(pid_b, NB, NBP):
            offs_b = bblk * BB + tl.arange(0, BB)
            mb = offs_b < Bsz
            mask = mb[:, None] & mj[None, :]
            s_off = offs_b[:, None] * HD + h * DH + offs_j[None, :]
            dh = tl.load(GH + offs_b[:, None] * (S * HD) + t * HD + h * DH + offs_j[None, :], mask=mask, other=0.0)
            if t < S - 1:
                for g in tl.static_range(4):
                    for k0 in range(0, DH, BK):
                        offs_k = k0 + tl.arange(0, BK)
                        mk = offs_k < DH
                        d = tl.load(DRAW + offs_b[:, None] * (S * GHD) + (t + 1) * GHD + g * HD + h * DH + offs_k[None, :],
                                    mask=mb[:, None] & mk[None, :], other=0.0, cache_modifier=".cg")
                        r = tl.load(R + g * RG + h * DH * DH + offs_k[:, None] * DH + offs_j[None, :],
                                    mask=mk[:, None] & mj[None, :], other=0.0)
                        dh = _mm(dh, d.to(R.dtype.element_ty), r, IEEE)
            dc = tl.load(DC + s_off, mask=mask, other=0.0)
            dn = tl.load(DN + s_off, mask=mask, other=0.0)
            dm = tl.load(DM + s_off, mask=mask, other=0.0)
            if t == 0:
                c_prev = tl.load(C0 + s_off, mask=mask, other=0.0)
                n_prev = tl.load(N0 + s_off, mask=mask, other=0.0)
                m_prev = tl.load(M0 + s_off, mask=mask, other=0.0)
            else:
                p_off = offs_b[:, None] * (S * HD) + (t - 1) * HD + h * DH + offs_j[None, :]
                c_prev = tl.load(C + p_off, mask=mask, other=0.0)
                n_prev = tl.load(N + p_off, mask=mask, other=0.0)
                m_prev = tl.load(M + p_off, mask=mask, other=0.0)
            c_off = offs_b[:, None] * (S * HD) + t * HD + h * DH + offs_j[None, :]
            c_t = tl.load(C + c_off, mask=mask, other=0.0)
            n_t = tl.load(N + c_off, mask=mask, other=1.0)
            x_off = offs_b[:, None] * (S * GHD) + t * GHD + h * DH + offs_j[None, :]
            ri = tl.load(RAW + x_off, mask=mask, other=0.0)
            rf = tl.load(RAW + x_off + HD, mask=mask, other=0.0)
            rz = tl.load(RAW + x_off + 2 * HD, mask=mask, other=0.0)
            ro = tl.load(RAW + x_off + 3 * HD, mask=mask, other=0.0)
            # recompute the step
            m_eff = tl.where(n_prev == 0.0, float("-inf"), m_prev)
            a = _log_forget(rf, EXP_FORGET) + m_eff
            m_t = tl.maximum(ri, a)
            ig = tl.exp(ri - m_t)
            fg = tl.exp(a - m_t)
            zt = _tanh(rz)
            ot = tl.sigmoid(ro)
            q = c_t / n_t
            # its gradient
            d_ro = dh * q * ot * (1.0 - ot)
            dc = dc + dh * ot / n_t
            dn = dn - dh * ot * q / n_t
            d_rz = dc * ig * (1.0 - zt * zt)
            gi = (dc * zt + dn) * ig
            gf = (dc * c_prev + dn * n_prev) * fg
            dmt = dm - gi - gf
            i_wins = ri >= a
            d_ri = gi + tl.where(i_wins, dmt, 0.0)
            da = gf + tl.where(i_wins, 0.0, dmt)
            if EXP_FORGET:
                d_rf = da
            else:
                d_rf = da * tl.sigmoid(-rf)
            tl.store(DRAW + x_off, d_ri, mask=mask)
            tl.store(DRAW + x_off + HD, d_rf, mask=mask)
            tl.store(DRAW + x_off + 2 * HD, d_rz, mask=mask)
            tl.store(DRAW + x_off + 3 * HD, d_ro, mask=mask)
            tl.store(DC + s_off, dc * fg, mask=mask)
            tl.store(DN + s_off, dn * fg, mask=mask)
            tl.store(DM + s_off, da, mask=mask)
        if USE_BARRIER:
            _head_barrier(CNT + h * NBP + pid_b, (tt - t_start + 1) * NJ)
