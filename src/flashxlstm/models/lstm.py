"""A plain multi-layer LSTM language model (torch.nn.LSTM): the classic recurrent baseline.

Embedding -> `num_layers` stacked LSTM layers -> linear head. `forward(input_ids) -> logits`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class LSTMConfig:
    vocab_size: int
    embedding_dim: int = 128
    num_layers: int = 2


class LSTMLM(nn.Module):
    """Token ids (B, S) -> next-token logits (B, S, vocab_size)."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        if cfg.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {cfg.num_layers}")
        self.config = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim)
        self.lstm = nn.LSTM(cfg.embedding_dim, cfg.embedding_dim, num_layers=cfg.num_layers, batch_first=True)
        self.head = nn.Linear(cfg.embedding_dim, cfg.vocab_size)

    def forward(self, input_ids: Tensor) -> Tensor:
        h, _ = self.lstm(self.embedding(input_ids))
        return self.head(h)
