"""Norms of the NeurIPS xLSTM family: bias-free LayerNorm and per-head (group) norm, weight stored as an offset.

Both store `weight` as an offset w (initialised to 0) and scale by 1 + w, exactly as the official `xlstm`
package does, so checkpoints convert without touching the values. eps is 1e-5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OffsetLayerNorm(nn.Module):
    """LayerNorm over the last dimension with effective weight 1 + w and an optional bias."""

    def __init__(self, dim: int, *, bias: bool = False, eps: float = 1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.dim,), 1.0 + self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, bias={self.bias is not None}"


class MultiHeadNorm(nn.Module):
    """Normalise each head of x (..., NH, DH) on its own (a group norm), then scale by 1 + w.

    `weight` is flat (NH * DH,), head-major, like the official MultiHeadLayerNorm.
    """

    def __init__(self, num_heads: int, head_dim: int, *, eps: float = 1e-5):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.zeros(num_heads * head_dim))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., NH, DH) -> normalised (..., NH, DH), in x's dtype."""
        return F.layer_norm(x, (self.head_dim,), None, None, self.eps) * (1.0 + self.weight).view(self.num_heads, self.head_dim)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, eps={self.eps}"
