"""Gate gradients of the chunkwise mLSTM from per-step terms (torch, tensors of shape (NH, steps)).

The kernels deliver, per step, dli_t (the gradient with respect to the log input gate, m held fixed)
and for the log forget gate one of two things: the walks (backward.py) give dF_t, the gradient with
respect to the cumulative log forget F_t, which this module turns into per-step gates as
dlogf_r = sum_{t >= r} dF_t within each document (plus what the final state adds through F_e); the
chunk-parallel backward (chunk_backward.py) gives dlogf_r itself, summed from the pairs that straddle r
(including those through the final state), which avoids that long nearly-cancelling sum. After the
chunk-parallel backward the library runs the same computation as one Triton launch (gate_rows.py);
this torch form serves the walks and is the reference that kernel is tested against.

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


class _Docs:
    """Per-step tensors (NH, R) over packed documents <-> a padded (NH, N, Lmax) layout.

    Documents of one length (every sequence without cu_seqlens) are a free view; otherwise the steps
    are gathered into rows, padded with `fill`, and scattered back.
    """

    def __init__(self, cu: Tensor, R: int, device: torch.device):
        lengths = (cu[1:] - cu[:-1]).tolist()  # waits for the GPU only if cu lives there (cu_seqlens)
        self.N = len(lengths)
        self.Lmax = max(lengths, default=0)
        self.uniform = self.N > 0 and min(lengths) == self.Lmax and self.N * self.Lmax == R
        if not self.uniform:
            cu = cu.to(device, torch.long)
            pos = torch.arange(self.Lmax, device=device)
            self.valid = pos[None, :] < (cu[1:] - cu[:-1])[:, None]
            self.index = (cu[:-1, None] + pos[None, :]).clamp(max=max(R - 1, 0))

    def pad(self, x: Tensor, fill: float) -> Tensor:
        if self.uniform:
            return x.reshape(x.shape[0], self.N, self.Lmax)
        return torch.where(self.valid, x[:, self.index], fill)

    def unpad(self, y: Tensor) -> Tensor:
        if self.uniform:
            return y.reshape(y.shape[0], -1)
        return y[:, self.valid]


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
    docs = _Docs(cu, i.shape[1], i.device)
    i64, f64 = docs.pad(i.to(dt), 0.0), docs.pad(f.to(dt), 0.0)
    logi = i64 if input_gate == "exp" else F.logsigmoid(i64)
    if not docs.uniform:
        logi = torch.where(docs.valid, logi, float("-inf"))
    logf = F.logsigmoid(f64) if docs.uniform else torch.where(docs.valid, F.logsigmoid(f64), 0.0)
    dli = docs.pad(dli.to(dt), 0.0)
    dfinal, dmf = dfinal.to(dt), dmf.to(dt)

    # the final stabilizer M = max(F_e + m0, max_s F_e - F_s + li_s) and the term attaining it
    Fc = torch.cumsum(logf, -1)
    F_end = Fc[..., -1] if docs.Lmax else torch.zeros_like(dfinal)
    a = F_end[..., None] - Fc + logi
    amax = a.amax(-1) if docs.Lmax else torch.full_like(dfinal, float("-inf"))
    M = torch.maximum(amax, F_end + m0.to(dt))
    live = torch.isfinite(M)
    init_wins = live & (F_end + m0.to(dt) >= amax)
    step_wins = live & ~init_wins
    pos = torch.arange(docs.Lmax, device=i.device)
    s_star = torch.where(a == amax[..., None], pos, -1).amax(-1) if docs.Lmax else torch.zeros_like(dfinal).long()

    # dM = dm - <dC, C> - <dn, n> moves M: through F_e it reaches every log forget gate of the document;
    # when a step s* attains M, through -F_{s*} + li_{s*} it also leaves the gates up to s* and enters li_{s*}
    dM = dmf - dfinal
    route = torch.where(step_wins, dM, 0.0)[..., None]
    upto = pos <= s_star[..., None]
    via_M = torch.where(live, dM, 0.0)[..., None] - torch.where(upto, route, 0.0)
    dli = dli + torch.where(pos == s_star[..., None], route, 0.0)
    dm0_routed = torch.where(init_wins, dM, 0.0)

    if dlogf is None:  # dlogf_r = sum over t >= r of dF_t, plus what the final state adds through F_e
        dFp = docs.pad(dF.to(dt), 0.0)
        dlogf = torch.flip(torch.cumsum(torch.flip(dFp, [-1]), -1), [-1]) + dfinal[..., None]
    else:
        dlogf = docs.pad(dlogf.to(dt), 0.0)
    df = (dlogf + via_M) * torch.sigmoid(-f64)
    di = dli if input_gate == "exp" else dli * torch.sigmoid(-i64)
    return docs.unpad(di), docs.unpad(df), dm0_routed
