"""Patch embedding shared by the vision models: a strided conv (kernel = stride = patch size) over the image,
zero-padded on the right and bottom to a multiple of the patch size, plus a learned positional embedding.

images (B, C, H, W) -> tokens (B, N, D), N = ceil(H / p) * ceil(W / p), in row-major patch order.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class PatchEmbed(nn.Module):
    def __init__(self, image_size, patch_size, in_channels: int, dim: int, *, extra_tokens: int = 0):
        super().__init__()
        self.image_size, self.patch_size = _pair(image_size), _pair(patch_size)
        if min(self.image_size) < 1 or min(self.patch_size) < 1 or in_channels < 1 or dim < 1:
            raise ValueError(f"PatchEmbed: image_size {image_size}, patch_size {patch_size}, in_channels "
                             f"{in_channels} and dim {dim} must all be >= 1")
        self.in_channels, self.dim = in_channels, dim
        self.grid = tuple(math.ceil(s / p) for s, p in zip(self.image_size, self.patch_size))
        self.num_patches = self.grid[0] * self.grid[1]
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)
        # extra_tokens: positions for tokens the model prepends (the ViT's CLS token)
        self.pos = nn.Parameter(torch.zeros(1, self.num_patches + extra_tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, images: Tensor) -> Tensor:
        """The patch tokens, without positions (the model adds `self.pos` after any extra tokens)."""
        if images.dim() != 4 or images.shape[1] != self.in_channels or tuple(images.shape[2:]) != self.image_size:
            raise ValueError(f"{type(self).__name__}: expected images of shape (B, {self.in_channels}, "
                             f"{self.image_size[0]}, {self.image_size[1]}), got {tuple(images.shape)}")
        pad_h = self.grid[0] * self.patch_size[0] - self.image_size[0]
        pad_w = self.grid[1] * self.patch_size[1] - self.image_size[1]
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        return self.proj(images).flatten(2).transpose(1, 2)
