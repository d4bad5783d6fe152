"""RMSNorm and the per-head LayerNorm of the xLSTM-7B family (docs/models.md).

Both reduce in float32 whatever the input dtype and return the input dtype, with a plain weight (no +1
offset). RMSNorm is torch's fused rms_norm (float32 accumulation; the weight is applied before the one
rounding to the input dtype, where the official rounds twice: identical in float32, a little more
accurate in bf16). The per-head LayerNorm rounds the normalised value once and then applies its weight
in the input dtype, exactly as the official does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dimension (optionally + bias)."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = F.rms_norm(x, (x.shape[-1],), self.weight, eps=self.eps)
        return y if self.bias is None else y + self.bias


class MultiHeadLayerNorm(nn.Module):
    """LayerNorm of each head's vector: (B, S, NH, DH) -> (B, S, NH * DH), then weight (NH * DH,)."""

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-6, bias: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads * head_dim)) if bias else None

    def forward(self, h: Tensor) -> Tensor:
        B, S = h.shape[:2]
        y = F.layer_norm(h, (self.head_dim,), eps=self.eps).reshape(B, S, -1) * self.weight
        return y if self.bias is None else y + self.bias
