"""One training loop for every synthetic experiment: any model with `logits = model(input_ids)`, any task that
can draw a training batch from a numpy Generator and offers fixed evaluation sets.

The loop is AdamW (weight decay on weight matrices only) with linear warm-up and cosine decay to
`lr * min_lr_factor`, gradient clipping, and cross-entropy on the non-ignored targets. It evaluates every
`eval_every` steps and at the end, and returns a plain dict (JSON-ready) with the learning curve.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training.schedule import set_lr, warmup_cosine_lr

IGNORE = -1

Batch = tuple[Tensor, Tensor]
BatchSampler = Callable[[np.random.Generator], Batch]


@dataclass
class TrainConfig:
    steps: int = 2000
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_factor: float = 1e-3
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine towards lr * min_lr_factor,
    which the cosine would reach one step after the last (so the final step still learns)."""
    return warmup_cosine_lr(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps + 1,
                            min_lr=cfg.lr * cfg.min_lr_factor)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weight matrices of linear / recurrent layers; not embeddings, norms or biases."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def masked_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Batch], device: str) -> dict[str, float]:
    """Loss and accuracy (arg-max over the vocabulary) on the target positions of fixed batches."""
    model.eval()
    correct = counted = 0
    loss_sum = 0.0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        keep = y != IGNORE
        n = int(keep.sum())
        loss_sum += float(masked_loss(logits, y)) * n
        correct += int(((logits.argmax(-1) == y) & keep).sum())
        counted += n
    model.train()
    if counted == 0:
        raise ValueError("evaluation batches contain no target positions")
    return {"loss": loss_sum / counted, "accuracy": correct / counted}


def train(model: nn.Module, sample: BatchSampler, eval_sets: dict[str, list[Batch]], cfg: TrainConfig,
          log: Callable[[str], None] | None = None,
          on_eval: Callable[[list[dict]], None] | None = None) -> dict:
    """Train `model` on batches from `sample(rng)` and evaluate on `eval_sets`; returns the history dict.

    The history holds, per evaluation, the step, learning rate, mean training loss / accuracy since the last
    evaluation, and loss / accuracy on each eval set; plus wall time and step time. `on_eval(history)` is
    called after every evaluation (e.g. to save partial results of a long run).
    """
    device = cfg.device
    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    rng = np.random.default_rng([cfg.seed, 0])
    history: list[dict] = []
    window_loss = window_correct = window_count = window_steps = 0
    start = time.perf_counter()
    train_time = 0.0
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        set_lr(optimizer, lr_at(step, cfg))
        x, y = sample(rng)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = masked_loss(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        train_time += time.perf_counter() - t0
        with torch.no_grad():
            keep = y != IGNORE
            window_correct += int(((logits.argmax(-1) == y) & keep).sum())
            window_count += int(keep.sum())
            window_loss += float(loss)
            window_steps += 1
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            point = {"step": step + 1, "lr": lr_at(step, cfg), "train_loss": window_loss / window_steps,
                     "train_batch_accuracy": window_correct / max(window_count, 1)}
            for name, batches in eval_sets.items():
                for key, value in evaluate(model, batches, device).items():
                    point[f"{name}_{key}"] = value
            history.append(point)
            window_loss = window_correct = window_count = window_steps = 0
            point["elapsed_s"] = time.perf_counter() - start
            if log is not None:
                log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()))
            if on_eval is not None:
                on_eval(history)
    wall = time.perf_counter() - start
    return {"history": history, "wall_time_s": wall, "train_time_s": train_time,
            "step_time_ms": 1000 * train_time / cfg.steps, "train_config": asdict(cfg),
            "num_parameters": sum(p.numel() for p in model.parameters())}
