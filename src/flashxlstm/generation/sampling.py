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


def _per_row(value: int | float | Tensor | None, off: float, rows: int, like: Tensor) -> Tensor | None:
    """A setting as a (B, 1) tensor on the logits' device, or None when it is one value that changes nothing
    (top_k <= 0, top_p >= 1: off = 0 or 1). A tensor setting is (B,) per row and is never read on the host."""
    if value is None:
        return None
    if not isinstance(value, Tensor):
        if (value <= 0) if off == 0 else (value >= off):
            return None
        return torch.full((rows, 1), value, device=like.device)
    if value.shape != (rows,):
        raise ValueError(f"filter_logits: a per-row setting must have shape ({rows},), got {tuple(value.shape)}")
    return value.to(like.device)[:, None]


def sorted_filtered(logits: Tensor, top_k: int | Tensor | None = None,
                    top_p: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """logits (B, V) -> (the logits sorted in descending order with every one outside the row's top-k and
    outside the smallest set whose probability reaches its top-p set to -inf, the order: sorted = logits
    gathered at it). top_k and top_p are one value for all rows or a (B,) tensor per row; top_k <= 0 or None
    and top_p >= 1 or None leave a row alone. Top-k keeps every logit equal to the k-th largest (transformers'
    TopKLogitsWarper); top-p then works on the probabilities of what top-k kept. The most likely token always
    survives. Only tensor ops, no host reads for tensor settings: it runs inside batched decoding as is."""
    B, V = logits.shape
    ordered, order = torch.sort(logits, dim=-1, descending=True)
    k = _per_row(top_k, 0, B, logits)
    if k is not None:
        on = k > 0
        kth = ordered.gather(1, (torch.where(on, k, V).clamp(max=V) - 1).long())
        ordered = ordered.masked_fill(on & (ordered < kth), float("-inf"))
    p = _per_row(top_p, 1.0, B, logits)
    if p is not None:
        probs = torch.softmax(ordered, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability of the strictly more likely tokens
        drop = (p < 1) & (before >= p)
        drop[:, 0] = False  # the most likely token stays, also for top_p <= 0
        ordered = ordered.masked_fill(drop, float("-inf"))
    return ordered, order


def filter_logits(logits: Tensor, top_k: int | Tensor | None = None, top_p: float | Tensor | None = None) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose probability reaches top_p.

    logits: (B, V); top_k, top_p: one value or a (B,) tensor per row (sorted_filtered says how).
    The most likely token always survives.
    """
    if _per_row(top_k, 0, logits.shape[0], logits) is None and _per_row(top_p, 1.0, logits.shape[0], logits) is None:
        return logits
    ordered, order = sorted_filtered(logits, top_k, top_p)
    return torch.empty_like(ordered).scatter_(-1, order, ordered)


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
