"""The fast loop form of the sLSTM op: a fused forward loop and a hand-written backward (BPTT).

It runs the recurrence in an equivalent normalized form that needs no explicit stabilizer:

    u_t = log f_t + L_{t-1} - raw_i          L = log of the unstabilized normalizer (n * exp(m))
    w_t = sigmoid(u_t)                       the share of the old state in the new one
    L_t = logaddexp(raw_i, log f_t + L_{t-1})   (= raw_i + softplus(u_t), finite also for raw_i = -inf)
    c^_t = tanh(raw_z) + w_t (c^_{t-1} - tanh(raw_z))     c^ = c / n, the normalized cell
    h_t = sigmoid(raw_o) * c^_t

This is algebraically the stabilized recurrence of docs/cells.md (f' / (f' n + i') = w), with no exp
that can overflow. Each step is one batched matmul (all heads) plus about ten pointwise ops that write into
preallocated buffers (per-step views are made once, before the loop): no autograd graph per step, no
allocation churn, no host sync. The backward loop reuses
the saved pre-activations: everything that does not depend on the carried gradients is computed for all
steps at once before the loop, so each backward step is again one matmul plus a few pointwise ops.
The official state (c, n, m) comes out as well: the loop also runs the official stabilizer
m_t = max(raw_i, log f + m_{t-1}) (two more ops per step), and n_S = exp(L_S - m_S), c_S = c^_S n_S.
The gradient of m_S follows the winning path: raw_i at the last step where it won, log f after it (or m_0
and every log f when no step won).

The loop is torch code, so the form also runs on CUDA (the "auto" backend there is the Triton kernel).
Forward and backward are torch custom ops (ops/custom_ops.py), so torch.compile(fullgraph=True) records the
loop as one call instead of tracing (and failing on) its preallocated buffers.

Values outside the math: an input gate of -inf skips the step (w = 1), as in the stabilized form. A
normalizer n < 0 (or NaN) in a user-given state has no log: the op raises a ValueError naming it (no
sequence of steps produces such a state; the recurrent form would carry it along arithmetically).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..custom_ops import LIB, link_backward
from .checks import SLSTMState, compute_dtype


# The loop as two custom ops. Forward: x (B, S, 4, NH, DH), R (4, NH, DH, DH), b (4, NH, DH), c^_0, L_0, h_0,
# m_0 (NH, B, DH) in the compute dtype (m_0 = -inf for an empty state) -> H (S, NH, B, DH), c^_S, L_S, m_S
# (NH, B, DH), then the residuals the backward reads. Internally the gates of one head sit side by side,
# (S, NH, B, 4*DH), so one batched matmul serves all heads, and the f slot holds -raw_f, so that
# log f = -softplus(slot) needs no negation per step.
_Out = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _documents(cu_seqlens: Tensor | None, S: int, B: int) -> tuple[list[int], list[int]]:
    """The steps where a state starts (from the initial state) and where one ends (a final state), in order.
    Read on the host: the loop is Python, and inside a custom op the traced graph never sees it."""
    if cu_seqlens is None:
        return [0], [S - 1]
    cu = cu_seqlens.tolist()
    return cu[:-1], [e - 1 for e in cu[1:]]


def _rows(t: Tensor, packed: bool) -> Tensor:
    """(NH, n, DH) initial or final states -> (starts, NH, B, DH), the loop's per-step layout."""
    return t.transpose(0, 1)[:, :, None] if packed else t[None]


def _unrows(t: Tensor, packed: bool) -> Tensor:
    return t[:, :, 0].transpose(0, 1) if packed else t[0]


