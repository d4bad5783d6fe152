"""The fused mLSTM decode step: one launch per layer per token.

    h, (C', n', m') = mlstm_step_triton(q, k, v, i, f, (C, n, m), eps=1e-6, input_gate="exp", out=None)

q, k (B, NH, DQK); v (B, NH, DV); i, f (B, NH); state fp32 (B, NH, DQK, DV), (B, NH, DQK), (B, NH).
Each program owns one (batch, head, DV block) of the state: it streams C[:, block] through
registers once (read, update, write) and forms h for that block, so the state moves through memory
exactly once each way. The input state is never written.

CUDA graphs: pass `out=(h, C', n', m')`, preallocated buffers that must not overlap the input state
(every program reads all of n while block 0 writes n'). The kernel then allocates nothing and
launches once, so a decode step can be captured. Keep two static state sets A and B and capture two
graphs, A -> B and B -> A, replayed alternately (no copies); or capture one graph A -> B followed by
A.copy_(B) (one extra pass over the state).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import finite_or_zero, logsigmoid, next_pow2


@triton.jit
def mlstm_step_kernel(
    q, k, v, ig, fg, C, n, m, h, Cn, nn, mn, scale, eps,
    DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKT: tl.constexpr,
    EXP_GATE: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    vb = tl.program_id(1)
    ok = tl.arange(0, BK)
    mk = ok < DQK
    ov = vb * BV + tl.arange(0, BV)
    mv = ov < DV

    i = tl.load(ig + p).to(tl.float32)
    f = tl.load(fg + p).to(tl.float32)
    m_old = tl.load(m + p)
    if EXP_GATE:
        li = i
    else:
        li = logsigmoid(i)
    lf = logsigmoid(f)
    m_new = tl.maximum(lf + m_old, li)
    ms = finite_or_zero(m_new)
    fgate = tl.exp(lf + m_old - ms)
    igate = tl.exp(li - ms)

    bq = tl.load(q + p * DQK + ok, mask=mk, other=0.0).to(tl.float32)
    bk = tl.load(k + p * DQK + ok, mask=mk, other=0.0).to(tl.float32)
    n_new = tl.load(n + p * DQK + ok, mask=mk, other=0.0) * fgate + igate * bk
    den = tl.sum(bq * n_new, 0) * scale
    bv = tl.load(v + p * DV + ov, mask=mv, other=0.0).to(tl.float32) * igate

    num = tl.zeros([BV], dtype=tl.float32)
    for k0 in tl.static_range(0, BK, BKT):
        okt = k0 + tl.arange(0, BKT)
        mkt = okt < DQK
        off = p * DQK * DV + okt[:, None] * DV + ov[None, :]
        msk = mkt[:, None] & mv[None, :]
        Ct = tl.load(C + off, mask=msk, other=0.0)
        kt = tl.load(k + p * DQK + okt, mask=mkt, other=0.0).to(tl.float32)
        qt = tl.load(q + p * DQK + okt, mask=mkt, other=0.0).to(tl.float32)
        Ct = Ct * fgate + kt[:, None] * bv[None, :]
        tl.store(Cn + off, Ct, mask=msk)
        num += tl.sum(qt[:, None] * Ct, 0)

    z = tl.maximum(tl.abs(den), tl.exp(-ms)) + eps
    tl.store(h + p * DV + ov, (num * scale / z).to(h.dtype.element_ty), mask=mv)
    if vb == 0:
        tl.store(nn + p * DQK + ok, n_new, mask=mk)
        tl.store(mn + p, m_new)


def _overlaps(a: Tensor, b: Tensor) -> bool:
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def mlstm_step_triton(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state, *, eps: float = 1e-6,
    input_gate: str = "exp", out: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The registered `triton` step backend (see the module docstring)."""
    B, NH, DQK = q.shape
    DV = v.shape[-1]
    C, n, m = state
    if C.dtype != torch.float32:
        C, n, m = C.float(), n.float(), m.float()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    i, f = i.float().contiguous(), f.float().contiguous()
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
        if any(_overlaps(o, s) for o in out[1:] for s in (C, n, m)):
            raise ValueError("mlstm_step(triton): out buffers must not overlap the input state")
    h, Cn, nn_, mn = out
    BK = next_pow2(DQK)
    BV = min(128 if B * NH >= 128 else 32, next_pow2(DV))
    mlstm_step_kernel[(B * NH, triton.cdiv(DV, BV))](
        q, k, v, i, f, C, n, m, h, Cn, nn_, mn, DQK**-0.5, float(eps),
        DQK=DQK, DV=DV, BK=BK, BV=BV, BKT=min(BK, 32), EXP_GATE=input_gate == "exp", num_warps=4,
    )
    return h, (Cn, nn_, mn)
