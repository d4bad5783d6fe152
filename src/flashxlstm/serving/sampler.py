"""The next token of every row of a decode batch, chosen on the device in one set of batched tensor ops.

    sampler = RowSampler(capacity=64, device)
    sampler.set_row(row, params, seed)            # a request joins the batch at `row` (its first token drawn)
    tokens = sampler.choose(logits (n, V))        # rows 0..n-1 -> token ids (n,) int64, still on the device
    sampler.move(src, dst)                        # compaction when a row retires

Nothing here reads a value on the host, so a decode step and its token choice queue up on the device without
waiting for each other, and the host learns the tokens later (engine.py copies them out asynchronously).

Greedy rows (temperature 0) take `logits.float().argmax(-1)`, the choice `generate(do_sample=False)` makes.
Sampling rows scale by their temperature, keep their top-k, then the smallest set whose probability reaches
their top-p (generate's filter, generation.sampling.sorted_filtered, with per-row settings), and draw by
inverting the cumulative distribution with one uniform number.
That number is a hash of (the request's seed, how many tokens the request has drawn), computed with integer
arithmetic that is exact on every device: a request's draws depend on its seed and its own logits only, not
on which rows share its batch or in which order, so a seeded request is reproducible. It is not the
`torch.Generator` stream `generate` draws from (a per-request generator cannot drive a batched draw).
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
from torch import Tensor

from ..generation.sampling import sorted_filtered
from .params import SamplingParams

MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32) without int64 overflow: the product is split in 16-bit halves."""
    hi = ((x >> 16) * c) & 0xFFFF  # only the low 16 bits of the high half's product survive the shift by 16
    return ((hi << 16) + (x & 0xFFFF) * c) & MASK32


def hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer (lowbias32 by Chris Wellons) on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform(seed: Tensor, position: Tensor) -> Tensor:
    """One number in (0, 1) per (seed, position) pair (int64 tensors of one shape; seeds in [0, 2**63))."""
    h = hash32(seed & MASK32)
    h = hash32(h ^ ((seed >> 32) & MASK32))
    h = hash32(h ^ (position & MASK32))
    return ((h >> 8).double() + 0.5) / float(1 << 24)  # 24 bits: every value is exact in float32 as well


def draw(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, u: Tensor) -> Tensor:
    """logits (n, V); per row temperature (> 0 to sample; <= 0 greedy), top_k (<= 0: off), top_p (1: off) and a
    uniform number u in (0, 1) -> token ids (n,) int64. Only batched tensor ops, no host reads. The filter is
    generate's own (generation.sampling.sorted_filtered), per row."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    scaled = logits / torch.where(temperature > 0, temperature, torch.ones_like(temperature))[:, None]
    ordered, order = sorted_filtered(scaled, top_k, top_p)
    probs = torch.softmax(ordered, dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    target = (u.to(cdf.dtype) * cdf[:, -1])[:, None]
    index = torch.searchsorted(cdf, target, right=True)  # the first token whose cdf passes u
    kept = (probs > 0).sum(dim=-1, keepdim=True)  # kept tokens are a prefix of the order; u * total rounding
    index = torch.minimum(index, kept - 1)  # up to the total never reaches a dropped token
    sampled = order.gather(1, index).squeeze(1)
    return torch.where(temperature > 0, sampled, greedy)


class RowSampler:
    """Per-row sampling settings of a decode batch, kept on the device next to the rows' states."""

    def __init__(self, capacity: int, device: torch.device):
        self.device = torch.device(device)
        self.temperature = torch.zeros(capacity, device=device)
        self.top_k = torch.zeros(capacity, dtype=torch.long, device=device)
        self.top_p = torch.ones(capacity, device=device)
        self.seed = torch.zeros(capacity, dtype=torch.long, device=device)
        self.position = torch.zeros(capacity, dtype=torch.long, device=device)  # tokens the row's request drew
        self._sampling = [False] * capacity  # host copy of `temperature > 0`, to skip the sort when no row samples

    @staticmethod
    def request_seed(params: SamplingParams) -> int:
        """The request's seed, or a fresh random one (non-negative, 63 bits)."""
        return params.seed % (1 << 63) if params.seed is not None else random.SystemRandom().getrandbits(63)

    def _tensors(self, params: Sequence[SamplingParams], seeds: Sequence[int], positions: Sequence[int]):
        cpu = dict(device="cpu")
        t = torch.tensor([float(p.temperature) for p in params], dtype=torch.float32, **cpu)
        k = torch.tensor([int(p.top_k or 0) for p in params], dtype=torch.long, **cpu)
        p_ = torch.tensor([1.0 if p.top_p is None else float(p.top_p) for p in params], dtype=torch.float32, **cpu)
        s = torch.tensor(list(seeds), dtype=torch.long, **cpu)
        pos = torch.tensor(list(positions), dtype=torch.long, **cpu)
        return [x.to(self.device, non_blocking=True) for x in (t, k, p_, s, pos)]

    def choose_for(self, logits: Tensor, params: Sequence[SamplingParams], seeds: Sequence[int],
                   positions: Sequence[int]) -> Tensor:
        """Tokens for rows that are not in the batch yet (a prompt's first token): settings given per row."""
        if not any(not p.greedy for p in params):
            return logits.float().argmax(dim=-1)
        t, k, p, s, pos = self._tensors(params, seeds, positions)
        return draw(logits, t, k, p, uniform(s, pos))

    def set_row(self, row: int, params: SamplingParams, seed: int, position: int) -> None:
        """Row `row` now serves a request with these settings that has drawn `position` tokens."""
        t, k, p, s, pos = self._tensors([params], [seed], [position])
        for buf, v in zip((self.temperature, self.top_k, self.top_p, self.seed, self.position), (t, k, p, s, pos)):
            buf[row:row + 1].copy_(v)
        self._sampling[row] = not params.greedy

    def move(self, src: int, dst: int) -> None:
        if src != dst:
            for buf in (self.temperature, self.top_k, self.top_p, self.seed, self.position):
                buf[dst].copy_(buf[src])
            self._sampling[dst] = self._sampling[src]

    def choose(self, logits: Tensor) -> Tensor:
        """logits (n, V) of rows 0..n-1 -> their next tokens (n,) on the device; each row's count advances."""
        n = logits.shape[0]
        if any(self._sampling[:n]):
            tokens = draw(logits, self.temperature[:n], self.top_k[:n], self.top_p[:n],
                          uniform(self.seed[:n], self.position[:n]))
        else:
            tokens = logits.float().argmax(dim=-1)
        self.position[:n] += 1
        return tokens