@torch.library.custom_op(f"{LIB}::slstm_fused_loop", mutates_args=())
def _loop_forward(x: Tensor, R: Tensor, b: Tensor, c0: Tensor, L0: Tensor, h0: Tensor, m0: Tensor,
                  exp_forget: bool, cu_seqlens: Tensor | None) -> _Out:
    if bool(torch.isnan(L0).any()):
        raise ValueError("slstm (backend 'fused'): the state's normalizer n must be >= 0 and not NaN (it is a sum "
                         "of positive gate values; n == 0 marks an empty state), and m must not be NaN; got a state "
                         "with n < 0 or a NaN in n or m")
    B, S, _, NH, DH = x.shape
    dt = c0.dtype
    flip = torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=dt, device=x.device)
    xb = torch.empty(S, NH, B, 4, DH, dtype=dt, device=x.device)
    b_flip = (b.to(dt) * flip[:, None, None]).permute(1, 0, 2)[:, None]  # (NH, 1, 4, DH)
    torch.addcmul(b_flip, x.permute(1, 3, 0, 2, 4), flip[:, None], out=xb)  # (x + b) with -raw_f, one pass
    raw = xb.view(S, NH, B, 4 * DH)  # the matmul adds into it in place: it becomes the pre-activations
    Rt = (R.to(dt) * flip[:, None, None, None]).permute(1, 3, 0, 2).reshape(NH, DH, 4 * DH)
    H = xb.new_empty(S, NH, B, DH)
    C = xb.new_empty(S + 1, NH, B, DH)
    L = xb.new_empty(S + 1, NH, B, DH)
    M = xb.new_empty(S + 1, NH, B, DH)
    packed = cu_seqlens is not None
    starts, ends = _documents(cu_seqlens, S, B)
    init = {t: (c, l, m, h) for t, c, l, m, h in zip(starts, *(_rows(v, packed).unbind(0) for v in (c0, L0, m0, h0)))}
    RI, NF, RZ, RO = xb.unbind(3)
    SP = torch.empty_like(H)  # -log f per step (a copy of the f slot after the loop for the exponential gate)
    # per-step views made once (indexing in the loop would cost a dispatch each)
    raws, Hs, Cs, Ls, Ms = raw.unbind(0), H.unbind(0), C.unbind(0), L.unbind(0), M.unbind(0)
    SPs = NF.unbind(0) if exp_forget else SP.unbind(0)
    RIs, NFs, RZs, ROs = RI.unbind(0), NF.unbind(0), RZ.unbind(0), RO.unbind(0)
    u, w, zt, ot, a = (xb.new_empty(NH, B, DH) for _ in range(5))
    C[0].zero_(), L[0].zero_(), M[0].zero_()  # slot t + 1 holds the state after step t; slot 0 is not read
    for t in range(S):
        if t in init:  # a sequence or document starts: its initial state, not the carried one
            c_prev, l_prev, m_prev, h_prev = init[t]
        else:
            c_prev, l_prev, m_prev = Cs[t], Ls[t], Ms[t]
        raws[t].baddbmm_(h_prev, Rt)
        if not exp_forget:
            torch.ops.aten.softplus.out(NFs[t], 1, 20, out=SPs[t])
        torch.sub(l_prev, SPs[t], out=a)  # log f + L_{t-1}
        torch.sub(a, RIs[t], out=u)
        torch.sigmoid(u, out=w)
        torch.logaddexp(RIs[t], a, out=Ls[t + 1])
        torch.tanh(RZs[t], out=zt)
        torch.lerp(zt, c_prev, w, out=Cs[t + 1])
        torch.sigmoid(ROs[t], out=ot)
        h_prev = torch.mul(ot, Cs[t + 1], out=Hs[t])
        torch.maximum(RIs[t], torch.sub(m_prev, SPs[t], out=a), out=Ms[t + 1])  # the official stabilizer
    if exp_forget:
        SP.copy_(NF)
    last = torch.tensor(ends, device=x.device) + 1
    fin = [_unrows(v.index_select(0, last), packed).contiguous() for v in (C, L, M)]
    return H, fin[0], fin[1], fin[2], raw, SP, C, L, M, Rt


@_loop_forward.register_fake
def _(x, R, b, c0, L0, h0, m0, exp_forget, cu_seqlens):
    B, S, _, NH, DH = x.shape
    new = lambda *shape: c0.new_empty(shape)
    n = c0.shape[1]  # sequences, or documents when packed
    return (new(S, NH, B, DH), new(NH, n, DH), new(NH, n, DH), new(NH, n, DH), new(S, NH, B, 4 * DH),
            new(S, NH, B, DH), new(S + 1, NH, B, DH), new(S + 1, NH, B, DH), new(S + 1, NH, B, DH),
            new(NH, DH, 4 * DH))


