"""A bidirectional mLSTM layer: one mLSTM pass in token order and one in reversed order, combined.

    y = combine(fwd(x), flip(bwd(flip(x))))      combine: "add" (y = a + b) or "concat" (y = W [a; b])

Each direction is an `mLSTMLayer` with its own weights (its causal conv is causal in its own scan order), so
every output token sees the whole sequence. The layer reads the whole sequence at once: it has no state to
carry, since the reversed pass needs the last token first. Used by models that see a whole input (vision,
encoders).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .checks import check_sequence_input
from .mlstm_layer import mLSTMLayer

COMBINE = ("add", "concat")


class BidirectionalmLSTMLayer(nn.Module):
    """x (B, S, D) -> y (B, S, D); `layer_kwargs` go to both `mLSTMLayer`s."""

    def __init__(self, dim: int, *, combine: str = "add", **layer_kwargs):
        super().__init__()
        if combine not in COMBINE:
            raise ValueError(f"BidirectionalmLSTMLayer: combine must be one of {COMBINE}, got {combine!r}")
        self.dim, self.combine = dim, combine
        self.forward_layer = mLSTMLayer(dim, **layer_kwargs)
        self.backward_layer = mLSTMLayer(dim, **layer_kwargs)
        self.merge = nn.Linear(2 * dim, dim, bias=False) if combine == "concat" else None

    def reset_parameters(self) -> None:
        self.forward_layer.reset_parameters()
        self.backward_layer.reset_parameters()
        if self.merge is not None:
            self.merge.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        check_sequence_input("BidirectionalmLSTMLayer", x, self.dim)
        a, _ = self.forward_layer(x)
        b, _ = self.backward_layer(x.flip(1))
        b = b.flip(1)
        if self.merge is None:
            return a + b
        return self.merge(torch.cat([a, b], dim=-1))
