"""The initialisers of the NeurIPS xLSTM family (docs/models.md)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


@torch.no_grad()
def small_init_(w: Tensor, dim: int) -> Tensor:
    """N(0, 2 / (5 dim)) (Nguyen & Salazar, 2019)."""
    return nn.init.normal_(w, mean=0.0, std=math.sqrt(2 / (5 * dim)))


@torch.no_grad()
def wang_init_(w: Tensor, dim: int, num_blocks: int) -> Tensor:
    """N(0, (2 / num_blocks / sqrt(dim))^2), for output projections into the residual stream."""
    return nn.init.normal_(w, mean=0.0, std=2 / num_blocks / math.sqrt(dim))


@torch.no_grad()
def linspace_(w: Tensor, start: float, end: float) -> Tensor:
    return w.copy_(torch.linspace(start, end, w.numel(), dtype=w.dtype).view_as(w))


def powerlaw_forget_bias(head_dim: int, block_idx: int, num_blocks: int) -> Tensor:
    """sLSTM forget-gate bias "powerlaw_blockdependent": -(-5 + 12 (j / (DH - 1))^(0.3 + 1.3 r)), r = block position."""
    r = block_idx / (num_blocks - 1) if num_blocks > 1 else 0.0
    j = torch.arange(head_dim, dtype=torch.float32) / max(head_dim - 1, 1)
    return -(-5.0 + 12.0 * j ** (0.3 + 1.3 * r))