_Grads = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op(f"{LIB}::slstm_fused_loop_backward", mutates_args=())
def _loop_backward(gH: Tensor, gC: Tensor, gL: Tensor, gm: Tensor, H: Tensor, cS: Tensor, LS: Tensor, mS: Tensor,
                   raw: Tensor, SP: Tensor, C: Tensor, L: Tensor, M: Tensor, Rt: Tensor, x: Tensor, R: Tensor,
                   b: Tensor, c0: Tensor, L0: Tensor, h0: Tensor, m0: Tensor, exp_forget: bool,
                   cu_seqlens: Tensor | None) -> _Grads:
    S, NH, B, G = raw.shape
    DH = G // 4
    r = raw.view(S, NH, B, 4, DH)
    ri, nf, rz, ro = r.unbind(3)
    packed = cu_seqlens is not None
    starts, ends = _documents(cu_seqlens, S, B)
    at = torch.tensor(starts, device=raw.device)
    # the state before each step: the carried one, or the initial one where a sequence or document starts
    C_prev, L_prev = (v[:-1].index_copy(0, at, _rows(v0, packed)) for v, v0 in ((C, c0), (L, L0)))
    # everything the carried gradients do not touch, for all steps at once
    w = torch.sigmoid(L_prev - ri - SP)
    zt, ot = torch.tanh(rz), torch.sigmoid(ro)
    P_o = C[1:] * ot * (1 - ot)  # d h / d raw_o per unit dh
    P_w = (C_prev - zt) * w * (1 - w)  # d c^ / d u
    P_z = (1 - w) * (1 - zt * zt)  # d c^ / d raw_z
    s_f = None if exp_forget else torch.sigmoid(nf)  # d(-log f) / d(-raw_f)

    draw = torch.zeros_like(raw)
    d = draw.view(S, NH, B, 4, DH)
    # each final m = raw_i at the last step s of its sequence or document where raw_i won, plus every log f
    # after s; when no step won, m_0 plus every log f
    steps = torch.arange(S, device=raw.device).view(S, 1, 1, 1)
    doc = torch.zeros(S, dtype=torch.long, device=raw.device).index_fill(0, at, 1).cumsum(0) - 1  # (S,)
    first = at.index_select(0, doc).view(S, 1, 1, 1)
    won_up_to = torch.where(M[1:] == ri, steps, first - 1).cummax(0).values  # first - 1: none won yet
    last_end = won_up_to.index_select(0, torch.tensor(ends, device=raw.device))  # (docs, NH, B, DH)
    last = last_end.index_select(0, doc)
    gm_rows = _rows(gm, packed)
    gm_t = gm_rows.index_select(0, doc)
    d_logf = gm_t * (steps > last)
    d[:, :, :, 0] += gm_t * (steps == last)
    d[:, :, :, 1] -= d_logf if s_f is None else d_logf * s_f
    dm0 = _unrows(torch.where(last_end == at.view(-1, 1, 1, 1) - 1, gm_rows, 0.0), packed)
    final = {e: j for j, e in enumerate(ends)}
    begin = {t: j for j, t in enumerate(starts)}
    gC_rows, gL_rows = _rows(gC, packed), _rows(gL, packed)
    dC0_rows, dL0_rows = torch.zeros_like(gC_rows), torch.zeros_like(gL_rows)
    dC, dL = gC_rows[0].clone(), gL_rows[0].clone()
    R2 = Rt.transpose(1, 2).contiguous()  # (NH, 4*DH, DH)
    dh, dc_t, du = (raw.new_empty(NH, B, DH) for _ in range(3))
    draws, gHs, ots, Pos, Pzs, Pws, ws = (v.unbind(0) for v in (draw, gH, ot, P_o, P_z, P_w, w))
    DI, DF, DZ, DO = (g.unbind(0) for g in d.unbind(3))
    sfs = None if s_f is None else s_f.unbind(0)
    for t in range(S - 1, -1, -1):
        if t in final:  # the state after step t is a final state: its gradient is given, nothing later reads it
            dC.copy_(gC_rows[final[t]])
            dL.copy_(gL_rows[final[t]])
        if t == S - 1 or t + 1 in begin:  # h_t feeds no later step (the next one starts from its h_0)
            dh.copy_(gHs[t])
        else:
            torch.baddbmm(gHs[t], draws[t + 1], R2, out=dh)
        torch.addcmul(dC, dh, ots[t], out=dc_t)
        DO[t].addcmul_(dh, Pos[t])
        DZ[t].addcmul_(dc_t, Pzs[t])
        torch.mul(dc_t, Pws[t], out=du).addcmul_(dL, ws[t])
        DI[t].add_(dL).sub_(du)
        if sfs is None:
            DF[t].sub_(du)
        else:
            DF[t].addcmul_(du, sfs[t], value=-1)
        torch.mul(dc_t, ws[t], out=dC)
        dL.copy_(du)
        if t in begin:  # the state before step t was an initial state
            dC0_rows[begin[t]] = dC
            dL0_rows[begin[t]] = dL
    d_start = draw.index_select(0, at).transpose(0, 1).reshape(NH, -1, G)  # (NH, starts * B, 4 DH)
    dh0 = _unrows(torch.bmm(d_start, R2).view(NH, len(starts), B, DH).transpose(0, 1), packed)
    d[:, :, :, 1].neg_()  # back from the -raw_f slot to raw_f
    H_prev = torch.cat([H[:1], H[:-1]], 0).index_copy(0, at, _rows(h0, packed))  # (S, NH, B, DH)
    dRt = torch.bmm(H_prev.permute(1, 3, 0, 2).reshape(NH, DH, S * B), draw.permute(1, 0, 2, 3).reshape(NH, S * B, G))
    dR = dRt.view(NH, DH, 4, DH).permute(2, 0, 3, 1)
    db = d.sum((0, 2)).transpose(0, 1)
    dx = d.permute(2, 0, 3, 1, 4)
    return (dx.to(x.dtype).contiguous(), dR.to(R.dtype).contiguous(), db.to(b.dtype).contiguous(),
            _unrows(dC0_rows, packed).contiguous(), _unrows(dL0_rows, packed).contiguous(), dh0.contiguous(),
            dm0.to(m0.dtype).contiguous())


