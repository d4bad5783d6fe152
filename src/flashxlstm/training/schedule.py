"""Learning-rate schedule (linear warmup then cosine decay) and AdamW's parameter groups (the paper's decay rule)."""
from __future__ import annotations

import math

import torch
from torch import nn


def cosine_decay(progress: float, *, lr: float, min_lr: float) -> float:
    """A half cosine from `lr` at progress 0 to `min_lr` at progress 1 (clamped to [0, 1])."""
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def run_progress(step: int, elapsed_s: float, *, steps: int, time_budget_s: float | None) -> float:
    """How far a run capped at `steps` optimiser steps and, optionally, `time_budget_s` seconds is, in [0, 1+):
    the larger of the step and the time fraction (the run ends at 1, whichever cap comes first)."""
    time_part = elapsed_s / time_budget_s if time_budget_s else 0.0
    return max(step / steps, time_part)


def warmup_cosine_at(step: int, progress: float, *, lr: float, warmup_steps: int, min_lr: float) -> float:
    """A run's learning rate at optimiser step `step` (0-based) and `progress` (`run_progress`): a linear
    warm-up over the first `warmup_steps` steps times a half cosine from `lr` to `min_lr` over the progress."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    return warm * cosine_decay(progress, lr=lr, min_lr=min_lr)


def warmup_cosine_lr(step: int, *, lr: float, warmup_steps: int, total_steps: int, min_lr: float) -> float:
    """The learning rate for optimiser step `step` (0-based).

    Rises linearly from lr / warmup_steps to lr over the first `warmup_steps` steps, then follows a
    half cosine down to `min_lr` at the last step; past `total_steps` it stays at `min_lr`.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    return cosine_decay((step - warmup_steps) / decay_steps, lr=lr, min_lr=min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: the model's own `param_groups(weight_decay)` when it has one (the NeurIPS LM: the official
    decay groups), else decay on every weight matrix of >= 2 dims except embeddings (the 7B family, baselines)."""
    own = getattr(model, "param_groups", None) or getattr(getattr(model, "model", None), "param_groups", None)
    if callable(own):
        return own(weight_decay)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
