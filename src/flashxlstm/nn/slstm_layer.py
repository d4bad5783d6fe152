"""The sLSTM layer of the NeurIPS xLSTM, stateful over any sequence length.

    x_c = SiLU(causal conv(x))  (x itself when conv1d_kernel_size == 0)
    gates: i, f from x_c and z, o from x, each block-diagonal per head (NH, DH, DH), no bias
    h = sLSTM cell with recurrent matrix R (4, NH, DH, DH) and bias b (4, NH, DH), gate order (i, f, z, o)
    y = MultiHeadNorm(dropout(h))     (no output projection; the block adds a gated FFN)

Our `igate` is the input gate and `fgate` the forget gate (the official module swaps the two names; the
converter in flashxlstm.checkpoints.official handles that). State: (conv, c, n, m, h) with conv the last
K - 1 inputs (B, K-1, D) or None when K == 0, and c, n, m, h (B, NH, DH) float32. No state means zeros.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .checks import check_sequence_input, check_state, state_dtype
from .conv import CausalConv1d
from .init import linspace_, powerlaw_forget_bias
from .linear_headwise import HeadwiseLinear
from .norms import MultiHeadNorm
from .packing import check_cu_seqlens
from .state import sLSTMLayerState as SLSTMLayerState

BIAS_INITS = ("powerlaw_blockdependent", "small_init", "standard", "zeros")
RECURRENT_INITS = ("zeros", "standard")


class sLSTMLayer(nn.Module):
    state_fields = ("conv", "c", "n", "m", "h")

    def __init__(
        self, dim: int, *, num_heads: int = 4, conv1d_kernel_size: int = 4, dropout: float = 0.0,
        block_idx: int = 0, num_blocks: int = 1, bias_init: str = "powerlaw_blockdependent",
        recurrent_weight_init: str = "zeros", backend: str = "auto", forget_gate: str = "sigmoid",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"sLSTMLayer: embedding dim {dim} is not divisible by num_heads {num_heads}")
        if bias_init not in BIAS_INITS:
            raise ValueError(f"sLSTMLayer: bias_init must be one of {BIAS_INITS}, got {bias_init!r}")
        if recurrent_weight_init not in RECURRENT_INITS:
            raise ValueError(f"sLSTMLayer: recurrent_weight_init must be one of {RECURRENT_INITS}, got {recurrent_weight_init!r}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.block_idx, self.num_blocks = block_idx, num_blocks
        self.bias_init, self.recurrent_weight_init = bias_init, recurrent_weight_init
        self.backend, self.forget_gate = backend, forget_gate
        NH, DH = num_heads, self.head_dim
        self.conv = CausalConv1d(dim, conv1d_kernel_size)
        self.igate = HeadwiseLinear(dim, NH)
        self.fgate = HeadwiseLinear(dim, NH)
        self.zgate = HeadwiseLinear(dim, NH)
        self.ogate = HeadwiseLinear(dim, NH)
        self.recurrent_kernel = nn.Parameter(torch.zeros(4, NH, DH, DH))  # raw[g,h,j] += R[g,h,j,p] h_prev[h,p]
        self.bias = nn.Parameter(torch.zeros(4, NH, DH))
        self.norm = MultiHeadNorm(NH, DH)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for gate in (self.igate, self.fgate, self.zgate, self.ogate):
            gate.reset_parameters(dim=self.dim)
        self.conv.reset_parameters()
        if self.recurrent_weight_init == "zeros":
            nn.init.zeros_(self.recurrent_kernel)
        else:
            bound = 1 / math.sqrt(self.dim)
            nn.init.uniform_(self.recurrent_kernel, -bound, bound)
        nn.init.zeros_(self.bias)
        if self.bias_init == "powerlaw_blockdependent":
            self.bias[1] = powerlaw_forget_bias(self.head_dim, self.block_idx, self.num_blocks)
        elif self.bias_init == "small_init":
            for h in range(self.num_heads):
                linspace_(self.bias[1, h], 3.0, 6.0)
        elif self.bias_init == "standard":
            bound = 1 / math.sqrt(self.dim)
            nn.init.uniform_(self.bias, -bound, bound)
        self.norm.reset_parameters()

    def state_shapes(self, batch_size: int) -> list[tuple[int, ...] | None]:
        K = self.conv.kernel_size
        cell = (batch_size, self.num_heads, self.head_dim)
        return [(batch_size, K - 1, self.dim) if K else None, cell, cell, cell, cell]

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> SLSTMLayerState:
        cdt = torch.float64 if dtype == torch.float64 else torch.float32
        zeros = lambda: torch.zeros(batch_size, self.num_heads, self.head_dim, device=device, dtype=cdt)
        return SLSTMLayerState(self.conv.zero_state(batch_size, device, dtype), zeros(), zeros(), zeros(), zeros())

    def gate_preactivations(self, x: Tensor, x_c: Tensor) -> Tensor:
        """(B, S, D) inputs -> (B, S, 4, NH, DH) pre-activations W x in gate order (i, f, z, o)."""
        heads = lambda t: t.unflatten(-1, (self.num_heads, self.head_dim))
        w_if = torch.stack([self.igate.weight, self.fgate.weight])
        w_zo = torch.stack([self.zgate.weight, self.ogate.weight])
        g_if = torch.einsum("bshd,ghod->bsgho", heads(x_c), w_if)
        g_zo = torch.einsum("bshd,ghod->bsgho", heads(x), w_zo)
        return torch.cat([g_if, g_zo], dim=2)

    def forward(self, x: Tensor, state: SLSTMLayerState | None = None,
                cu_seqlens: Tensor | None = None) -> tuple[Tensor, SLSTMLayerState]:
        """cu_seqlens: packed documents in (B, S, D) rows, each from an empty state (see nn/packing.py);
        the returned state then holds one entry per document. The rows run side by side."""
        check_sequence_input("sLSTMLayer", x, self.dim)
        B, S, _ = x.shape
        if cu_seqlens is not None:
            check_cu_seqlens("sLSTMLayer", x, cu_seqlens, state)
            conv_state, cell_state = None, None
        elif state is None:
            conv_state, cell_state = None, None
        else:
            check_state("sLSTMLayer", state, self.state_fields, self.state_shapes(B))
            conv_state, cell_state = state[0], tuple(s.to(state_dtype(x)) for s in state[1:])
        x_c, conv_state = self.conv(x, conv_state, cu_seqlens=cu_seqlens)
        if self.conv.kernel_size:
            x_c = F.silu(x_c)
        gates = self.gate_preactivations(x, x_c)
        if S == 1 and cu_seqlens is None:  # decoding: the plain step (pure torch ops, so it also exports to ONNX)
            h, cell_state = ops.slstm_step(gates[:, 0], self.recurrent_kernel, self.bias, state=cell_state,
                                           forget_gate=self.forget_gate)
            h = h[:, None]
        else:  # packed documents: one pass, the cell state (h_prev included) reset at each document start
            h, cell_state = ops.slstm(gates, self.recurrent_kernel, self.bias, state=cell_state,
                                      backend=self.backend, forget_gate=self.forget_gate, cu_seqlens=cu_seqlens)
        y = self.norm(self.dropout(h.to(x.dtype))).reshape(B, S, self.dim)
        return y, SLSTMLayerState(conv_state, *cell_state)
