"""Causal depthwise 1-D convolution over time that carries its window as state.

y[t, d] = bias[d] + sum_k weight[d, k] * x[t - (K - 1) + k, d], where inputs before the sequence start come
from the carried state (the last K - 1 inputs of the previous call), zeros when there is none. Splitting
a sequence anywhere and carrying the state gives the same output as one pass. K == 0 is the identity.
With `cu_seqlens` (packed documents in (B, S) rows, see packing.py) no input of one document reaches another: each
document sees zeros before its start, and the returned state holds each document's last K - 1 inputs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .packing import positions_in_document


class CausalConv1d(nn.Module):
    """Depthwise causal conv: x (B, S, D) -> y (B, S, D); state (B, K - 1, D) = the last K - 1 inputs."""

    def __init__(self, dim: int, kernel_size: int, *, bias: bool = True):
        super().__init__()
        if kernel_size < 0:
            raise ValueError(f"CausalConv1d: kernel_size must be >= 0, got {kernel_size}")
        self.dim, self.kernel_size = dim, kernel_size
        self.weight = nn.Parameter(torch.empty(dim, kernel_size)) if kernel_size else None
        self.bias = nn.Parameter(torch.empty(dim)) if kernel_size and bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's Conv1d default (the official init): U(-1/sqrt(K), 1/sqrt(K)) for weight and bias."""
        if self.weight is None:
            return
        bound = 1.0 / math.sqrt(self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def zero_state(self, batch_size: int, device=None, dtype=None) -> Tensor | None:
        if not self.kernel_size:
            return None
        return torch.zeros(batch_size, self.kernel_size - 1, self.dim, device=device, dtype=dtype)

    def forward(self, x: Tensor, state: Tensor | None = None,
                cu_seqlens: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if cu_seqlens is not None:
            return self._packed(x, cu_seqlens)
        if not self.kernel_size:
            return x, None
        K = self.kernel_size
        B, S, D = x.shape
        if state is None:
            state = x.new_zeros(B, K - 1, D)
        xs = torch.cat([state.to(x.dtype), x], dim=1)  # (B, S + K - 1, D)
        w = self.weight.to(x.dtype)
        y = xs[:, K - 1 :] * w[:, K - 1]
        for k in range(K - 1):
            y = y + xs[:, k : k + S] * w[:, k]
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y, xs[:, S:]

    def _packed(self, x: Tensor, cu_seqlens: Tensor) -> tuple[Tensor, Tensor | None]:
        if not self.kernel_size:
            return x, None
        if x.shape[0] > 1:  # rows of packed documents: the offsets count the flattened tokens
            y, last = self._packed(x.reshape(1, -1, x.shape[-1]), cu_seqlens)
            return y.view(x.shape), last
        K = self.kernel_size
        _, S, D = x.shape
        pos = positions_in_document(cu_seqlens, S)[None, :, None]  # (1, S, 1)
        xs = torch.cat([x.new_zeros(1, K - 1, D), x], dim=1)
        w = self.weight.to(x.dtype)
        y = xs[:, K - 1 :] * w[:, K - 1]
        for k in range(K - 1):  # tap k reads K - 1 - k steps back: only within the same document
            y = y + xs[:, k : k + S] * w[:, k] * (pos >= K - 1 - k).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        ends = cu_seqlens[1:].long()
        back = torch.arange(K - 1, 0, -1, device=x.device)  # the last K - 1 inputs of each document
        idx = ends[:, None] - back[None, :]  # (N, K - 1)
        starts = cu_seqlens[:-1].long()[:, None]
        last = x[0][idx.clamp(min=0)] * (idx >= starts)[..., None].to(x.dtype)
        return y, last

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}, bias={self.bias is not None}"
