"""Sequence parallelism for the Triton mLSTM: the state entering each segment, in torch (autograd).

The fused kernels walk a span chunk by chunk; one span per (sequence, head) leaves the GPU half idle
when B * NH is small. Cutting each sequence into G segments of `tseg` steps gives G independent walks,
once the state entering every segment is known. That state comes from two cheap passes:

1. Summaries (segments 0 .. G-2, from an empty state): with A_s = sum_{r > s} log f_r (the decay from
   after step s to the segment's end) and a_s = A_s + log i_s,
       m_seg = max_s a_s,   C_seg = sum_s exp(a_s - m_seg) k_s v_s^T,   n_seg = sum_s exp(a_s - m_seg) k_s,
   one batched matrix product per segment (k^T diag(w) v, input precision, fp32 result) and g_seg = A_{-1}
   the segment's total log forget.
2. Scan: the state entering segment j is the initial state decayed by the forget gates of segments
   0 .. j-1 plus each earlier summary decayed by those after it. In log space the weight of source s
   (the initial state, or segment s < j) is lam_js = Gc_j - Gc_{s+1} + m_s (Gc = exclusive cumulative
   sum of g_seg, m_init = m0, Gc_0 = 0), the entering stabilizer is m_j = max_s lam_js (exactly what
   the step-by-step recurrence carries), and C_j = sum_s exp(lam_js - m_j) C_s: a (G x G) lower
   triangular weight matrix times the stacked summaries (float64 weights, float32 product).

Precision: C_seg is rounded to the input dtype by the bf16/fp16 batched matmul (torch returns that
dtype), and the scan's float32 product follows torch's float32 matmul setting (TF32 if allowed).
Opt-in (function.Variant.segment_tokens): measured slower where B * NH * ceil(DV / 64) already fills the GPU.

Everything here is differentiable torch, so the gradients the kernels return for the segment initial
states flow back to q, k, v, i, f and the caller's initial state through autograd. -inf stabilizers
(an empty initial state, fully masked segments) are replaced by 0 where subtracted, as in chunkwise.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..recurrent import finite_or_zero, log_input_gate


def segment_states(
    k: Tensor, v: Tensor, i: Tensor, f: Tensor, C0: Tensor, n0: Tensor, m0: Tensor, tseg: int, input_gate: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """States entering each of the ceil(S / tseg) segments: C (B, NH, G, DQK, DV), n (B, NH, G, DQK),
    m (B, NH, G), float32, segment 0's being (C0, n0, m0)."""
    B, NH, S, DQK = k.shape
    DV = v.shape[-1]
    G = -(-S // tseg)
    # summaries of segments 0 .. G-2 feed later segments; when tseg divides S all G are summarized (the
    # last one unused) so that k and v are read as views, not copied
    P = S if S % tseg == 0 else (G - 1) * tseg
    NS = P // tseg

    li = log_input_gate(i[..., :P].float(), input_gate).reshape(B, NH, NS, tseg)
    lf = F.logsigmoid(f[..., :P].float()).reshape(B, NH, NS, tseg)
    incl = torch.flip(torch.cumsum(torch.flip(lf, [-1]), -1), [-1])  # sum_{r >= s} log f_r
    after = torch.cat([incl[..., 1:], torch.zeros_like(incl[..., :1])], -1)  # sum_{r > s}
    g = incl[..., 0]
    a = after + li
    m_seg = a.amax(-1)
    w = torch.exp(a - finite_or_zero(m_seg)[..., None])
    ks = k[:, :, :P].reshape(B, NH, NS, tseg, DQK)
    vs = v[:, :, :P].reshape(B, NH, NS, tseg, DV)
    kw = ks * w.to(k.dtype)[..., None]
    C_seg = (kw.transpose(-1, -2) @ vs)[:, :, :G - 1].float()
    n_seg = kw[:, :, :G - 1].sum(-2, dtype=torch.float32)
    g, m_seg = g[..., :G - 1], m_seg[..., :G - 1]

    # scan weights (B, NH, G targets, G sources), source 0 = the initial state, source s + 1 = segment s
    dt = torch.float64
    Gc = torch.cat([torch.zeros_like(g[..., :1], dtype=dt), torch.cumsum(g.to(dt), -1)], -1)  # (B, NH, G)
    src = torch.cat([m0.to(dt)[..., None], m_seg.to(dt) - Gc[..., 1:]], -1)
    tri = torch.ones(G, G, dtype=torch.bool, device=k.device).tril()
    lam = torch.where(tri, Gc[..., :, None] + src[..., None, :], float("-inf"))
    m_in = lam.amax(-1)
    W = torch.exp(lam - finite_or_zero(m_in)[..., None]).float()

    C_src = torch.cat([C0.float()[:, :, None], C_seg], 2).reshape(B, NH, G, DQK * DV)
    n_src = torch.cat([n0.float()[:, :, None], n_seg], 2)
    C_in = (W @ C_src).reshape(B, NH, G, DQK, DV)
    n_in = W @ n_src
    return C_in, n_in, m_in.float()
