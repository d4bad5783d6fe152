"""The sLSTM cell step by step, exactly as docs/cells.md writes it (the stabilized form).

This is the readable form and, run in float64, the reference every fast form is tested against.
Per element, a state whose normalizer n is 0 is empty (nothing seen yet): the step then sets m_t = raw_i and
drops the old state (f' = 0). For the zero initial state this is exactly what the official xlstm vanilla
and CUDA backends compute (their first step takes m_1 = raw_i), and a carried state continues exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..documents import document_layout
from .checks import SLSTMState, compute_dtype


def zero_state(B: int, NH: int, DH: int, device, dtype=torch.float32) -> SLSTMState:
    return tuple(torch.zeros(B, NH, DH, device=device, dtype=dtype) for _ in range(4))


def log_forget_gate(raw_f: Tensor, forget_gate: str) -> Tensor:
    """log f: logsigmoid(raw_f) for the sigmoid gate, raw_f itself for the exponential gate."""
    return F.logsigmoid(raw_f) if forget_gate == "sigmoid" else raw_f


def slstm_cell_step(
    x_t: Tensor, R: Tensor, b: Tensor, state: SLSTMState, *, forget_gate: str = "sigmoid"
) -> tuple[Tensor, SLSTMState]:
    """One token: x_t (B, 4, NH, DH) -> h (B, NH, DH) and a fresh state (c, n, m, h) in the compute dtype."""
    dt = compute_dtype(x_t)
    c, n, m, h = (s.to(dt) for s in state)
    raw = x_t.to(dt) + b.to(dt) + torch.einsum("ghjp,bhp->bghj", R.to(dt), h)
    raw_i, raw_f, raw_z, raw_o = raw.unbind(1)
    m_prev = torch.where(n == 0, torch.full_like(m, float("-inf")), m)  # empty state: m_t = raw_i, f' = 0
    logf_m = log_forget_gate(raw_f, forget_gate) + m_prev
    m_new = torch.maximum(raw_i, logf_m)
    i_gate = torch.exp(raw_i - m_new)
    f_gate = torch.exp(logf_m - m_new)
    c_new = f_gate * c + i_gate * torch.tanh(raw_z)
    n_new = f_gate * n + i_gate
    h_new = torch.sigmoid(raw_o) * c_new / n_new
    return h_new, (c_new, n_new, m_new, h_new)


def slstm_recurrent(
    x: Tensor, R: Tensor, b: Tensor, state: SLSTMState, *, forget_gate: str = "sigmoid",
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, SLSTMState]:
    """`slstm_cell_step` over the sequence (plain loop, torch autograd). h: (B, S, NH, DH), compute dtype.

    With cu_seqlens (B == 1) `state` holds one initial state per document: at a document start the carried
    state (h included) is replaced by that document's, and the final states are those after each document's
    last step."""
    if cu_seqlens is not None:
        return _packed(x, R, b, state, forget_gate, cu_seqlens)
    hs = []
    for t in range(x.shape[1]):
        h, state = slstm_cell_step(x[:, t], R, b, state, forget_gate=forget_gate)
        hs.append(h)
    return torch.stack(hs, dim=1), state


def _packed(x: Tensor, R: Tensor, b: Tensor, init: SLSTMState, forget_gate: str, cu_seqlens: Tensor):
    lay = document_layout(cu_seqlens, x.shape[1], x.device)
    hs, states, st = [], [], None
    for t in range(x.shape[1]):
        mine = tuple(s.index_select(0, lay.doc[t : t + 1]) for s in init)
        st = mine if st is None else tuple(torch.where(lay.start[t], a, c) for a, c in zip(mine, st))
        h, st = slstm_cell_step(x[:, t], R, b, st, forget_gate=forget_gate)
        hs.append(h)
        states.append(st)
    return torch.stack(hs, dim=1), tuple(torch.cat(parts, 0).index_select(0, lay.ends) for parts in zip(*states))
