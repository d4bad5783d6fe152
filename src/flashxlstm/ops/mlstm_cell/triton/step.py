"""The fused mLSTM decode step: one launch per layer per token.

    h, (C', n', m') = mlstm_step_triton(q, k, v, i, f, (C, n, m), eps=1e-6, input_gate="exp", out=None,
                                        gate_soft_cap=None)

q, k (B, NH, DQK); v (B, NH, DV); i, f (B, NH); state fp32 (B, NH, DQK, DV), (B, NH, DQK), (B, NH).
Each program owns one (batch, head, DV block) of the state: it streams C[:, block] through
registers once (read, update, write) and forms h for that block, so the state moves through memory
exactly once each way. The input state is never written.

q, k, v may be views into one projection output (B, 2 DQK + 2 DV per row, as the xLSTM-7B layer's fused
q/k/v/o matmul gives them) and i, f views into the gate projection (B, 2 NH) in any float dtype: only
each head's vector must be contiguous, with heads next to each other; nothing is copied then.
`gate_soft_cap=c` applies c * tanh(x / c) to i and f inside the kernel (the xLSTM-7B gate soft cap).

CUDA graphs: pass `out=(h, C', n', m')`, preallocated buffers that must not overlap the input state
(every program reads all of n while block 0 writes n'). The kernel then allocates nothing and
launches once, so a decode step can be captured. Keep two static state sets A and B and capture two
graphs, A -> B and B -> A, replayed alternately (no copies); or capture one graph A -> B followed by
A.copy_(B) (one extra pass over the state).

Block sizes: below 128 (batch, head) pairs the DV axis is split in 32-wide blocks so that there are
enough programs to fill the GPU; above it 128-wide blocks (fewer, longer programs). On CUDA the first
call for a shape times a few such layouts and keeps the fastest (outside CUDA-graph capture).

Under torch.compile the launch is the custom op flashxlstm::mlstm_step_triton (it writes the output buffers),
so a compiled decode step has no graph break.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...custom_ops import LIB
from ...triton_support import FirstCallTuner, next_pow2
from .common import finite_or_zero, logsigmoid


@triton.jit
def soft_capped(x, cap, SOFT_CAP: tl.constexpr):
    """cap * tanh(x / cap) in float32 (tanh through exp of a non-positive argument: no overflow)."""
    if SOFT_CAP:
        y = x / cap
        t = tl.exp(-2.0 * tl.abs(y))
        th = (1.0 - t) / (1.0 + t)
        x = cap * tl.where(y < 0, -th, th)
    return x


@triton.jit
def gate_values(i, f, m_old, EXP_GATE: tl.constexpr):
    """Soft-capped gate pre-activations and the old stabilizer -> (forget factor, input factor, m_new, ms)."""
    if EXP_GATE:
        li = i
    else:
        li = logsigmoid(i)
    lf = logsigmoid(f)
    m_new = tl.maximum(lf + m_old, li)
    ms = finite_or_zero(m_new)
    return tl.exp(lf + m_old - ms), tl.exp(li - ms), m_new, ms


@triton.jit
def step_block(qp, kp, vp, C, n, Cn, nn, p, vb, fgate, igate, ms, scale, eps,
               DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKT: tl.constexpr):
    """State update of head p for value columns [vb * BV, (vb + 1) * BV): writes C' (and n' from block 0),
    returns h of those columns in float32. qp, kp, vp point at the head's q, k, v vectors."""
    ok = tl.arange(0, BK)
    mk = ok < DQK
    ov = vb * BV + tl.arange(0, BV)
    mv = ov < DV
    bq = tl.load(qp + ok, mask=mk, other=0.0).to(tl.float32)
    bk = tl.load(kp + ok, mask=mk, other=0.0).to(tl.float32)
    n_new = tl.load(n + p * DQK + ok, mask=mk, other=0.0) * fgate + igate * bk
    den = tl.sum(bq * n_new, 0) * scale
    bv = tl.load(vp + ov, mask=mv, other=0.0).to(tl.float32) * igate

    num = tl.zeros([BV], dtype=tl.float32)
    for k0 in tl.static_range(0, BK, BKT):
        okt = k0 + tl.arange(0, BKT)
        mkt = okt < DQK
        off = p * DQK * DV + okt[:, None] * DV + ov[None, :]
        msk = mkt[:, None] & mv[None, :]
        Ct = tl.load(C + off, mask=msk, other=0.0)
        kt = tl.load(kp + okt, mask=mkt, other=0.0).to(tl.float32)
        qt = tl.load(qp + okt, mask=mkt, other=0.0).to(tl.float32)
        Ct = Ct * fgate + kt[:, None] * bv[None, :]
        tl.store(Cn + off, Ct, mask=msk)
        num += tl.sum(qt[:, None] * Ct, 0)
    if vb == 0:
        tl.store(nn + p * DQK + ok, n_new, mask=mk)
    z = tl.maximum(tl.abs(den), tl.exp(-ms)) + eps
    return num * scale / z


@triton.jit
def mlstm_step_kernel(
    q, k, v, ig, fg, C, n, m, h, Cn, nn, mn, scale, eps, cap,
    sqb, skb, svb, sib, sfb, NH,
    DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKT: tl.constexpr,
    EXP_GATE: tl.constexpr, SOFT_CAP: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)  # b * NH + head
    vb = tl.program_id(1)
    b = p // NH
    hd = p % NH
    i = soft_capped(tl.load(ig + b * sib + hd).to(tl.float32), cap, SOFT_CAP)
    f = soft_capped(tl.load(fg + b * sfb + hd).to(tl.float32), cap, SOFT_CAP)
    fgate, igate, m_new, ms = gate_values(i, f, tl.load(m + p), EXP_GATE)
    hb = step_block(q + b * sqb + hd * DQK, k + b * skb + hd * DQK, v + b * svb + hd * DV, C, n, Cn, nn, p, vb,
                    fgate, igate, ms, scale, eps, DQK, DV, BK, BV, BKT)
    ov = vb * BV + tl.arange(0, BV)
    tl.store(h + p * DV + ov, hb.to(h.dtype.element_ty), mask=ov < DV)
    if vb == 0:
        tl.store(mn + p, m_new)


