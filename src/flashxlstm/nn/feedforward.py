"""The gated feed-forward of the sLSTM block: y = down(act(g) * u), [g, u] = up(x)."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .init import small_init_, wang_init_

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "relu^2": lambda x: torch.square(F.relu(x)),
    "sigmoid": torch.sigmoid,
    "swish": F.silu,
    "selu": F.selu,
}


def up_proj_dim(dim: int, proj_factor: float, multiple_of: int = 64) -> int:
    """ceil(proj_factor * dim / multiple_of) * multiple_of, the official rounding of up-projection widths."""
    return int(math.ceil(proj_factor * dim / multiple_of) * multiple_of)


class GatedFeedForward(nn.Module):
    def __init__(self, dim: int, inner_dim: int, *, act_fn: str = "gelu", bias: bool = False,
                 dropout: float = 0.0, num_blocks: int = 1):
        super().__init__()
        if act_fn not in ACTIVATIONS:
            raise ValueError(f"GatedFeedForward: act_fn must be one of {sorted(ACTIVATIONS)}, got {act_fn!r}")
        self.dim, self.inner_dim, self.num_blocks, self.act_name = dim, inner_dim, num_blocks, act_fn
        self.act = ACTIVATIONS[act_fn]
        self.proj_up = nn.Linear(dim, 2 * inner_dim, bias=bias)
        self.proj_down = nn.Linear(inner_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        small_init_(self.proj_up.weight, self.dim)
        wang_init_(self.proj_down.weight, self.dim, self.num_blocks)
        for lin in (self.proj_up, self.proj_down):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.proj_up(x).split(self.inner_dim, dim=-1)
        return self.dropout(self.proj_down(self.act(gate) * up))
