"""The mLSTM cell step by step: the decode step and the recurrent form built from it.

Everything is computed in float32 (or float64 when the inputs are float64); the state stays in that
precision whatever the input dtype. `mlstm_reference` runs this same recurrence in float64 and is the
yardstick every other form is tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import MLSTMState


def compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def zero_state(B: int, NH: int, DQK: int, DV: int, device, dtype=torch.float32) -> MLSTMState:
    return (
        torch.zeros(B, NH, DQK, DV, device=device, dtype=dtype),
        torch.zeros(B, NH, DQK, device=device, dtype=dtype),
        torch.zeros(B, NH, device=device, dtype=dtype),
    )


def finite_or_zero(m: Tensor) -> Tensor:
    """A stabilizer safe to subtract: -inf (nothing seen yet) becomes 0, which leaves exp(-inf - 0) = 0."""
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


def normalizer_floor(ms: Tensor) -> Tensor:
    """exp(-m), the floor of the stabilized normalizer, capped below overflow.

    Where the cap acts (m < -80 in float32) the true floor exceeds 5e34 and h = num / floor is zero to
    the dtype's resolution, so the cap changes no output; it keeps the floor finite, so the backward never
    forms inf * 0 (a float32 backward at gate scales of 1e3 would otherwise be NaN where float64 is not).
    """
    cap = 80.0 if ms.dtype != torch.float64 else 700.0
    return torch.exp(torch.clamp(-ms, max=cap))


def log_input_gate(i: Tensor, input_gate: str) -> Tensor:
    """log of the un-stabilized input gate: i~ for the exponential gate, logsigmoid(i~) for mLSTMsig."""
    return i if input_gate == "exp" else F.logsigmoid(i)


def mlstm_step(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState, *,
    eps: float = 1e-6, input_gate: str = "exp",
) -> tuple[Tensor, MLSTMState]:
    """One token: q, k (B, NH, DQK), v (B, NH, DV), i, f (B, NH) -> h (B, NH, DV) and the new state.

    The state is read, never written; a fresh (C, n, m) is returned.
    """
    dt = compute_dtype(q)
    C, n, m = (s.to(dt) for s in state)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    logi = log_input_gate(i.to(dt), input_gate)
    logf = F.logsigmoid(f.to(dt))
    m_new = torch.maximum(logf + m, logi)
    ms = finite_or_zero(m_new)
    fg = torch.exp(logf + m - ms)
    ig = torch.exp(logi - ms)
    C_new = fg[..., None, None] * C + ig[..., None, None] * (k[..., :, None] * v[..., None, :])
    n_new = fg[..., None] * n + ig[..., None] * k
    qs = q * (q.shape[-1] ** -0.5)
    num = torch.einsum("bhd,bhde->bhe", qs, C_new)
    qn = (qs * n_new).sum(-1)
    den = torch.maximum(qn.abs(), normalizer_floor(ms)) + eps
    return num / den[..., None], (C_new, n_new, m_new)


def mlstm_recurrent(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState, *,
    eps: float = 1e-6, input_gate: str = "exp",
) -> tuple[Tensor, MLSTMState]:
    """The recurrent form: `mlstm_step` over the sequence. h is returned in the compute dtype."""
    hs = []
    for t in range(q.shape[2]):
        h, state = mlstm_step(
            q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state, eps=eps, input_gate=input_gate
        )
        hs.append(h)
    return torch.stack(hs, dim=2), state