def _overlaps(a: Tensor, b: Tensor) -> bool:
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def _heads_view(t: Tensor) -> Tensor:
    """t (B, NH, D) as is when each head's vector is contiguous and heads are adjacent, else a copy."""
    return t if t.stride(2) == 1 and t.stride(1) == t.shape[2] else t.contiguous()


def _gate_view(t: Tensor) -> Tensor:
    if not t.is_floating_point():
        t = t.float()
    return t if t.stride(1) == 1 else t.contiguous()


# (B * NH, DQK, DV, h dtype, gate, soft cap) -> (BV, BKT, num_warps), the fastest measured on first use (CUDA)
TUNER = FirstCallTuner("FLASHXLSTM_STEP_TUNE")


def _default_layout(BNH: int, DQK: int, DV: int) -> tuple[int, int, int]:
    BK = next_pow2(DQK)
    return min(128 if BNH >= 128 else 32, next_pow2(DV)), min(BK, 32), 4


def _candidate_layouts(BNH: int, DQK: int, DV: int) -> list[tuple[int, int, int]]:
    BK, BVmax = next_pow2(DQK), next_pow2(DV)
    cands = [_default_layout(BNH, DQK, DV), (32, 32, 4), (64, 32, 4), (128, 32, 4), (128, 16, 4), (64, 64, 8),
             (128, 32, 8), (256, 16, 8)]
    out = []
    for bv, bkt, w in cands:
        c = (min(bv, BVmax), min(bkt, BK), w)
        if c not in out:
            out.append(c)
    return out


def _launch(layout, args, B, NH, DQK, DV, input_gate, soft_cap):
    BV, BKT, warps = layout
    mlstm_step_kernel[(B * NH, triton.cdiv(DV, BV))](
        *args, DQK=DQK, DV=DV, BK=next_pow2(DQK), BV=BV, BKT=BKT, EXP_GATE=input_gate == "exp",
        SOFT_CAP=soft_cap, num_warps=warps,
    )


def _step(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, C: Tensor, n: Tensor, m: Tensor, h: Tensor,
          Cn: Tensor, nn_: Tensor, mn: Tensor, eps: float, input_gate: str, gate_soft_cap: float | None) -> None:
    """One launch writing h, C', n', m' (see the module docstring)."""
    B, NH, DQK = q.shape
    DV = v.shape[-1]
    soft_cap = gate_soft_cap is not None
    args = (q, k, v, i, f, C, n, m, h, Cn, nn_, mn, DQK**-0.5, float(eps), float(gate_soft_cap or 1.0),
            q.stride(0), k.stride(0), v.stride(0), i.stride(0), f.stride(0), NH)
    key = (B * NH, DQK, DV, h.dtype, input_gate, soft_cap)
    layout = TUNER.choose(key, v.device, _default_layout(B * NH, DQK, DV), _candidate_layouts(B * NH, DQK, DV),
                          lambda lay: _launch(lay, args, B, NH, DQK, DV, input_gate, soft_cap))
    _launch(layout, args, B, NH, DQK, DV, input_gate, soft_cap)


# The launch as a torch custom op writing into the output buffers: what torch.compile records (one call, no
# graph break). Eager calls launch directly: a decode step is one small launch per layer, where the
# dispatcher's per-call cost would show.
_step_op = torch.library.custom_op(f"{LIB}::mlstm_step_triton", _step, mutates_args=("h", "Cn", "nn_", "mn"))


def mlstm_step_triton(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state, *, eps: float = 1e-6,
    input_gate: str = "exp", out: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    gate_soft_cap: float | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The registered `triton` step backend (see the module docstring)."""
    B, NH, DQK = q.shape
    DV = v.shape[-1]
    C, n, m = state
    if C.dtype != torch.float32:
        C, n, m = C.float(), n.float(), m.float()
    q, k, v = _heads_view(q), _heads_view(k), _heads_view(v)
    i, f = _gate_view(i), _gate_view(f)
    C, n, m = C.contiguous(), n.contiguous(), m.contiguous()
    if out is None:
        out = (torch.empty(B, NH, DV, dtype=v.dtype, device=v.device), torch.empty_like(C),
               torch.empty_like(n), torch.empty_like(m))
    else:
        want = [((B, NH, DV), v.dtype), (tuple(C.shape), torch.float32), (tuple(n.shape), torch.float32),
                (tuple(m.shape), torch.float32)]
        for name, t, (shape, dt) in zip(("h", "C", "n", "m"), out, want):
            if tuple(t.shape) != shape or t.dtype != dt or not t.is_contiguous():
                raise ValueError(f"mlstm_step(triton): out {name} must be a contiguous {dt} tensor of shape {shape}, "
                                 f"got {t.dtype} {tuple(t.shape)}")
        # traced tensors have no addresses; the compiled graph's functionalized buffers never overlap anyway
        if not torch.compiler.is_compiling() and any(_overlaps(o, s) for o in out[1:] for s in (C, n, m)):
            raise ValueError("mlstm_step(triton): out buffers must not overlap the input state")
    h, Cn, nn_, mn = out
    step = _step_op if torch.compiler.is_compiling() else _step
    step(q, k, v, i, f, C, n, m, h, Cn, nn_, mn, float(eps), input_gate, gate_soft_cap)
    return h, (Cn, nn_, mn)
