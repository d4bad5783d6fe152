"""The mLSTM layer of the xLSTM-7B family (docs/models.md).

    q, k = Linear(D, qk_dim)(x), v, o = Linear(D, v_dim)(x)        (no conv, no skip)
    i~, f~ = 15 * tanh(Linear(D, NH, bias)(x) / 15)                 soft-capped gate pre-activations
    h = mLSTM(q, k, v, i~, f~; state)                                per head, state (C, n, m) in float32
    y = out_proj(sigmoid(o) * MultiHeadLayerNorm(h))                 (one fused op in training on CUDA: norm_gate_out)

Sequences of any length go through `flashxlstm.ops.mlstm` (chunkwise, or the Triton kernels on CUDA);
a single token goes through `flashxlstm.ops.mlstm_step`. `attention_mask` (B, S), 0 at padding, sets the
gates of padded positions to i~ = -inf, f~ = +inf so they leave the state exactly as it was.
The state passed in is never modified; a new one is returned. For CUDA-graph decoding a single token may
be given `state_out`, preallocated (C, n, m) buffers (not overlapping `state`) that receive the new state:
the Triton step kernel writes them directly, other step backends copy into them.

`decode(x, state, state_out)` is the single-token path of the Triton step backend (`uses_fused_decode`
says when it applies): the gate projections, their soft cap, the step, the per-head norm and the sigmoid(o)
product run in one or two launches (flashxlstm.ops.fused.mlstm_layer_step, in ops/fused/layer_step.py) that read q/k/v/o where the
projection put them; about a dozen launches of the unfused layer become two or three with the matmuls.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.choose import choose_backend
from ..ops.fused import mlstm_layer_step
from ..ops.fused.head_norm_gate_seq import head_norm_gate_linear
from ..ops.fused.linear import linear_decode
from ..ops.mlstm_cell import STEP_BACKENDS, MLSTMState, mlstm, mlstm_step
from .large_norms import MultiHeadLayerNorm
from .packing import check_cu_seqlens
from .stacked import stacked_linear
from .state import mLSTMCellState


def soft_cap(x: Tensor, cap: float | None) -> Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


def step_into(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState, state_out: MLSTMState, *,
              backend: str = "auto", eps: float = 1e-6) -> tuple[Tensor, MLSTMState]:
    """One mLSTM step whose new state lands in the `state_out` buffers (no allocation for the state)."""
    name = choose_backend("mlstm_step", backend, STEP_BACKENDS, fallback="torch", device=q.device, dtype=q.dtype)
    if name == "triton" and state is not None:
        B, NH, _ = q.shape
        h = torch.empty(B, NH, v.shape[-1], dtype=v.dtype, device=v.device)
        h, new = STEP_BACKENDS["triton"](q, k, v, i, f, state, eps=eps, out=(h, *state_out))
        return h, mLSTMCellState(*new)
    h, new = mlstm_step(q, k, v, i, f, state=state, backend=backend, eps=eps)
    for buf, t in zip(state_out, new):
        buf.copy_(t)
    return h, mLSTMCellState(*state_out)


def mask_gates(i: Tensor, f: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """i, f (B, NH, S); attention_mask (B, S) with 0 at padding -> gates that skip the padded steps."""
    if attention_mask is None:
        return i, f
    keep = attention_mask.bool()[:, None, :]
    return i.masked_fill(~keep, float("-inf")), f.masked_fill(~keep, float("inf"))


class mLSTMLargeLayer(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, *, qk_dim: int, v_dim: int, bias: bool = False, norm_eps: float = 1e-6,
        gate_soft_cap: float | None = 15.0, weight_mode: str = "single", chunk_size: int = 64, eps: float = 1e-6,
        backend: str = "auto", step_backend: str = "auto", norm_gate_backend: str = "auto", keep_h_lo: bool = False,
    ):
        super().__init__()
        if qk_dim % num_heads or v_dim % num_heads:
            raise ValueError(f"mLSTM layer: qk_dim {qk_dim} and v_dim {v_dim} must be multiples of num_heads {num_heads}")
        self.num_heads, self.qk_dim, self.v_dim = num_heads, qk_dim, v_dim
        self.gate_soft_cap, self.weight_mode = gate_soft_cap, weight_mode
        self.chunk_size, self.eps, self.backend, self.step_backend = chunk_size, eps, backend, step_backend
        if norm_gate_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"mLSTM layer: norm_gate_backend must be 'auto', 'torch' or 'triton', got {norm_gate_backend!r}")
        self.norm_gate_backend = norm_gate_backend
        if not isinstance(keep_h_lo, bool):
            raise TypeError(f"mLSTM layer: keep_h_lo must be a bool, got {keep_h_lo!r}")
        # flashxlstm.ops.mlstm's option (h's rounding residual kept for the backward), off by default here: h goes
        # straight into the per-head LayerNorm, whose gradient dh is orthogonal to the h it normalised (up to its
        # eps), so the sum dh . h that the residual refines is zero but for rounding, and h + h_lo, which the norm
        # never saw, only adds dh . h_lo to it. Measured in this composition the gradients are as accurate or more
        # without it (docs/kernels.md), and the layer keeps v_dim 16-bit values per token less.
        self.keep_h_lo = keep_h_lo
        if weight_mode == "single":
            self.q = nn.Linear(dim, qk_dim, bias=bias)
            self.k = nn.Linear(dim, qk_dim, bias=bias)
            self.v = nn.Linear(dim, v_dim, bias=bias)
            self.ogate_preact = nn.Linear(dim, v_dim, bias=bias)
            self.igate_preact = nn.Linear(dim, num_heads, bias=True)
            self.fgate_preact = nn.Linear(dim, num_heads, bias=True)
        elif weight_mode == "fused":
            self.qkv_opreact = nn.Linear(dim, 2 * qk_dim + 2 * v_dim, bias=bias)
            self.ifgate_preact = nn.Linear(dim, 2 * num_heads, bias=True)
        else:
            raise ValueError(f"mLSTM layer: weight_mode must be 'single' or 'fused', got {weight_mode!r}")
        self.multihead_norm = MultiHeadLayerNorm(num_heads, v_dim // num_heads, eps=norm_eps, bias=bias)
        self.out_proj = nn.Linear(v_dim, dim, bias=bias)

    def projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x (B, S, D) -> q, k, v, o (B, S, *) in x's dtype and gate pre-activations i, f (B, S, NH) float32."""
        cap = lambda t: soft_cap(t.float(), self.gate_soft_cap)
        if self.weight_mode == "single" and self.training and torch.is_grad_enabled():
            # One matmul over the six stacked weights: x is cast to the autocast dtype and kept for the
            # backward once instead of six times (five copies fewer: 20 KB per token and block at 1.3B), and its gradient
            # accumulates inside one matmul instead of in six bf16 pieces.
            q, k, v, o, i, f = stacked_linear(x, (self.q, self.k, self.v, self.ogate_preact, self.igate_preact,
                                                  self.fgate_preact))
            i, f = cap(i), cap(f)
        elif self.weight_mode == "single":
            q, k, v, o = self.q(x), self.k(x), self.v(x), self.ogate_preact(x)
            i, f = cap(self.igate_preact(x)), cap(self.fgate_preact(x))
        else:
            q, k, v, o = self.qkv_opreact(x).split([self.qk_dim, self.qk_dim, self.v_dim, self.v_dim], dim=-1)
            i, f = cap(self.ifgate_preact(x)).split(self.num_heads, dim=-1)
        return q, k, v, o, i, f

    def uses_fused_decode(self, x: Tensor, state: MLSTMState | None, attention_mask: Tensor | None = None) -> bool:
        """True for one token with a state and no mask when the step backend resolves to Triton."""
        if x.shape[1] != 1 or state is None or attention_mask is not None:
            return False
        return choose_backend("mlstm_step", self.step_backend, STEP_BACKENDS, fallback="torch", device=x.device,
                              dtype=x.dtype) == "triton"

    def decode(self, x: Tensor, state: MLSTMState, state_out: MLSTMState | None = None) -> tuple[Tensor, MLSTMState]:
        """x (B, 1, D) normed activations -> y (B, 1, D) and the new state, through the fused Triton kernels:
        besides the q/k/v/o matmul and out_proj, one or two launches (flashxlstm.ops.fused.mlstm_layer_step, in ops/fused/layer_step.py).
        Equals forward() on the same input (to rounding of the reductions)."""
        NH = self.num_heads
        x2 = x[:, 0]
        lin = lambda layer: linear_decode(x2, layer.weight, layer.bias)
        if self.weight_mode == "single":
            q, k, v, o = lin(self.q), lin(self.k), lin(self.v), lin(self.ogate_preact)
            w_i, w_f = self.igate_preact.weight, self.fgate_preact.weight
            b_i, b_f = self.igate_preact.bias, self.fgate_preact.bias
        else:
            q, k, v, o = lin(self.qkv_opreact).split([self.qk_dim, self.qk_dim, self.v_dim, self.v_dim], dim=-1)
            (w_i, w_f), (b_i, b_f) = self.ifgate_preact.weight.split(NH), self.ifgate_preact.bias.split(NH)
        heads = lambda t: t.unflatten(-1, (NH, -1))  # (B, NH, DH), a view
        norm = self.multihead_norm
        y, state = mlstm_layer_step(x2, heads(q), heads(k), heads(v), o, w_i, w_f, b_i, b_f, state, norm.weight,
                                    norm.bias, gate_soft_cap=self.gate_soft_cap, eps=self.eps, norm_eps=norm.eps,
                                    out=state_out, backend="triton")
        return linear_decode(y, self.out_proj.weight, self.out_proj.bias)[:, None], mLSTMCellState(*state)

    def forward(
        self, x: Tensor, state: MLSTMState | None = None, attention_mask: Tensor | None = None,
        state_out: MLSTMState | None = None, cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, MLSTMState]:
        """cu_seqlens: packed documents in (B, S, D) rows, each from an empty state (nn/packing.py); the
        returned state then holds one (C, n, m) per document."""
        B, S, _ = x.shape
        if cu_seqlens is not None:
            check_cu_seqlens("mLSTM layer", x, cu_seqlens, state)
            if attention_mask is not None or state_out is not None:
                raise ValueError("mLSTM layer: cu_seqlens does not combine with attention_mask or state_out")
            if B > 1:  # chunk-parallel over the flattened rows: one (1, B * S) sequence costs the same
                y, st = self.forward(x.reshape(1, B * S, -1), cu_seqlens=cu_seqlens)
                return y.view(B, S, -1), st
        NH = self.num_heads
        q, k, v, o, i, f = self.projections(x)
        heads = lambda t: t.reshape(B, S, NH, -1).transpose(1, 2)  # (B, NH, S, DH)
        q, k, v = heads(q), heads(k), heads(v)
        i, f = mask_gates(i.transpose(1, 2), f.transpose(1, 2), attention_mask)
        if cu_seqlens is not None:
            h, state = mlstm(q, k, v, i, f, state=None, backend=self.backend, chunk_size=self.chunk_size, eps=self.eps,
                             cu_seqlens=cu_seqlens, keep_h_lo=self.keep_h_lo)
        elif S == 1 and state_out is not None:
            h, state = step_into(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state, state_out,
                                 backend=self.step_backend, eps=self.eps)
            h = h[:, :, None]
        elif S == 1:
            h, state = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state=state,
                                  backend=self.step_backend, eps=self.eps)
            h = h[:, :, None]
        else:
            if state_out is not None:
                raise ValueError("mLSTM layer: state_out is for single-token steps (S == 1)")
            h, state = mlstm(q, k, v, i, f, state=state, backend=self.backend, chunk_size=self.chunk_size, eps=self.eps,
                             keep_h_lo=self.keep_h_lo)
        return self.norm_gate_out(h, o), mLSTMCellState(*state)

    def norm_gate_out(self, h: Tensor, o: Tensor) -> Tensor:
        """h (B, NH, S, DH) from the op, o (B, S, v_dim) -> out_proj(sigmoid(o) * MultiHeadLayerNorm(h)).

        With gradients, on a device where norm_gate_backend resolves to Triton: one fused op
        (ops/fused/head_norm_gate_seq.py, head_norm_gate_linear) that reads h in the op's layout, writes its
        gradient back in that layout, sums the norm weight's gradient in the same pass, and recomputes the
        out-projection's input in the backward instead of keeping it. Otherwise (and for inference, whose
        rounding the decode kernels reproduce) the modules as written."""
        norm, proj = self.multihead_norm, self.out_proj
        if torch.is_grad_enabled() and self.norm_gate_backend != "torch" and (
                self.norm_gate_backend == "triton" or h.device.type == "cuda"):
            dt = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else None
            return head_norm_gate_linear(h, o, norm.weight, norm.bias, proj.weight, proj.bias, norm.eps,
                                         compute_dtype=dt, backend=self.norm_gate_backend)
        return proj(torch.sigmoid(o) * norm(h.transpose(1, 2)))