@_loop_backward.register_fake
def _(gH, gC, gL, gm, H, cS, LS, mS, raw, SP, C, L, M, Rt, x, R, b, c0, L0, h0, m0, exp_forget, cu_seqlens):
    return (torch.empty_like(x), torch.empty_like(R), torch.empty_like(b), torch.empty_like(c0),
            torch.empty_like(L0), torch.empty_like(h0), torch.empty_like(m0))


link_backward(_loop_forward, _loop_backward, n_outputs=4, differentiable=range(7))


def slstm_fused_loop(x: Tensor, R: Tensor, b: Tensor, state: SLSTMState, *, forget_gate: str = "sigmoid",
                     cu_seqlens: Tensor | None = None) -> tuple[Tensor, SLSTMState]:
    """The fused loop with the hand-written backward. h: (B, S, NH, DH) in the compute dtype. With cu_seqlens
    (B == 1) the state holds one initial state per document; the loop starts each document from its own."""
    dt = compute_dtype(x)
    c0, n0, m0, h0 = (s.to(dt).transpose(0, 1).contiguous() for s in state)
    live = n0 != 0  # n == 0 marks an empty state (see recurrent.py)
    n_safe = torch.where(live, n0, torch.ones_like(n0))
    neg_inf = torch.full_like(m0, float("-inf"))
    chat0 = torch.where(live, c0 / n_safe, torch.zeros_like(c0))
    L0 = torch.where(live, torch.log(n_safe) + m0, neg_inf)
    m0_eff = torch.where(live, m0, neg_inf)
    H, chat, L, m = _loop_forward(x, R, b, chat0, L0, h0, m0_eff, forget_gate == "exp", cu_seqlens)[:4]
    n = torch.exp(L - m)
    c = chat * n
    to_bhd = lambda t: t.transpose(0, 1)
    if cu_seqlens is None:
        h_last = to_bhd(H[-1])
    else:  # each document's last h
        h_last = H[:, :, 0].index_select(0, cu_seqlens[1:].long() - 1)
    return H.permute(2, 0, 1, 3), (to_bhd(c), to_bhd(n), to_bhd(m), h_last)
