"""Block-diagonal linear maps: the input is split into heads and each head has its own square matrix.

weight (NH, DO, DI): out[..., h, o] = sum_d weight[h, o, d] * x[..., h, d] (the official
LinearHeadwiseExpand layout), input (..., NH * DI) -> output (..., NH * DO).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class HeadwiseLinear(nn.Module):
    def __init__(self, in_features: int, num_heads: int, *, out_features: int | None = None, bias: bool = False):
        super().__init__()
        out_features = in_features if out_features is None else out_features
        if in_features % num_heads or out_features % num_heads:
            raise ValueError(
                f"HeadwiseLinear: in_features {in_features} and out_features {out_features} must be divisible "
                f"by num_heads {num_heads}"
            )
        self.in_features, self.out_features, self.num_heads = in_features, out_features, num_heads
        self.weight = nn.Parameter(torch.empty(num_heads, out_features // num_heads, in_features // num_heads))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, dim: int | None = None) -> None:
        """small init N(0, 2 / (5 dim)); dim defaults to the per-head input size."""
        dim = self.weight.shape[-1] if dim is None else dim
        nn.init.normal_(self.weight, mean=0.0, std=math.sqrt(2 / (5 * dim)))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        xh = x.unflatten(-1, (self.num_heads, -1))
        y = torch.einsum("...hd,hod->...ho", xh, self.weight).flatten(-2)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, num_heads={self.num_heads}, bias={self.bias is not None}"
