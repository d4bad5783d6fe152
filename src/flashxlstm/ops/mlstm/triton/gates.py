"""Gate gradients of the chunkwise mLSTM from per-step terms (torch, tensors of shape (NH, steps)).

The kernels deliver, per step, dli_t (the gradient with respect to the log input gate, m held fixed)
and for the log forget gate one of two things: the walks (backward.py) give dF_t, the gradient with
respect to the cumulative log forget F_t, which this module turns into per-step gates as
dlogf_r = sum_{t >= r} dF_t within each document (plus what the final state adds through F_e); the
chunk-parallel backward (chunk_backward.py) gives dlogf_r itself, summed from the pairs that straddle r
(including those through the final state), which avoids that long nearly-cancelling sum.

Either way this module adds what the stabilizer of the final state routes to its argmax. The returned
state is stabilized, C = exp(-M) C_true with M = max(F_e + m0, max_s F_e - F_s + li_s). Gradients reaching
the returned (C, n, m) therefore also move M; that part, dM = dm - <dC, C> - <dn, n>, goes to the gates
(or initial m) of the term that attains the max, exactly as autograd through the recurrence does. Inside
the sequence the per-step stabilizers only affect h at the eps level and are held constant.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gate_grads(
    i: Tensor, f: Tensor, m0: Tensor, dli: Tensor, dfinal: Tensor, dmf: Tensor, cu: Tensor, input_gate: str,
    *, dF: Tensor | None = None, dlogf: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-step tensors are (NH, R) over the packed steps, cu (N + 1,) their document (span) offsets;
    per-document tensors are (NH, N): m0 the initial stabilizers, dfinal = <dC, C> + <dn, n> of the
    returned final states, dmf the gradient of their stabilizers. Exactly one of dF (per-step gradients
    of the cumulative log forget, from the walks) and dlogf (per-step log forget gradients with the final
    state's part included, from the chunk-parallel backward) is given.

    Returns di, df (NH, R) float64 and the routed part of dm0 (NH, N).
    """
    if (dF is None) == (dlogf is None):
        raise ValueError("gate_grads: pass exactly one of dF (cumulative form) and dlogf (direct form)")
    dt = torch.float64
    NH, R = i.shape
    N = cu.numel() - 1
    cu = cu.to(i.device, torch.long)
    lengths = cu[1:] - cu[:-1]
    doc = torch.repeat_interleave(torch.arange(N, device=i.device), lengths, output_size=R)
    first, last = cu[:-1], cu[1:] - 1
    i64, f64 = i.to(dt), f.to(dt)
    logi = i64 if input_gate == "exp" else F.logsigmoid(i64)
    logf = F.logsigmoid(f64)
    dli = dli.to(dt).clone()
    # dR: per-step terms whose reverse cumulative sum is added to dlogf (sparse for the direct form)
    dR = torch.zeros(NH, R, dtype=dt, device=i.device) if dF is None else dF.to(dt).clone()

    # the final state depends on F_e directly (C = exp(F_e - F_s + li_s - M) ...)
    dfinal_explicit = dfinal.to(dt)
    dM = dmf.to(dt) - dfinal_explicit

    # route dM to the term attaining M
    Fc = torch.cumsum(logf, dim=-1)
    F_end = Fc[:, last]
    F_before = Fc[:, first] - logf[:, first]
    a = F_end[:, doc] - Fc + logi
    a_init = F_end - F_before + m0.to(dt)
    amax = torch.full((NH, N), float("-inf"), dtype=dt, device=i.device)
    amax = amax.scatter_reduce(1, doc.expand(NH, R), a, "amax")
    M = torch.maximum(amax, a_init)
    live = torch.isfinite(M)
    init_wins = live & (a_init >= amax)
    step_wins = live & ~init_wins
    pos = torch.arange(R, device=i.device).expand(NH, R)
    hit = torch.where(a == amax[:, doc], pos, -1)
    s_star = torch.full((NH, N), -1, dtype=torch.long, device=i.device).scatter_reduce(1, doc.expand(NH, R), hit, "amax")
    dM_live = torch.where(live, dM, 0.0)
    dR[:, last] += dM_live if dF is None else dfinal_explicit + dM_live
    route = torch.where(step_wins, dM, 0.0)
    s_idx = s_star.clamp(min=0)
    dR.scatter_add_(1, s_idx, -route)
    dli.scatter_add_(1, s_idx, route)
    dm0_routed = torch.where(init_wins, dM, 0.0)

    # sum over t >= r of dR_t inside the document
    rc = torch.flip(torch.cumsum(torch.flip(dR, [-1]), -1), [-1])
    rc_next = torch.cat([rc, rc.new_zeros(NH, 1)], dim=-1)[:, cu[1:]]
    dlogf = rc - rc_next[:, doc] if dlogf is None else dlogf.to(dt) + rc - rc_next[:, doc]

    df = dlogf * torch.sigmoid(-f64)
    di = dli if input_gate == "exp" else dli * torch.sigmoid(-i64)
    return di, df, dm0_routed
