"""The ViL's mLSTM layer: nn/mlstm_layer.py's mLSTMLayer (same parameters, same function), computed for what a
vision model asks of it (a whole sequence from an empty state) with fewer and larger ops:

- the causal depthwise conv is one grouped conv1d instead of K shifted multiply-adds and a concatenation;
- the block-diagonal q / k / v projections run as dense matmuls over block-diagonal matrices built from the
  per-head blocks, and the input / forget gate projection is folded into them:
      gates = W_g [q; k; v] = (W_gq W_q + W_gk W_k) x_c + W_gv W_v x_m,
  so q, k and one part of the gates come out of one matmul over x_c, v and the other part out of one over
  x_m; q, k, v are never concatenated. (Gate rows are padded with zeros to a multiple of 8, so the outputs'
  rows stay 16-byte aligned for bf16 tensor-core matmuls.)

Inputs with a carried state, packed documents (`cu_seqlens`) or a single step take mLSTMLayer's own path.
Tested equal to mLSTMLayer.forward in float64 (outputs, final state and every gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ... import ops
from ...nn.checks import check_sequence_input
from ...nn.linear_headwise import HeadwiseLinear
from ...nn.mlstm_layer import mLSTMLayer
from ...nn.state import mLSTMLayerState


def block_diagonal(proj: HeadwiseLinear) -> Tensor:
    """The dense (out_features, in_features) matrix of a headwise (block-diagonal) linear map."""
    w = proj.weight  # (NH, DO, DI)
    nh, do, di = w.shape
    eye = torch.eye(nh, dtype=w.dtype, device=w.device)
    return (w[:, :, None, :] * eye[:, None, :, None]).reshape(nh * do, nh * di)


class ViLmLSTMLayer(mLSTMLayer):
    """x (B, S, D) -> (y (B, S, D), state); see the module docstring."""

    def forward(self, x: Tensor, state=None, cu_seqlens: Tensor | None = None) -> tuple[Tensor, mLSTMLayerState]:
        if state is not None or cu_seqlens is not None or x.dim() != 3 or x.shape[1] < 2:
            return super().forward(x, state, cu_seqlens)
        check_sequence_input("ViLmLSTMLayer", x, self.dim)
        B, S, _ = x.shape
        din, nh, K = self.inner_dim, self.num_heads, self.conv.kernel_size
        x_m, z = self.proj_up(x).split(din, dim=-1)
        if K:
            w = self.conv.weight.to(x_m.dtype)[:, None, :]  # (Din, 1, K): conv1d's cross-correlation == the causal taps
            b = self.conv.bias.to(x_m.dtype) if self.conv.bias is not None else None
            x_c = F.silu(F.conv1d(x_m.transpose(1, 2), w, b, padding=K - 1, groups=din)[..., :S].transpose(1, 2))
            conv_state = x_m[:, S - (K - 1):] if S >= K - 1 else F.pad(x_m, (0, 0, K - 1 - S, 0))
        else:
            x_c, conv_state = x_m, None

        wq, wk, wv = block_diagonal(self.q_proj), block_diagonal(self.k_proj), block_diagonal(self.v_proj)
        w_g = torch.cat([self.igate.weight, self.fgate.weight])  # (2 NH, 3 Din) over cat(q, k, v)
        g_q, g_k, g_v = w_g.split(din, dim=1)
        pad = (-2 * nh) % 8
        gate_c = F.pad(g_q @ wq + g_k @ wk, (0, 0, 0, pad))
        gate_m = F.pad(g_v @ wv, (0, 0, 0, pad))
        b_g = torch.cat([self.igate.bias, self.fgate.bias])
        bias_c = bias_m = None
        if self.q_proj.bias is not None:  # W_g (W x + b) = W_g W x + W_g b
            bq, bk, bv = self.q_proj.bias, self.k_proj.bias, self.v_proj.bias
            b_g = b_g + g_q @ bq + g_k @ bk + g_v @ bv
            bias_c = torch.cat([bq, bk, bq.new_zeros(2 * nh + pad)])
            bias_m = torch.cat([bv, bv.new_zeros(2 * nh + pad)])
        qk = F.linear(x_c, torch.cat([wq, wk, gate_c]), bias_c)
        vg = F.linear(x_m, torch.cat([wv, gate_m]), bias_m)
        q, k = qk[..., :din], qk[..., din:2 * din]
        v = vg[..., :din]
        gates = qk[..., 2 * din:2 * din + 2 * nh] + vg[..., din:din + 2 * nh] + b_g
        i, f = gates.split(nh, dim=-1)

        heads = lambda t: t.unflatten(-1, (nh, self.head_dim)).transpose(1, 2)
        h, cell_state = ops.mlstm(heads(q), heads(k), heads(v), i.transpose(1, 2), f.transpose(1, 2),
                                  backend=self.backend, chunk_size=self.chunk_size)
        h = self.outnorm(h.transpose(1, 2)).reshape(B, S, din)
        y = self.proj_down((h + self.learnable_skip * x_c) * F.silu(z))
        return self.dropout(y), mLSTMLayerState(conv_state, *cell_state)
