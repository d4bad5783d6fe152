"""The xLSTM-7B mLSTM layer's work between its matmuls, for one token, in one or two launches.

    y, (C', n', m') = mlstm_layer_step_triton(x, q, k, v, o, w_i, w_f, b_i, b_f, (C, n, m), norm_weight,
                                              norm_bias, gate_soft_cap=15.0, eps=1e-6, norm_eps=1e-6,
                                              out=None, layout=None)

x (B, D) is the normed block input, q, k (B, NH, DQK), v (B, NH, DV) and o (B, NH * DV) the projections
(views into one matmul output are read in place), w_i, w_f (NH, D) and b_i, b_f (NH,) the gate projections.
The kernel computes the gate pre-activations i = x w_i^T + b_i, f = x w_f^T + b_f itself (rounded to x's
dtype, as a Linear would), soft-caps them, runs the mLSTM step (ops/mlstm_cell/triton/step.py's `step_block`)
and returns y = sigmoid(o) * MultiHeadLayerNorm(h), (B, NH * DV) in v's dtype: the input of out_proj.
The state is float32, never written in place; `out=(C', n', m')` gives preallocated buffers (CUDA graphs).

Layouts (BV, BKT, num_warps, whole):
- split: programs (batch, head, BV value columns), h written, then one head_norm_gate launch (kernels.py):
  many programs, for small batches;
- whole head: one program per (batch, head) streams the head's whole state in BKT-row tiles and applies the
  per-head norm and the sigmoid(o) product in registers: one launch, for large batches.
On CUDA the first call per shape times the candidates and keeps the fastest (outside graph capture,
triton_support.FirstCallTuner); `layout=` forces one.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..mlstm_cell.triton.step import _overlaps, gate_values, soft_capped, step_block
from ..triton_support import FirstCallTuner, next_pow2
from .kernels import head_norm_gate_triton, norm_gate_row

Layout = tuple  # (BV, BKT, num_warps, whole)
TUNER = FirstCallTuner("FLASHXLSTM_STEP_TUNE")  # (B * NH, DQK, DV, D, dtype) -> Layout


@triton.jit
def mlstm_layer_step_kernel(
    x, wi, wf, bi, bf, q, k, v, o, C, n, m, h, y, Cn, nn, mn, nw, nb,
    scale, eps, cap, norm_eps, D, sxb, sqb, skb, svb, sob, NH,
    DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKT: tl.constexpr,
    BD: tl.constexpr, SOFT_CAP: tl.constexpr, HAS_NB: tl.constexpr, WHOLE: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)  # b * NH + head
    vb = tl.program_id(1)
    b = p // NH
    hd = p % NH
    # gate pre-activations: two dot products over D, rounded to the activation dtype like a Linear output
    od = tl.arange(0, BD)
    acc_i = tl.zeros([BD], dtype=tl.float32)
    acc_f = tl.zeros([BD], dtype=tl.float32)
    for d0 in range(0, D, BD):
        md = d0 + od < D
        xd = tl.load(x + b * sxb + d0 + od, mask=md, other=0.0).to(tl.float32)
        acc_i += xd * tl.load(wi + hd * D + d0 + od, mask=md, other=0.0).to(tl.float32)
        acc_f += xd * tl.load(wf + hd * D + d0 + od, mask=md, other=0.0).to(tl.float32)
    xt = x.dtype.element_ty
    i = (tl.sum(acc_i, 0) + tl.load(bi + hd).to(tl.float32)).to(xt).to(tl.float32)
    f = (tl.sum(acc_f, 0) + tl.load(bf + hd).to(tl.float32)).to(xt).to(tl.float32)
    i = soft_capped(i, cap, SOFT_CAP)
    f = soft_capped(f, cap, SOFT_CAP)
    fgate, igate, m_new, ms = gate_values(i, f, tl.load(m + p), True)
    hb = step_block(q + b * sqb + hd * DQK, k + b * skb + hd * DQK, v + b * svb + hd * DV, C, n, Cn, nn, p, vb,
                    fgate, igate, ms, scale, eps, DQK, DV, BK, BV, BKT)
    ov = vb * BV + tl.arange(0, BV)
    mv = ov < DV
    dt = h.dtype.element_ty
    hv = hb.to(dt)  # h is rounded to the activation dtype before the norm, as in the unfused layer
    if WHOLE:  # one program holds the whole head (vb == 0, BV >= DV): norm and gate in registers
        og = tl.load(o + b * sob + hd * DV + ov, mask=mv, other=0.0).to(tl.float32)
        yv = norm_gate_row(hv.to(tl.float32), mv, DV, nw + hd * DV, nb + hd * DV, og, norm_eps, dt, BV, HAS_NB)
        tl.store(y + p * DV + ov, yv, mask=mv)
    else:
        tl.store(h + p * DV + ov, hv, mask=mv)
    if vb == 0:
        tl.store(mn + p, m_new)


def _rows_view(t: Tensor, what: str, shape: tuple) -> Tensor:
    if tuple(t.shape) != shape:
        raise ValueError(f"mlstm_layer_step: {what} must have shape {shape}, got {tuple(t.shape)}")
    return t if t.stride(-1) == 1 and (t.dim() == 1 or t.stride(0) == t.shape[-1]) else t.contiguous()


def _heads(t: Tensor) -> Tensor:
    return t if t.stride(2) == 1 and t.stride(1) == t.shape[2] else t.contiguous()


def default_layout(BNH: int, DQK: int, DV: int) -> Layout:
    return (min(128 if BNH >= 128 else 32, next_pow2(DV)), min(next_pow2(DQK), 32), 4, False)


def candidate_layouts(BNH: int, DQK: int, DV: int, sms: int = 132) -> list[Layout]:
    """Split layouts always; whole-head ones only with at least one program per two multiprocessors (`sms`):
    fewer cannot stream the state at bandwidth (at batch 1, 8 programs: measured 31 us per layer against
    a split layout's few us, yet per-call timing, dominated by launch gaps, can rank it first)."""
    BK, W = next_pow2(DQK), next_pow2(DV)
    cands = [default_layout(BNH, DQK, DV), (16, 32, 4, False), (32, 32, 4, False), (64, 32, 4, False),
             (128, 32, 4, False)]
    if 2 * BNH >= sms:
        cands += [(W, 8, 4, True), (W, 8, 8, True), (W, 16, 8, True)]
    out = []
    for bv, bkt, warps, whole in cands:
        c = (W if whole else min(bv, W), min(bkt, BK), warps, whole)
        if c not in out:
            out.append(c)
    return out


def mlstm_layer_step_triton(
    x: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, w_i: Tensor, w_f: Tensor, b_i: Tensor, b_f: Tensor,
    state, norm_weight: Tensor, norm_bias: Tensor | None = None, *, gate_soft_cap: float | None = 15.0,
    eps: float = 1e-6, norm_eps: float = 1e-6, out: tuple[Tensor, Tensor, Tensor] | None = None,
    layout: Layout | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """See the module docstring."""
    B, NH, DQK = q.shape
    DV = v.shape[-1]
    D = x.shape[-1]
    x = _rows_view(x, "x", (B, D))
    w_i, w_f = _rows_view(w_i, "w_i", (NH, D)), _rows_view(w_f, "w_f", (NH, D))
    b_i, b_f = _rows_view(b_i, "b_i", (NH,)), _rows_view(b_f, "b_f", (NH,))
    o = o if o.stride(-1) == 1 else o.contiguous()
    q, k, v = _heads(q), _heads(k), _heads(v)
    C, n, m = (t.float().contiguous() for t in state)
    if out is None:
        out = (torch.empty_like(C), torch.empty_like(n), torch.empty_like(m))
    else:
        for name, t, ref in zip(("C", "n", "m"), out, (C, n, m)):
            if t.shape != ref.shape or t.dtype != torch.float32 or not t.is_contiguous():
                raise ValueError(f"mlstm_layer_step: out {name} must be a contiguous float32 tensor of shape "
                                 f"{tuple(ref.shape)}, got {t.dtype} {tuple(t.shape)}")
        if any(_overlaps(a, s) for a in out for s in (C, n, m)):
            raise ValueError("mlstm_layer_step: out buffers must not overlap the input state")
    Cn, nn_, mn = out
    h = torch.empty(B, NH, DV, dtype=v.dtype, device=v.device)
    y = torch.empty(B, NH * DV, dtype=v.dtype, device=v.device)

    def launch(lay: Layout) -> Tensor:
        BV, BKT, warps, whole = lay
        BV = next_pow2(DV) if whole else BV  # a whole-head program covers every value column
        mlstm_layer_step_kernel[(B * NH, 1 if whole else triton.cdiv(DV, BV))](
            x, w_i, w_f, b_i, b_f, q, k, v, o, C, n, m, h, y, Cn, nn_, mn, norm_weight,
            norm_weight if norm_bias is None else norm_bias,
            DQK**-0.5, float(eps), float(gate_soft_cap or 1.0), float(norm_eps), D,
            x.stride(0), q.stride(0), k.stride(0), v.stride(0), o.stride(0), NH,
            DQK=DQK, DV=DV, BK=next_pow2(DQK), BV=BV, BKT=BKT, BD=min(1024, next_pow2(D)),
            SOFT_CAP=gate_soft_cap is not None, HAS_NB=norm_bias is not None, WHOLE=whole, num_warps=warps,
        )
        return y if whole else head_norm_gate_triton(h, o, norm_weight, norm_bias, norm_eps)

    if layout is None:
        def candidates():
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 132
            return candidate_layouts(B * NH, DQK, DV, sms=sms)
        layout = TUNER.choose((B * NH, DQK, DV, D, v.dtype), x.device, default_layout(B * NH, DQK, DV), candidates,
                              launch)
    lay = layout
    return launch(lay), (Cn, nn_, mn)
