"""Choosing the next token from last-position logits: logits processing (repetition penalty, banned tokens),
then greedy, or sampling with temperature, top-k and nucleus (top-p), in transformers' order.

Pure tensor functions: no host synchronisation, so they can run inside a captured decode step.
Seeded sampling is reproducible: pass the same `torch.Generator` state and get the same tokens.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Clear errors for sampling values no draw can use (generate checks the whole keyword set in settings.py)."""
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"generate: temperature must be a finite number > 0, got {temperature!r} "
                         "(use do_sample=False for greedy)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"generate: top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1] or None, got {top_p!r}")


def process_logits(logits: Tensor, *, seen: Tensor | None = None, repetition_penalty: float = 1.0,
                   banned: Tensor | None = None) -> Tensor:
    """logits (B, V) float -> processed logits: tokens in `seen` (B, V) bool penalised as in transformers
    (positive logits divided by the penalty, negative ones multiplied), `banned` ids (e.g. EOS before
    min_new_tokens) set to -inf. Returns a new tensor."""
    if seen is not None and repetition_penalty != 1.0:
        penalised = torch.where(logits < 0, logits * repetition_penalty, logits / repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if banned is not None:
        logits = logits.index_fill(-1, banned, float("-inf"))
    return logits


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose probability reaches top_p.

    logits: (B, V). The most likely token always survives.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of strictly more likely tokens
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sampling_scores(
    logits: Tensor, *, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """The scores (B, V) a token is chosen from: the logits as they are for greedy; for sampling divided by
    the temperature, then top-k, then top-p filtered (-inf outside)."""
    if not do_sample:
        return logits
    return filter_logits(logits.float() / temperature, top_k, top_p)


def pick(scores: Tensor, *, do_sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """scores (B, V) -> token ids (B,) int64: argmax, or a draw from softmax(scores) when do_sample."""
    if not do_sample:
        return scores.argmax(dim=-1)
    return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(-1)


def next_token(
    logits: Tensor, *, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
    top_p: float | None = None, generator: torch.Generator | None = None,
) -> Tensor:
    """logits (B, V) -> next token ids (B,) int64. Greedy (argmax) unless do_sample."""
    scores = sampling_scores(logits, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p)
    return pick(scores, do_sample=do_sample, generator=generator)
