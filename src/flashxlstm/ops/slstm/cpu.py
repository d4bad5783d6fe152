"""The fast loop form of the sLSTM op: a fused forward loop and a hand-written backward (BPTT).

It runs the recurrence in an equivalent normalized form that needs no explicit stabilizer:

    u_t = log f_t + L_{t-1} - raw_i          L = log of the unstabilized normalizer (n * exp(m))
    w_t = sigmoid(u_t)                       the share of the old state in the new one
    L_t = raw_i + softplus(u_t)
    c^_t = tanh(raw_z) + w_t (c^_{t-1} - tanh(raw_z))     c^ = c / n, the normalized cell
    h_t = sigmoid(raw_o) * c^_t

This is algebraically the stabilized recurrence of xlstm-spec section 2 (f' / (f' n + i') = w), with no exp
that can overflow. Each step is one batched matmul (all heads) plus ten pointwise ops that write into
preallocated buffers: no autograd graph per step, no allocation churn, no host sync. The backward loop reuses
the saved pre-activations: everything that does not depend on the carried gradients is computed for all
steps at once before the loop, so each backward step is again one matmul plus a few pointwise ops.
The official state (c, n, m) is rebuilt at the end: m_S is the max-plus scan of the gates, written in closed
form (F = cumsum log f: m_S = F_S + max(m_0, max_s(raw_i,s - F_s))), computed in float64.

The loop is torch code, so the form also runs on CUDA (the "auto" backend there is the Triton kernel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import SLSTMState, compute_dtype


class _NormalizedLoop(torch.autograd.Function):
    """x (B, S, 4, NH, DH), R (4, NH, DH, DH), b (4, NH, DH), c^_0, L_0, h_0 (NH, B, DH) in the compute dtype ->
    H (S, NH, B, DH), c^_S, L_S, raw (S, NH, B, 4*DH): the pre-activations, returned for the m scan.

    Internally the gates of one head sit side by side, (S, NH, B, 4*DH), so one batched matmul serves all
    heads, and the f slot holds -raw_f, so that log f = -softplus(slot) needs no negation per step.
    """

    @staticmethod
    def forward(ctx, x: Tensor, R: Tensor, b: Tensor, c0: Tensor, L0: Tensor, h0: Tensor, exp_forget: bool):
        B, S, _, NH, DH = x.shape
        dt = c0.dtype
        flip = torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=dt, device=x.device)
        xb = torch.empty(S, NH, B, 4, DH, dtype=dt, device=x.device)
        b_flip = (b.to(dt) * flip[:, None, None]).permute(1, 0, 2)[:, None]  # (NH, 1, 4, DH)
        torch.addcmul(b_flip, x.permute(1, 3, 0, 2, 4), flip[:, None], out=xb)  # (x + b) with -raw_f, one pass
        xb = xb.view(S, NH, B, 4 * DH)
        Rt = (R.to(dt) * flip[:, None, None, None]).permute(1, 3, 0, 2).reshape(NH, DH, 4 * DH)
        raw = torch.empty_like(xb)
        H = xb.new_empty(S, NH, B, DH)
        C = xb.new_empty(S + 1, NH, B, DH)
        L = xb.new_empty(S + 1, NH, B, DH)
        C[0], L[0] = c0, L0
        RI, NF, RZ, RO = raw.view(S, NH, B, 4, DH).unbind(3)
        u, w, zt, ot = (xb.new_empty(NH, B, DH) for _ in range(4))
        h_prev = h0
        for t in range(S):
            torch.baddbmm(xb[t], h_prev, Rt, out=raw[t])
            ri, nf = RI[t], NF[t]
            torch.sub(L[t], ri, out=u)  # u = log f + L_{t-1} - raw_i
            u.sub_(nf if exp_forget else F.softplus(nf))
            torch.sigmoid(u, out=w)
            torch.add(ri, F.softplus(u), out=L[t + 1])
            torch.tanh(RZ[t], out=zt)
            torch.lerp(zt, C[t], w, out=C[t + 1])
            torch.sigmoid(RO[t], out=ot)
            h_prev = torch.mul(ot, C[t + 1], out=H[t])
        ctx.save_for_backward(raw, C, L, H, h0, Rt)
        ctx.exp_forget = exp_forget
        ctx.x_dtype = x.dtype
        return H, C[S].clone(), L[S].clone(), raw

    @staticmethod
    def backward(ctx, gH, gC, gL, graw):
        raw, C, L, H, h0, Rt = ctx.saved_tensors
        S, NH, B, G = raw.shape
        DH = G // 4
        r = raw.view(S, NH, B, 4, DH)
        ri, nf, rz, ro = r.unbind(3)
        # everything the carried gradients do not touch, for all steps at once
        lf = -nf if ctx.exp_forget else -F.softplus(nf)
        w = torch.sigmoid(lf + L[:-1] - ri)
        zt, ot = torch.tanh(rz), torch.sigmoid(ro)
        P_o = C[1:] * ot * (1 - ot)  # d h / d raw_o per unit dh
        P_w = (C[:-1] - zt) * w * (1 - w)  # d c^ / d u
        P_z = (1 - w) * (1 - zt * zt)  # d c^ / d raw_z
        s_f = None if ctx.exp_forget else torch.sigmoid(nf)  # -d log f / d(-raw_f)

        draw = torch.zeros_like(raw) if graw is None else graw.clone()
        d = draw.view(S, NH, B, 4, DH)
        gH = torch.zeros_like(H) if gH is None else gH
        dC = torch.zeros_like(C[0]) if gC is None else gC.clone()
        dL = torch.zeros_like(L[0]) if gL is None else gL.clone()
        R2 = Rt.transpose(1, 2).contiguous()  # (NH, 4*DH, DH)
        dh, dc_t, du = (raw.new_empty(NH, B, DH) for _ in range(3))
        for t in range(S - 1, -1, -1):
            if t == S - 1:
                dh.copy_(gH[t])
            else:
                torch.baddbmm(gH[t], draw[t + 1], R2, out=dh)
            torch.addcmul(dC, dh, ot[t], out=dc_t)
            d[t, :, :, 3].addcmul_(dh, P_o[t])
            d[t, :, :, 2].addcmul_(dc_t, P_z[t])
            torch.mul(dc_t, P_w[t], out=du).addcmul_(dL, w[t])
            d[t, :, :, 0].add_(dL).sub_(du)
            if s_f is None:
                d[t, :, :, 1].sub_(du)
            else:
                d[t, :, :, 1].addcmul_(du, s_f[t], value=-1)
            torch.mul(dc_t, w[t], out=dC)
            dL.copy_(du)
        dh0 = torch.bmm(draw[0], R2)
        d[:, :, :, 1].neg_()  # back from the -raw_f slot to raw_f
        H_prev = torch.cat([h0[None], H[:-1]], 0)  # (S, NH, B, DH)
        dRt = torch.bmm(H_prev.permute(1, 3, 0, 2).reshape(NH, DH, S * B), draw.permute(1, 0, 2, 3).reshape(NH, S * B, G))
        dR = dRt.view(NH, DH, 4, DH).permute(2, 0, 3, 1)
        db = d.sum((0, 2)).transpose(0, 1)
        dx = d.permute(2, 0, 3, 1, 4).to(ctx.x_dtype)
        return dx, dR, db, dC, dL, dh0, None


def slstm_cpu(x: Tensor, R: Tensor, b: Tensor, state: SLSTMState, *, forget_gate: str = "sigmoid") -> tuple[Tensor, SLSTMState]:
    """The fused loop with the hand-written backward. h: (B, S, NH, DH) in the compute dtype."""
    dt = compute_dtype(x)
    B, S, _, NH, DH = x.shape
    c0, n0, m0, h0 = (s.to(dt).transpose(0, 1).contiguous() for s in state)
    live = n0 != 0  # n == 0 marks an empty state (see recurrent.py)
    n_safe = torch.where(live, n0, torch.ones_like(n0))
    neg_inf = torch.full_like(m0, float("-inf"))
    chat0 = torch.where(live, c0 / n_safe, torch.zeros_like(c0))
    L0 = torch.where(live, torch.log(n_safe) + m0, neg_inf)
    H, chat, L, raw = _NormalizedLoop.apply(x, R, b, chat0, L0, h0, forget_gate == "exp")

    # the official stabilizer m_S, then n_S = exp(L_S - m_S) and c_S = c^_S n_S, in float64
    r = raw.view(S, NH, B, 4, DH)
    nf = r[:, :, :, 1].double()
    lf = -nf if forget_gate == "exp" else -F.softplus(nf)
    Fs = torch.cumsum(lf, 0)
    best = torch.maximum(torch.where(live, m0.double(), neg_inf.double()), (r[:, :, :, 0].double() - Fs).amax(0))
    m = Fs[-1] + best
    n = torch.exp(L.double() - m)
    c = chat.double() * n
    to_bhd = lambda t: t.to(dt).transpose(0, 1)
    h_last = H[-1]
    return H.permute(2, 0, 1, 3), (to_bhd(c), to_bhd(n), to_bhd(m), to_bhd(h_last))
