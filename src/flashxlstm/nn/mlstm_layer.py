"""The mLSTM layer of the NeurIPS xLSTM ("pre-up-projection"), stateful over any sequence length.

    x (B, S, D) -> proj_up -> [x_m, z] (Din each)
    x_c = SiLU(causal conv(x_m));  q = Wq x_c, k = Wk x_c, v = Wv x_m  (block-diagonal, blocks of qkv_proj_blocksize)
    i~, f~ = Linear(cat(q, k, v)) per head;  h = mLSTM cell over NH heads of DH = Din / NH
    y = proj_down((MultiHeadNorm(h) + learnable_skip * x_c) * SiLU(z))

State: (conv, C, n, m) = (last K - 1 values of x_m (B, K-1, Din) or None when K == 0, C (B, NH, DH, DH),
n (B, NH, DH), m (B, NH)). With no state the cell starts empty, m = -inf (C = n = 0), which is exactly the
official quadratic form (no m0 term). Continuing from a returned state equals one pass over the joined sequence.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .checks import check_sequence_input, check_state
from .conv import CausalConv1d
from .feedforward import up_proj_dim
from .init import linspace_, small_init_, wang_init_
from .linear_headwise import HeadwiseLinear
from .norms import MultiHeadNorm
from .packing import check_cu_seqlens
from .state import mLSTMLayerState as MLSTMLayerState


class mLSTMLayer(nn.Module):
    state_fields = ("conv", "C", "n", "m")

    def __init__(
        self, dim: int, *, num_heads: int = 4, proj_factor: float = 2.0, conv1d_kernel_size: int = 4,
        qkv_proj_blocksize: int = 4, bias: bool = False, dropout: float = 0.0, num_blocks: int = 1,
        round_proj_up_to_multiple_of: int = 64, backend: str = "auto", chunk_size: int = 64,
    ):
        super().__init__()
        inner = up_proj_dim(dim, proj_factor, round_proj_up_to_multiple_of)
        if inner % num_heads:
            raise ValueError(f"mLSTMLayer: inner dim {inner} (proj_factor {proj_factor} x {dim}, rounded up to a "
                             f"multiple of {round_proj_up_to_multiple_of}) is not divisible by num_heads {num_heads}")
        if inner % qkv_proj_blocksize:
            raise ValueError(f"mLSTMLayer: inner dim {inner} is not divisible by qkv_proj_blocksize {qkv_proj_blocksize}")
        self.dim, self.inner_dim, self.num_heads, self.head_dim = dim, inner, num_heads, inner // num_heads
        self.num_blocks, self.backend, self.chunk_size = num_blocks, backend, chunk_size
        nproj = inner // qkv_proj_blocksize
        self.proj_up = nn.Linear(dim, 2 * inner, bias=bias)
        self.conv = CausalConv1d(inner, conv1d_kernel_size)
        self.q_proj = HeadwiseLinear(inner, nproj, bias=bias)
        self.k_proj = HeadwiseLinear(inner, nproj, bias=bias)
        self.v_proj = HeadwiseLinear(inner, nproj, bias=bias)
        self.igate = nn.Linear(3 * inner, num_heads)
        self.fgate = nn.Linear(3 * inner, num_heads)
        self.outnorm = MultiHeadNorm(num_heads, self.head_dim)
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        small_init_(self.proj_up.weight, self.dim)
        wang_init_(self.proj_down.weight, self.dim, self.num_blocks)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            proj.reset_parameters(dim=self.dim)  # the official init uses the outer width here
        for lin in (self.proj_up, self.proj_down):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        self.conv.reset_parameters()
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, mean=0.0, std=0.1)
        nn.init.zeros_(self.fgate.weight)
        linspace_(self.fgate.bias, 3.0, 6.0)
        self.outnorm.reset_parameters()
        nn.init.ones_(self.learnable_skip)

    def state_shapes(self, batch_size: int) -> list[tuple[int, ...] | None]:
        K, NH, DH = self.conv.kernel_size, self.num_heads, self.head_dim
        conv = (batch_size, K - 1, self.inner_dim) if K else None
        return [conv, (batch_size, NH, DH, DH), (batch_size, NH, DH), (batch_size, NH)]

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> MLSTMLayerState:
        """The empty state: zero conv window (in `dtype`), C = 0, n = 0, m = -inf (float32 cell state)."""
        NH, DH = self.num_heads, self.head_dim
        cdt = torch.float64 if dtype == torch.float64 else torch.float32
        return MLSTMLayerState(
            self.conv.zero_state(batch_size, device, dtype),
            torch.zeros(batch_size, NH, DH, DH, device=device, dtype=cdt),
            torch.zeros(batch_size, NH, DH, device=device, dtype=cdt),
            torch.full((batch_size, NH), float("-inf"), device=device, dtype=cdt),
        )

    def forward(self, x: Tensor, state: MLSTMLayerState | None = None,
                cu_seqlens: Tensor | None = None) -> tuple[Tensor, MLSTMLayerState]:
        """cu_seqlens: packed documents in (B, S, D) rows, each from an empty state (see nn/packing.py);
        the returned state then holds one entry per document."""
        check_sequence_input("mLSTMLayer", x, self.dim)
        B, S, _ = x.shape
        if cu_seqlens is not None:
            check_cu_seqlens("mLSTMLayer", x, cu_seqlens, state)
            if B > 1:  # chunk-parallel over the flattened rows: one (1, B * S) sequence costs the same
                y, st = self.forward(x.reshape(1, B * S, -1), None, cu_seqlens)
                return y.view(B, S, -1), st
            # one empty state (m = -inf, as state=None means here) per document
            conv_state, cell_state = None, tuple(self.initial_state(cu_seqlens.numel() - 1, x.device, x.dtype)[1:])
        elif state is None:
            state = self.initial_state(B, x.device, x.dtype)
        else:
            check_state("mLSTMLayer", state, self.state_fields, self.state_shapes(B))
        if cu_seqlens is None:
            conv_state, cell_state = state[0], tuple(state[1:])

        x_m, z = self.proj_up(x).split(self.inner_dim, dim=-1)
        x_c, conv_state = self.conv(x_m, conv_state, cu_seqlens=cu_seqlens)
        if self.conv.kernel_size:
            x_c = F.silu(x_c)
        q, k, v = self.q_proj(x_c), self.k_proj(x_c), self.v_proj(x_m)
        # both gates in one matmul over cat(q, k, v)
        w_if = torch.cat([self.igate.weight, self.fgate.weight])
        b_if = torch.cat([self.igate.bias, self.fgate.bias])
        i, f = F.linear(torch.cat([q, k, v], dim=-1), w_if, b_if).split(self.num_heads, dim=-1)

        heads = lambda t: t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        if S == 1 and cu_seqlens is None:  # decoding: the recurrent step, no chunk machinery
            step = lambda t: t[:, :, 0]
            h, cell_state = ops.mlstm_step(step(heads(q)), step(heads(k)), step(heads(v)), i[:, 0], f[:, 0],
                                           state=cell_state)
            h = h[:, :, None]
        else:
            h, cell_state = ops.mlstm(heads(q), heads(k), heads(v), i.transpose(1, 2), f.transpose(1, 2),
                                      state=cell_state, backend=self.backend, chunk_size=self.chunk_size,
                                      cu_seqlens=cu_seqlens)
        h = self.outnorm(h.transpose(1, 2)).reshape(B, S, self.inner_dim)
        y = self.proj_down((h + self.learnable_skip * x_c) * F.silu(z))
        return self.dropout(y), MLSTMLayerState(conv_state, *cell_state)
