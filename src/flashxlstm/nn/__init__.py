"""Layers and blocks: thin nn.Modules that project, call one op, and normalise."""
from .bidirectional import BidirectionalmLSTMLayer
from .blocks import mLSTMBlock, sLSTMBlock
from .conv import CausalConv1d
from .feedforward import GatedFeedForward, up_proj_dim
from .linear_headwise import HeadwiseLinear
from .mlstm_layer import mLSTMLayer
from .norms import MultiHeadNorm, OffsetLayerNorm
from .slstm_layer import sLSTMLayer
from .state import detach_state, map_state, mLSTMCellState, mLSTMLayerState, sLSTMLayerState, state_to

__all__ = [
    "BidirectionalmLSTMLayer", "CausalConv1d", "GatedFeedForward", "HeadwiseLinear", "MultiHeadNorm", "OffsetLayerNorm",
    "mLSTMBlock", "mLSTMLayer", "sLSTMBlock", "sLSTMLayer", "up_proj_dim",
    "detach_state", "map_state", "state_to", "mLSTMCellState", "mLSTMLayerState", "sLSTMLayerState",
]
