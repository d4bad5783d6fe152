"""The gate epilogue of the chunk-parallel backward as one Triton launch.

The same computation as gates.gate_grads in its direct form (see there for the math), for tensors laid
out (B, NH, S) with one sequence per row, or (1, NH, S) holding the documents of cu_seqlens: one program
per sequence (row, or document of one head) walks its steps twice in blocks of BLOCK.
Pass 1 finds the step s* that attains the final stabilizer M = F_e + max_s (li_s - F_s) (the last one
on ties) and the row's total log forget F_e, in float64; pass 2 writes

    df_r = (dlogf_r + [M live] dM - [step wins, r <= s*] dM) * sigmoid(-f_r)
    di_r = (dli_r + [step wins, r = s*] dM) * (1, or sigmoid(-i_r) for the sigmoid input gate)

with dM = dm - <dC, C> - <dn, n> of the returned state, and the initial stabilizer's share
[initial state wins] dM per row. It replaces about forty small torch operations (and their host time)
of the torch form, which stays as the reference the tests compare with.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import RESET


@triton.jit
def _logsigmoid64(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def mlstm_gate_rows_kernel(ig, fg, m0, dli, dlogf, dfinal, dmf, di, df, dm0r, cu, S,
                           BLOCK: tl.constexpr, EXP_GATE: tl.constexpr, NH: tl.constexpr, IS_VARLEN: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # the sequence: b * NH + h, or d * NH + h for document d of cu_seqlens
    if IS_VARLEN:
        bos = tl.load(cu + row // NH).to(tl.int64)
        base = (row % NH) * S + bos
        S = (tl.load(cu + row // NH + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        base = row * S
    offs = tl.arange(0, BLOCK)

    # pass 1: F (cumulative log forget) and the last step maximizing li_s - F_s
    F_run = tl.sum(tl.zeros([BLOCK], dtype=tl.float64), 0)  # a float64 scalar carried through the loop
    best = F_run - float("inf")
    best_at = F_run.to(tl.int64) - 1
    any_reset = F_run != F_run  # False
    for s0 in range(0, S, BLOCK):
        t = s0 + offs
        mask = t < S
        lf = _logsigmoid64(tl.load(fg + base + t, mask=mask, other=float("inf")).to(tl.float64))  # 0 past S
        # a reset (log f <= RESET, as in the chunk kernels: common.forget_sums) erases every earlier step and
        # the initial state: F sums the other gates and only steps after the last reset compete for the maximum
        reset = lf <= RESET
        lf = tl.where(reset, 0.0, lf)
        n_reset = tl.sum(reset.to(tl.int32), 0)
        after_last = tl.cumsum(reset.to(tl.int32), 0) == n_reset
        i = tl.load(ig + base + t, mask=mask, other=0.0).to(tl.float64)
        li = i if EXP_GATE else _logsigmoid64(i)
        li = tl.where(mask & after_last, li, float("-inf"))
        val = li - (F_run + tl.cumsum(lf, 0))
        bmax = tl.max(val, 0)
        barg = tl.max(tl.where(val == bmax, t, -1), 0)
        best = tl.where(n_reset > 0, float("-inf"), best)
        later = bmax >= best
        best_at = tl.where(later, barg, best_at)
        best = tl.where(later, bmax, best)
        F_run = F_run + tl.sum(lf, 0)
        any_reset = any_reset | (n_reset > 0)

    a_init = tl.where(any_reset, float("-inf"), F_run + tl.load(m0 + row).to(tl.float64))
    a_step = F_run + best
    M = tl.maximum(a_init, a_step)
    live = (M > float("-inf")) & (M < float("inf"))
    init_wins = live & (a_init >= a_step)
    step_wins = live & (a_init < a_step)
    dM = tl.load(dmf + row).to(tl.float64) - tl.load(dfinal + row)
    dM_live = tl.where(live, dM, 0.0)
    route = tl.where(step_wins, dM, 0.0)
    tl.store(dm0r + row, tl.where(init_wins, dM, 0.0).to(dm0r.dtype.element_ty))

    # pass 2: the per-step gradients
    for s0 in range(0, S, BLOCK):
        t = s0 + offs
        mask = t < S
        f = tl.load(fg + base + t, mask=mask, other=0.0).to(tl.float64)
        g = tl.load(dlogf + base + t, mask=mask, other=0.0).to(tl.float64)
        g = g + dM_live - tl.where(t <= best_at, route, 0.0)
        tl.store(df + base + t, (g / (1.0 + tl.exp(f))).to(df.dtype.element_ty), mask=mask)
        d = tl.load(dli + base + t, mask=mask, other=0.0).to(tl.float64) + tl.where(t == best_at, route, 0.0)
        if not EXP_GATE:
            i = tl.load(ig + base + t, mask=mask, other=0.0).to(tl.float64)
            d = d / (1.0 + tl.exp(i))
        tl.store(di + base + t, d.to(di.dtype.element_ty), mask=mask)


def gate_grads_rows(i: Tensor, f: Tensor, m0: Tensor, dli: Tensor, dlogf: Tensor, dfinal: Tensor, dmf: Tensor,
                    input_gate: str, cu_seqlens: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """i, f, dli, dlogf (B, NH, S) float32 contiguous; m0, dmf (N, NH) float32; dfinal (N, NH) float64, with
    N = B sequences, or with cu_seqlens (int32 on the device, B == 1) its N documents of every head.

    Returns di, df (B, NH, S) float32 and the routed part of dm0 (N, NH) float32.
    """
    B, NH, S = i.shape
    di, df = torch.empty_like(i), torch.empty_like(f)
    dm0r = torch.empty_like(m0)
    varlen = cu_seqlens is not None
    cu = cu_seqlens if varlen else dm0r  # unused without cu_seqlens
    mlstm_gate_rows_kernel[(m0.numel(),)](
        i, f, m0.contiguous(), dli, dlogf, dfinal.contiguous(), dmf.contiguous(), di, df, dm0r, cu, S,
        BLOCK=min(1024, triton.next_power_of_2(max(S, 16))), EXP_GATE=input_gate == "exp", NH=NH,
        IS_VARLEN=varlen, num_warps=4)
    return di, df, dm0r
