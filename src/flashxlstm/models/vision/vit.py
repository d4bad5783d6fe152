"""A DeiT-style ViT baseline: the same patch embedding, a CLS token, pre-norm Transformer encoder layers
(torch's nn.TransformerEncoderLayer: SDPA attention, GELU MLP of `mlp_ratio` x width), final LayerNorm, the
head on the CLS token. `matched_vit` picks the depth whose parameter count is closest to a given model's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .patch import PatchEmbed


@dataclass
class ViTConfig:
    image_size: int | tuple[int, int] = 28
    patch_size: int | tuple[int, int] = 4
    in_channels: int = 1
    num_classes: int = 10
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.depth < 1 or self.dim % self.num_heads:
            raise ValueError(f"ViTConfig: depth must be >= 1 and dim divisible by num_heads, got depth "
                             f"{self.depth}, dim {self.dim}, num_heads {self.num_heads}")


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_channels, cfg.dim, extra_tokens=1)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.dim, cfg.num_heads, dim_feedforward=round(cfg.mlp_ratio * cfg.dim),
                                       dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) -> logits (B, num_classes)."""
        x = self.patch(images)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.patch.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_vit(cfg: ViTConfig, target_params: int, max_depth: int = 48) -> ViTConfig:
    """`cfg` with the depth (1..max_depth) whose ViT has the parameter count closest to `target_params`."""
    one = num_parameters(ViT(replace(cfg, depth=1)))
    per_block = num_parameters(ViT(replace(cfg, depth=2))) - one
    depth = min(max(round((target_params - (one - per_block)) / per_block), 1), max_depth)
    return replace(cfg, depth=depth)
