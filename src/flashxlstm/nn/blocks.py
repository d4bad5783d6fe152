"""The two residual blocks of the NeurIPS xLSTM: pre-norm, x = x + layer(LN(x)).

mLSTMBlock: the mLSTM layer carries its own up/down projection (pre-up-projection block).
sLSTMBlock: the sLSTM layer, then x = x + FFN(LN(x)) with a gated feed-forward (post-up-projection block).
A block's state is its layer's state, passed in and returned, never modified in place. `cu_seqlens` (packed
documents, nn/packing.py) passes through to the layer.
"""
from __future__ import annotations

from torch import Tensor, nn

from .feedforward import GatedFeedForward
from .mlstm_layer import mLSTMLayer
from .norms import OffsetLayerNorm
from .slstm_layer import sLSTMLayer


class mLSTMBlock(nn.Module):
    kind = "mlstm"

    def __init__(self, dim: int, **layer_kwargs):
        super().__init__()
        self.norm = OffsetLayerNorm(dim)
        self.layer = mLSTMLayer(dim, **layer_kwargs)

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.layer.reset_parameters()

    def initial_state(self, batch_size: int, device=None, dtype=None):
        return self.layer.initial_state(batch_size, device, dtype)

    def forward(self, x: Tensor, state=None, cu_seqlens: Tensor | None = None) -> tuple[Tensor, tuple]:
        y, state = self.layer(self.norm(x), state, cu_seqlens=cu_seqlens)
        return x + y, state


class sLSTMBlock(nn.Module):
    kind = "slstm"

    def __init__(self, dim: int, *, ffn: GatedFeedForward | None = None, **layer_kwargs):
        super().__init__()
        self.norm = OffsetLayerNorm(dim)
        self.layer = sLSTMLayer(dim, **layer_kwargs)
        self.ffn_norm = OffsetLayerNorm(dim) if ffn is not None else None
        self.ffn = ffn

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.layer.reset_parameters()
        if self.ffn is not None:
            self.ffn_norm.reset_parameters()
            self.ffn.reset_parameters()

    def initial_state(self, batch_size: int, device=None, dtype=None):
        return self.layer.initial_state(batch_size, device, dtype)

    def forward(self, x: Tensor, state=None, cu_seqlens: Tensor | None = None) -> tuple[Tensor, tuple]:
        y, state = self.layer(self.norm(x), state, cu_seqlens=cu_seqlens)
        x = x + y
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x))
        return x, state
