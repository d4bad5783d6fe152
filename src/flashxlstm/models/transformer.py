"""A small Llama-style Transformer language model: the attention baseline of the synthetic experiments.

Pre-norm blocks of RMSNorm -> causal multi-head attention with rotary position embeddings (RoPE, computed on
the fly for any length, so longer test sequences need no table) through `scaled_dot_product_attention`,
then RMSNorm -> SwiGLU MLP; a final RMSNorm and an untied LM head. `forward(input_ids) -> logits`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class TransformerConfig:
    vocab_size: int
    embedding_dim: int = 128
    num_blocks: int = 2
    num_heads: int = 4
    mlp_ratio: float = 8 / 3
    rope_base: float = 10000.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} is not divisible by num_heads {self.num_heads}")
        if (self.embedding_dim // self.num_heads) % 2:
            raise ValueError(f"head dim {self.embedding_dim // self.num_heads} must be even for RoPE")

    @property
    def hidden_dim(self) -> int:
        return 8 * ((int(self.mlp_ratio * self.embedding_dim) + 7) // 8)


def rotary(x: Tensor, base: float) -> Tensor:
    """Apply RoPE to x (B, NH, S, DH), rotating the pairs (i, i + DH/2) by position * base^(-2i/DH)."""
    S, DH = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, DH, 2, device=x.device, dtype=torch.float32) / DH)
    angles = torch.arange(S, device=x.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : DH // 2], x[..., DH // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.num_heads, self.rope_base = cfg.num_heads, cfg.rope_base
        self.qkv = nn.Linear(cfg.embedding_dim, 3 * cfg.embedding_dim, bias=False)
        self.out = nn.Linear(cfg.embedding_dim, cfg.embedding_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(q, self.rope_base), rotary(k, self.rope_base)
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(h.transpose(1, 2).reshape(B, S, D))


class SwiGLU(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.embedding_dim, 2 * cfg.hidden_dim, bias=False)
        self.down = nn.Linear(cfg.hidden_dim, cfg.embedding_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.embedding_dim, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.embedding_dim, eps=cfg.eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TransformerLM(nn.Module):
    """Token ids (B, S) -> next-token logits (B, S, vocab_size)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.num_blocks))
        self.norm = nn.RMSNorm(cfg.embedding_dim, eps=cfg.eps)
        self.head = nn.Linear(cfg.embedding_dim, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.embedding_dim ** -0.5
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # Residual-branch outputs are scaled down with depth, as in GPT-2 / Llama inits.
                scale = (2 * self.config.num_blocks) ** -0.5 if name.endswith(("out.weight", "down.weight")) else 1.0
                nn.init.normal_(p, std=std * scale)
            else:
                nn.init.ones_(p)

    def forward(self, input_ids: Tensor) -> Tensor:
        x = self.embedding(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
