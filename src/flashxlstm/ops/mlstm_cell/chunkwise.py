"""The chunkwise mLSTM in pure torch: the quadratic form inside chunks, the recurrence between them.

Any sequence length works: the tail is padded with steps that leave the state untouched (input gate
-inf, forget gate 1) and those outputs are dropped. The quadratic "parallel" form is this with one chunk
covering the whole sequence, so the two share every line of math. Stabilizers that are -inf (an empty
state before any input) are handled without producing NaN in values or gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import MLSTMState
from .recurrent import compute_dtype, finite_or_zero, log_input_gate

NEG_INF = float("-inf")


def mlstm_chunkwise(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState, *,
    chunk_size: int = 64, eps: float = 1e-6, input_gate: str = "exp",
) -> tuple[Tensor, MLSTMState]:
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    L = max(1, min(chunk_size, S))
    NC = -(-S // L)
    pad = NC * L - S
    dt = compute_dtype(q)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    logi = log_input_gate(i.to(dt), input_gate)
    logf = F.logsigmoid(f.to(dt))
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        logi = F.pad(logi, (0, pad), value=NEG_INF)
        logf = F.pad(logf, (0, pad), value=0.0)
    qs = (q * DQK**-0.5).view(B, NH, NC, L, DQK)
    k = k.view(B, NH, NC, L, DQK)
    v = v.view(B, NH, NC, L, DV)
    logi = logi.view(B, NH, NC, L)
    b = torch.cumsum(logf.view(B, NH, NC, L), dim=-1)  # log forget from chunk start through step j
    g = b[..., -1]  # log forget over the whole chunk

    # What each chunk adds to the state, stabilized by its own maximum.
    a = g[..., None] - b + logi
    m_loc = a.amax(dim=-1)
    w = torch.exp(a - finite_or_zero(m_loc)[..., None])
    C_loc = (k * w[..., None]).transpose(-1, -2) @ v  # (B, NH, NC, DQK, DV)
    n_loc = (k * w[..., None]).sum(dim=-2)  # (B, NH, NC, DQK)

    # The recurrence between chunks: states entering each chunk.
    C, n, m = (s.to(dt) for s in state)
    C_in, n_in, m_in = [], [], []
    for c in range(NC):
        C_in.append(C)
        n_in.append(n)
        m_in.append(m)
        m_new = torch.maximum(g[..., c] + m, m_loc[..., c])
        ms = finite_or_zero(m_new)
        decay = torch.exp(g[..., c] + m - ms)
        scale = torch.exp(m_loc[..., c] - ms)
        C = decay[..., None, None] * C + scale[..., None, None] * C_loc[:, :, c]
        n = decay[..., None] * n + scale[..., None] * n_loc[:, :, c]
        m = m_new
    C_in = torch.stack(C_in, dim=2)
    n_in = torch.stack(n_in, dim=2)
    m_in = torch.stack(m_in, dim=2)

    # Outputs: the carried state's contribution plus the causal quadratic form inside the chunk.
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    logD = torch.where(causal, b[..., :, None] - b[..., None, :] + logi[..., None, :], NEG_INF)
    log_inter = b + m_in[..., None]
    m_out = torch.maximum(log_inter, logD.amax(dim=-1))
    ms = finite_or_zero(m_out)
    w_inter = torch.exp(log_inter - ms)
    D = torch.exp(logD - ms[..., None])
    Smat = (qs @ k.transpose(-1, -2)) * D
    num = w_inter[..., None] * (qs @ C_in) + Smat @ v
    den = w_inter * (qs @ n_in[..., None]).squeeze(-1) + Smat.sum(dim=-1)
    h = num / (torch.maximum(den.abs(), torch.exp(-ms)) + eps)[..., None]
    h = h.reshape(B, NH, NC * L, DV)[:, :, :S]
    return h, (C, n, m)


def mlstm_parallel(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState, *,
    eps: float = 1e-6, input_gate: str = "exp",
) -> tuple[Tensor, MLSTMState]:
    """The quadratic (fully parallel) form: one chunk spanning the sequence."""
    return mlstm_chunkwise(q, k, v, i, f, state, chunk_size=q.shape[2], eps=eps, input_gate=input_gate)
