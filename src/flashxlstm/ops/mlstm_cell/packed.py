"""The torch mLSTM forms over packed documents (cu_seqlens, B == 1) in one pass.

A document start is a reset: the state entering it is that document's initial state (zeros when none is
given), whatever came before. Every shape depends on S, N and the chunk length only, so the forms run with
no host sync and no per-document loop, and torch.compile(fullgraph=True) traces them.

- Recurrent: the step loop; at a document start the carried state is replaced (a `where`) by the document's
  initial state. Final states: the states after each document's last step.
- Chunkwise (and parallel = one chunk): the log forget gate at each document start is set to -inf inside
  the decay sums (`logf_r`). Since decays are summed, never differenced (chunkwise.py), that is an exact
  cut: no step of an earlier document reaches a later one, inside a chunk or through the carried state.
  The document's own initial state (C0, n0, m0) enters at its first step with the decay of its real gates
  from there; for a document that starts inside a chunk its contribution to the chunk's outputs is
  q_t C0[d], computed for the chunk where each document starts only (N chunk-sized products). A document's
  final state is built at its last step from the state entering that chunk, its initial state and the
  chunk's steps up to there. Terms of other documents are removed with `where` (never 0 * inf), so a
  non-finite value in one document reaches no output or state of another.
The stabilizer m of every output and state is the recurrence's own max over the same log weights, so the
normalizer floor exp(-m) matches each document run alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..documents import document_layout
from .checks import MLSTMState
from .chunkwise import segment_sums
from .recurrent import compute_dtype, finite_or_zero, log_input_gate, mlstm_step, normalizer_floor

NEG_INF = float("-inf")


def _initial(state: MLSTMState | None, N: int, NH: int, DQK: int, DV: int, device, dt) -> MLSTMState:
    if state is None:
        return (torch.zeros(N, NH, DQK, DV, device=device, dtype=dt), torch.zeros(N, NH, DQK, device=device, dtype=dt),
                torch.zeros(N, NH, device=device, dtype=dt))
    return tuple(s.to(dt) for s in state)


def mlstm_recurrent_packed(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState | None, *, cu_seqlens: Tensor,
    eps: float = 1e-6, input_gate: str = "exp",
) -> tuple[Tensor, MLSTMState]:
    """`mlstm_step` over the packed row, the state replaced at each document start. h in the compute dtype."""
    _, NH, S, DQK = q.shape
    N = cu_seqlens.shape[0] - 1
    lay = document_layout(cu_seqlens, S, q.device)
    init = _initial(state, N, NH, DQK, v.shape[-1], q.device, compute_dtype(q))
    hs, states = [], []
    st = None
    for t in range(S):
        mine = tuple(s.index_select(0, lay.doc[t : t + 1]) for s in init)
        st = mine if st is None else tuple(torch.where(lay.start[t], a, b) for a, b in zip(mine, st))
        h, st = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], st, eps=eps,
                           input_gate=input_gate)
        hs.append(h)
        states.append(st)
    finals = tuple(torch.cat(parts, 0).index_select(0, lay.ends) for parts in zip(*states))
    return torch.stack(hs, dim=2), finals


def mlstm_chunkwise_packed(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState | None, *, cu_seqlens: Tensor,
    chunk_size: int = 64, eps: float = 1e-6, input_gate: str = "exp",
) -> tuple[Tensor, MLSTMState]:
    """The chunkwise form with document resets (see the module docstring). state None: zeros."""
    _, NH, S, DQK = q.shape
    DV = v.shape[-1]
    N = cu_seqlens.shape[0] - 1
    L = max(1, min(chunk_size, S))
    NC = -(-S // L)
    Sp = NC * L
    pad = Sp - S
    dev = q.device
    dt = compute_dtype(q)
    lay = document_layout(cu_seqlens, S, dev)
    C0, n0, m0 = _initial(state, N, NH, DQK, DV, dev, dt)
    q, k, v = (t[0].to(dt) for t in (q, k, v))  # (NH, S, D)
    logi = log_input_gate(i[0].to(dt), input_gate)
    logf = F.logsigmoid(f[0].to(dt))
    logf_r = torch.where(lay.start, NEG_INF, logf)  # the decay sums see a cut at every document start
    doc, first = lay.doc, lay.first
    if pad:  # steps that leave the state untouched, in the last document
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        logi = F.pad(logi, (0, pad), value=NEG_INF)
        logf = F.pad(logf, (0, pad), value=0.0)
        logf_r = F.pad(logf_r, (0, pad), value=0.0)
        doc = torch.cat([doc, doc[-1:].expand(pad)])
        first = torch.cat([first, first[-1:].expand(pad)])
    qs = (q * DQK**-0.5).view(NH, NC, L, DQK)
    k = k.view(NH, NC, L, DQK)
    v = v.view(NH, NC, L, DV)
    logi = logi.view(NH, NC, L)
    docc = doc.view(NC, L)
    chunk_start = (torch.arange(NC, device=dev) * L)[:, None]
    inside = first.view(NC, L) >= chunk_start  # (NC, L): the step's document started in this chunk
    js = (first.view(NC, L) - chunk_start).clamp(min=0)  # where in the chunk (0 when before it)
    causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
    mask = causal & (docc[:, :, None] == docc[:, None, :])  # (NC, L, L): same document, s <= t

    P = segment_sums(logf_r.view(NH, NC, L))  # (NH, NC, L, L), -inf across a document start
    b = torch.cumsum(logf_r.view(NH, NC, L), dim=-1)  # from the chunk start (-inf once a document started)
    g = b[..., -1]
    # the initial state of the step's document, decayed by its real gates from its first step to t
    from_first = logf.index_select(-1, first).view(NH, NC, L) + P.gather(-1, js.expand(NH, NC, L)[..., None])[..., 0]
    log_init = torch.where(inside, from_first + m0.t().index_select(-1, doc).view(NH, NC, L), NEG_INF)

    # what each chunk adds to the state of the document running at its end
    at_end = docc == docc[:, -1:]  # (NC, L)
    a = torch.where(at_end, P[..., -1, :] + logi, NEG_INF)
    m_loc = a.amax(dim=-1)
    w = torch.exp(a - finite_or_zero(m_loc)[..., None])
    kw = torch.where(at_end[..., None], k, 0.0) * w[..., None]
    C_loc = kw.transpose(-1, -2) @ torch.where(at_end[..., None], v, 0.0)
    n_loc = kw.sum(dim=-2)

    # the states entering each chunk; the carried one is dropped where a document starts in the chunk
    carry = ~inside[:, -1]  # (NC,)
    end_doc = docc[:, -1]
    li_end = log_init[..., -1]
    C0e = C0.index_select(0, end_doc).transpose(0, 1) if state is not None else None  # (NH, NC, DQK, DV)
    n0e = n0.index_select(0, end_doc).transpose(0, 1) if state is not None else None
    C = torch.zeros(NH, DQK, DV, device=dev, dtype=dt)
    n = torch.zeros(NH, DQK, device=dev, dtype=dt)
    m = torch.zeros(NH, device=dev, dtype=dt)
    C_in, n_in, m_in = [], [], []
    for c in range(NC):
        C_in.append(C)
        n_in.append(n)
        m_in.append(m)
        gm = torch.where(carry[c], g[:, c] + m, NEG_INF)
        m_new = torch.maximum(torch.maximum(gm, m_loc[:, c]), li_end[:, c])
        ms = finite_or_zero(m_new)
        decay = torch.exp(gm - ms)
        scale = torch.exp(m_loc[:, c] - ms)
        C = torch.where(carry[c], decay[:, None, None] * C, 0.0) + scale[:, None, None] * C_loc[:, c]
        n = torch.where(carry[c], decay[:, None] * n, 0.0) + scale[:, None] * n_loc[:, c]
        if state is not None:
            s0 = torch.exp(li_end[:, c] - ms)
            C = C + s0[:, None, None] * C0e[:, c]
            n = n + s0[:, None] * n0e[:, c]
        m = m_new
    C_in = torch.stack(C_in, dim=1)  # (NH, NC, DQK, DV)
    n_in = torch.stack(n_in, dim=1)
    m_in = torch.stack(m_in, dim=1)

    # outputs: the carried state (documents that started before the chunk), the initial state (documents that
    # started inside it) and the causal quadratic form over the steps of the same document
    log_inter = torch.where(inside, NEG_INF, b + m_in[..., None])
    logD = torch.where(mask, P + logi[..., None, :], NEG_INF)
    m_out = torch.maximum(torch.maximum(log_inter, log_init), logD.amax(dim=-1))
    ms = finite_or_zero(m_out)
    w_inter = torch.exp(log_inter - ms)
    D = torch.exp(logD - ms[..., None])
    Smat = torch.where(mask, (qs @ k.transpose(-1, -2)) * D, 0.0)
    finite_v = torch.isfinite(v)
    intra = Smat @ torch.where(finite_v, v, 0.0)
    # a step whose v is not finite makes its columns non-finite from that step on, in its document only
    bad = torch.cumsum((~finite_v).to(torch.int32), dim=-2)
    before = torch.where((js > 0)[..., None], bad.gather(-2, (js - 1).clamp(min=0)[..., None].expand(NH, NC, L, DV)), 0)
    intra = torch.where(bad > before, float("nan"), intra)
    before_chunk = ~inside[..., None]
    num = torch.where(before_chunk, w_inter[..., None] * (qs @ C_in), 0.0) + intra
    den = torch.where(~inside, w_inter * (qs @ n_in[..., None])[..., 0], 0.0) + Smat.sum(dim=-1)
    if state is not None:  # q_t C0[d] for the chunk where each document starts
        w_init = torch.exp(log_init - ms)
        home = torch.div(cu_seqlens[:-1].to(dev, torch.long), L, rounding_mode="floor")  # (N,)
        q_home = qs.index_select(1, home)  # (NH, N, L, DQK)
        qC = (q_home @ C0.transpose(0, 1)).reshape(NH, N * L, DV)
        qn = (q_home @ n0.transpose(0, 1)[..., None])[..., 0].reshape(NH, N * L)
        row = doc * L + torch.arange(Sp, device=dev) % L  # (Sp,): this step's row in its home chunk
        num = num + torch.where(inside[..., None], w_init[..., None] * qC.index_select(1, row).view(NH, NC, L, DV), 0.0)
        den = den + torch.where(inside, w_init * qn.index_select(1, row).view(NH, NC, L), 0.0)
    h = num / (torch.maximum(den.abs(), normalizer_floor(ms)) + eps)[..., None]
    h = h.reshape(NH, Sp, DV)[:, :S][None]

    # each document's final state, at its last step
    e = lay.ends
    ce = torch.div(e, L, rounding_mode="floor")
    m_fin = m_out.reshape(NH, Sp).index_select(1, e)  # (NH, N)
    msf = finite_or_zero(m_fin)
    valid = mask.reshape(Sp, L).index_select(0, e)  # (N, L)
    W = torch.exp(logD.reshape(NH, Sp, L).index_select(1, e) - msf[..., None])
    kr = torch.where(valid[..., None], k.index_select(1, ce), 0.0) * W[..., None]
    C_fin = kr.transpose(-1, -2) @ torch.where(valid[..., None], v.index_select(1, ce), 0.0)
    n_fin = kr.sum(dim=-2)
    kept = ~inside.reshape(Sp).index_select(0, e)  # (N,): the document started before its last chunk
    wi = torch.exp(log_inter.reshape(NH, Sp).index_select(1, e) - msf)
    C_fin = C_fin + torch.where(kept[:, None, None], wi[..., None, None] * C_in.index_select(1, ce), 0.0)
    n_fin = n_fin + torch.where(kept[:, None], wi[..., None] * n_in.index_select(1, ce), 0.0)
    if state is not None:
        w0 = torch.exp(log_init.reshape(NH, Sp).index_select(1, e) - msf)
        C_fin = C_fin + torch.where(kept[:, None, None], 0.0, w0[..., None, None] * C0.transpose(0, 1))
        n_fin = n_fin + torch.where(kept[:, None], 0.0, w0[..., None] * n0.transpose(0, 1))
    return h, (C_fin.transpose(0, 1), n_fin.transpose(0, 1), m_fin.t())
