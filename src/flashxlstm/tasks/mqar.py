"""Multi-query associative recall (MQAR), in the construction of Zoology (Arora et al. 2023).

A sequence of `context_length` tokens starts with `num_kv_pairs` key-value pairs (k1 v1 k2 v2 ...; keys are
distinct and drawn from [1, vocab/2), values are distinct and drawn from [vocab/2, vocab)). The rest of the
sequence is filler (token 0, or random tokens with `random_non_queries`) in which every key is queried once:
the key sits at an even offset 2*g after the pairs, with gaps g drawn without replacement from a power law
p(g) proportional to g^(a-1) (a = `power_a`, 0.01 by default, so most queries come soon after the pairs).
The target at a query position is the value of its key; every other target is IGNORE (-1), so loss and
accuracy count only the value predictions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

IGNORE = -1


@dataclass(frozen=True)
class MQARConfig:
    vocab_size: int = 8192
    num_kv_pairs: int = 16
    context_length: int = 256
    power_a: float = 0.01
    random_non_queries: bool = False

    def __post_init__(self) -> None:
        if self.num_kv_pairs < 1:
            raise ValueError(f"num_kv_pairs must be >= 1, got {self.num_kv_pairs}")
        if self.context_length % 2:
            raise ValueError(f"context_length must be even, got {self.context_length}")
        if 4 * self.num_kv_pairs > self.context_length:
            raise ValueError(f"context_length {self.context_length} is too short for {self.num_kv_pairs} pairs: "
                             f"need at least 4 * num_kv_pairs = {4 * self.num_kv_pairs} tokens")
        if self.vocab_size // 2 - 1 < self.num_kv_pairs:
            raise ValueError(f"vocab_size {self.vocab_size} has fewer than num_kv_pairs={self.num_kv_pairs} "
                             f"distinct keys; need vocab_size >= {2 * self.num_kv_pairs + 2}")
        if not self.power_a > 0:
            raise ValueError(f"power_a must be > 0, got {self.power_a}")

    @property
    def random_accuracy(self) -> float:
        """Chance of guessing a value when the model at least knows values live in [vocab/2, vocab)."""
        return 1.0 / (self.vocab_size - self.vocab_size // 2)


def gap_distribution(space: int, power_a: float) -> np.ndarray:
    """p(g) for g = 0..space-1, proportional to (g + 1)^(a - 1)."""
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1.0)
    return p / p.sum()


def _distinct(rng: np.random.Generator, batch_size: int, low: int, high: int, k: int) -> np.ndarray:
    """(batch_size, k) rows of k distinct integers from [low, high), each row a uniformly random ordered
    k-subset. Large pools: uniform draws, rows with a repeat drawn again; small pools: the k smallest of
    uniform keys, shuffled."""
    pool = high - low
    if pool >= 8 * k:
        out = rng.integers(low, high, size=(batch_size, k))
        while True:
            s = np.sort(out, axis=1)
            bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
            if bad.size == 0:
                return out
            out[bad] = rng.integers(low, high, size=(bad.size, k))
    picked = np.argpartition(rng.random((batch_size, pool)), k - 1, axis=1)[:, :k] if k < pool else \
        np.tile(np.arange(pool), (batch_size, 1))
    return rng.permuted(picked, axis=1) + low


def sample_mqar(cfg: MQARConfig, rng: np.random.Generator, batch_size: int) -> tuple[Tensor, Tensor]:
    """(input_ids, targets), both (B, context_length) int64; targets are IGNORE except at query positions.

    Vectorised over the batch: the gaps are drawn without replacement from p(g) by the Gumbel-top-k trick
    (the K largest of log p(g) + Gumbel noise), which has the distribution of drawing them one after another.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    K, T, V = cfg.num_kv_pairs, cfg.context_length, cfg.vocab_size
    half = V // 2
    pairs = 2 * K
    space = (T - pairs) // 2
    log_p = np.log(gap_distribution(space, cfg.power_a))
    keys = _distinct(rng, batch_size, 1, half, K)
    values = _distinct(rng, batch_size, half, V, K)
    scores = log_p + rng.gumbel(size=(batch_size, space))
    gaps = np.argpartition(-scores, K - 1, axis=1)[:, :K] if K < space else np.tile(np.arange(space), (batch_size, 1))
    inputs = np.zeros((batch_size, T), dtype=np.int64)
    targets = np.full((batch_size, T), IGNORE, dtype=np.int64)
    inputs[:, 0:pairs:2], inputs[:, 1:pairs:2] = keys, values
    rows = np.arange(batch_size)[:, None]
    query_pos = pairs + 2 * gaps
    inputs[rows, query_pos] = keys
    targets[rows, query_pos] = values
    if cfg.random_non_queries:
        filler = inputs == 0
        inputs[filler] = rng.integers(0, V, size=int(filler.sum()))
    return torch.from_numpy(inputs), torch.from_numpy(targets)
