"""Vision-LSTM (ViL), clean-room from the paper (Alkin et al., 2024): patch tokens through residual mLSTM blocks
whose scan direction alternates (even blocks in token order, odd blocks on the reversed sequence), a final
LayerNorm, pooling and a linear classification head.

v2 options: `conv_kernel_size` is the causal depthwise conv before q/k inside each mLSTM layer (0: off);
`pooling` is "bilateral_avg" (mean of first and last token), "bilateral_concat" (first and last token side by
side, the head sees 2 D) or "mean" (all tokens).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...nn.blocks import mLSTMBlock
from .patch import PatchEmbed
from .vil_layer import ViLmLSTMLayer

POOLINGS = ("bilateral_avg", "bilateral_concat", "mean")


@dataclass
class ViLConfig:
    image_size: int | tuple[int, int] = 28
    patch_size: int | tuple[int, int] = 4
    in_channels: int = 1
    num_classes: int = 10
    dim: int = 64
    depth: int = 4
    num_heads: int = 4
    proj_factor: float = 2.0
    conv_kernel_size: int = 4
    qkv_proj_blocksize: int = 4
    pooling: str = "bilateral_concat"
    backend: str = "auto"
    chunk_size: int = 64
    fused_glue: bool = True  # the layer's glue as fewer, larger ops (vil_layer.py); False: nn's mLSTMLayer as is

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"ViLConfig: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.depth < 1 or self.num_classes < 1:
            raise ValueError(f"ViLConfig: depth and num_classes must be >= 1, got {self.depth}, {self.num_classes}")


class ViLBlock(nn.Module):
    """A pre-norm residual mLSTM block that scans the tokens forward or, with `reverse`, last to first.
    `fused_glue`: its mLSTM layer is the ViLmLSTMLayer (same parameters and function, fewer ops)."""

    def __init__(self, dim: int, *, reverse: bool, fused_glue: bool = False, **layer_kwargs):
        super().__init__()
        self.reverse = reverse
        self.block = mLSTMBlock(dim, **layer_kwargs)
        if fused_glue:
            self.block.layer = ViLmLSTMLayer(dim, **layer_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if self.reverse:
            return self.block(x.flip(1))[0].flip(1)
        return self.block(x)[0]


class ViL(nn.Module):
    def __init__(self, cfg: ViLConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_channels, cfg.dim)
        kw = dict(num_heads=cfg.num_heads, proj_factor=cfg.proj_factor, conv1d_kernel_size=cfg.conv_kernel_size,
                  qkv_proj_blocksize=cfg.qkv_proj_blocksize, num_blocks=cfg.depth, backend=cfg.backend,
                  chunk_size=cfg.chunk_size, round_proj_up_to_multiple_of=cfg.num_heads * cfg.qkv_proj_blocksize)
        self.blocks = nn.ModuleList(ViLBlock(cfg.dim, reverse=bool(i % 2), fused_glue=cfg.fused_glue, **kw)
                                    for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim * (2 if cfg.pooling == "bilateral_concat" else 1), cfg.num_classes)

    def features(self, images: Tensor) -> Tensor:
        x = self.patch(images) + self.patch.pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, x: Tensor) -> Tensor:
        if self.cfg.pooling == "bilateral_avg":
            return (x[:, 0] + x[:, -1]) / 2
        if self.cfg.pooling == "bilateral_concat":
            return torch.cat([x[:, 0], x[:, -1]], dim=-1)
        return x.mean(1)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) -> logits (B, num_classes)."""
        return self.head(self.pool(self.features(images)))
