"""The chunkwise mLSTM in pure torch: the quadratic form inside chunks, the recurrence between them.

Any sequence length works: the tail is padded with steps that leave the state untouched (input gate
-inf, forget gate 1) and those outputs are dropped. The quadratic "parallel" form is this with one chunk
covering the whole sequence, so the two share every line of math.

What it promises beyond the algebra:
- Log forget gates are summed, never differenced: the decay from step s to step t inside a chunk is the
  sum of the log forget gates s+1..t (a masked cumulative sum, `segment_sums`), not cumsum[t] - cumsum[s].
  So a forget gate of -inf (or two of -3e38, whose running sum overflows) is an exact reset, as in the
  recurrence, instead of -inf - (-inf) = NaN, and a long chunk loses no digits to cancellation (the fp32
  error at gate pre-activations of |30| stays at the level of one step's rounding).
- Causality: a non-finite value at step t touches no output before t. Masked entries of the intra-chunk
  matrix are exact zeros selected with `where` (never 0 * inf), and the product with v, where a zero
  times inf would still spread NaN to earlier rows, runs on v's finite part; the columns of a step whose
  v is not finite are then non-finite from that step on, exactly where the recurrence's are.
- Stabilizers that are -inf (an empty state before any input) give no NaN in values or gradients, and
  the normalizer floor exp(-m) is capped below overflow (see `normalizer_floor`), so a float32 backward
  at gate scales of 1e3 stays finite where the float64 one is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import MLSTMState
from .recurrent import compute_dtype, finite_or_zero, log_input_gate, normalizer_floor

NEG_INF = float("-inf")


def segment_sums(logf: Tensor) -> Tensor:
    """logf (..., L) -> P (..., L, L) with P[t, s] = logf[s+1] + ... + logf[t] for s <= t (0 on the
    diagonal, 0 above it). A cumulative sum of the masked gates: no subtraction, so no cancellation and no
    -inf - (-inf)."""
    L = logf.shape[-1]
    later = torch.ones(L, L, dtype=torch.bool, device=logf.device).tril(-1)  # [r, s]: r > s
    terms = torch.where(later, logf[..., :, None], 0.0)
    return torch.cumsum(terms, dim=-2)


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
    logf = logf.view(B, NH, NC, L)
    P = segment_sums(logf)  # (B, NH, NC, L, L): log decay from step s to step t inside a chunk
    b = torch.cumsum(logf, dim=-1)  # log forget from chunk start through step t
    g = b[..., -1]  # log forget over the whole chunk

    # What each chunk adds to the state, stabilized by its own maximum.
    a = P[..., -1, :] + logi  # log weight of step j in the state at the chunk's end
    m_loc = a.amax(dim=-1)
    w = torch.exp(a - finite_or_zero(m_loc)[..., None])
    kw = k * w[..., None]
    C_loc = kw.transpose(-1, -2) @ v  # (B, NH, NC, DQK, DV)
    n_loc = kw.sum(dim=-2)  # (B, NH, NC, DQK)

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
    logD = torch.where(causal, P + logi[..., None, :], NEG_INF)
    log_inter = b + m_in[..., None]
    m_out = torch.maximum(log_inter, logD.amax(dim=-1))
    ms = finite_or_zero(m_out)
    w_inter = torch.exp(log_inter - ms)
    D = torch.exp(logD - ms[..., None])
    Smat = torch.where(causal, (qs @ k.transpose(-1, -2)) * D, 0.0)
    finite_v = torch.isfinite(v)
    intra = Smat @ torch.where(finite_v, v, 0.0)
    # a step whose v is not finite makes its columns non-finite from that step on (as in the recurrence)
    poisoned = torch.cumsum((~finite_v).to(torch.int32), dim=-2) > 0
    intra = torch.where(poisoned, float("nan"), intra)
    num = w_inter[..., None] * (qs @ C_in) + intra
    den = w_inter * (qs @ n_in[..., None]).squeeze(-1) + Smat.sum(dim=-1)
    h = num / (torch.maximum(den.abs(), normalizer_floor(ms)) + eps)[..., None]
    h = h.reshape(B, NH, NC * L, DV)[:, :, :S]
    return h, (C, n, m)


def mlstm_parallel(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState, *,
    eps: float = 1e-6, input_gate: str = "exp",
) -> tuple[Tensor, MLSTMState]:
    """The quadratic (fully parallel) form: one chunk spanning the sequence."""
    return mlstm_chunkwise(q, k, v, i, f, state, chunk_size=q.shape[2], eps=eps, input_gate=input_gate)
