"""The synthetic experiments' use of the training loop (`flashxlstm.training.engine`, shared with every other
trainer): any model with `logits = model(input_ids)`, any task that can draw a training batch from a numpy
Generator and offers fixed evaluation sets.

The defaults are the recipe of the official xLSTM experiments (NX-AI/xlstm experiments/main.py): AdamW with
torch's default betas (0.9, 0.999), weight decay on the model's own decay groups (`model.param_groups`, the
official `_create_weight_decay_optim_groups`: not on the sLSTM recurrent matrix, biases, norms or embedding),
linear warm-up then cosine decay to `lr * min_lr_factor`, no gradient clipping (`grad_clip > 0` turns it on),
cross-entropy on the non-ignored targets, optional bf16 autocast (`amp="bf16"`). It evaluates every
`eval_every` steps and at the end, and returns a plain dict (JSON-ready) with the learning curve.

With `time_budget_s` the loop fits the run into a wall-clock budget: it first times a few steps and one
evaluation on a throw-away copy of the model, shrinks the run (steps, warm-up and evaluation interval scaled
together, so the schedule still warms up and decays fully) to what fits, and stops early if it runs over
anyway, still evaluating at the end; the result says "stopped_early".
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training import engine
from ..training.schedule import decay_groups, warmup_cosine_lr
from ..training.settings import LoopSettings

IGNORE = -1

Batch = tuple[Tensor, Tensor]
BatchSampler = Callable[[np.random.Generator], Batch]


@dataclass
class TrainConfig(LoopSettings):
    """The shared loop settings (`training.settings.LoopSettings`) at the official recipe's defaults, plus the
    decay floor as a factor of `lr`, autocast and a wall-clock budget; checked at construction."""
    steps: int = 2000
    betas: tuple[float, float] = (0.9, 0.999)  # torch's default, as the official recipe
    grad_clip: float = 0.0  # no clipping (the official recipe)
    device: str = "cpu"
    min_lr_factor: float = 1e-3  # the cosine decays towards lr * min_lr_factor
    amp: str = "none"  # "none" (float32) or "bf16" (autocast, as the official recipe on CUDA)
    time_budget_s: float | None = None  # wall-clock budget for training + evaluation (None: no limit)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        super().check()
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {self.amp!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 or None, got {self.time_budget_s}")


AMP_DTYPES = engine.AMP_DTYPES


def autocast(cfg: TrainConfig):
    """The autocast context of `cfg.amp` on `cfg.device` (a no-op for "none")."""
    return engine.autocast(cfg.device, cfg.amp)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine towards lr * min_lr_factor,
    which the cosine would reach one step after the last (so the final step still learns)."""
    return warmup_cosine_lr(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps + 1,
                            min_lr=cfg.lr * cfg.min_lr_factor)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups (`training.schedule.decay_groups`): the model's own decay groups when it has them (the
    xLSTM LM: the official ones), else decay on every weight matrix except embeddings (Transformer, LSTM)."""
    return decay_groups(model, weight_decay)


def masked_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Batch], device: str, cfg: TrainConfig | None = None) -> dict[str, float]:
    """Loss and accuracy (arg-max over the vocabulary) on the target positions of fixed batches
    (under `cfg`'s autocast when given)."""
    model.eval()
    correct = counted = 0
    loss_sum = 0.0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(cfg) if cfg is not None else nullcontext():
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


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, cfg: TrainConfig,
          lr: float) -> tuple[Tensor, Tensor]:
    """One optimizer step at learning rate `lr` (`engine.optimizer_step`); returns (logits, loss), detached (no
    host sync: the loop checks the loss for NaN / inf at every evaluation)."""
    out = {}

    def loss_fn(_micro: int) -> Tensor:
        with autocast(cfg):
            out["logits"] = model(x)
            return masked_loss(out["logits"], y)

    loss, _ = engine.optimizer_step(model, optimizer, loss_fn, lr=lr, grad_clip=cfg.grad_clip, check_finite=False)
    return out["logits"].detach(), loss


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fit_to_budget(model: nn.Module, sample: BatchSampler, eval_sets: dict[str, list[Batch]], cfg: TrainConfig,
                  probe_steps: int = 12) -> tuple[TrainConfig, dict]:
    """The run `cfg` shrunk to `cfg.time_budget_s`.

    Times up to `probe_steps` training steps, data included (at least 3, at most ~10 % of the budget; the
    first two are not counted: compilation, allocation) and a pass over the evaluation sets, on a copy of the
    model; then scales steps, warm-up and evaluation interval by the same factor. Returns (fitted cfg,
    measurements)."""
    start = time.perf_counter()
    probe = copy.deepcopy(model).to(cfg.device).train()
    optimizer = cfg.optimizer(probe)
    rng = np.random.default_rng([cfg.seed, 99])  # not the training stream
    times = []
    for k in range(max(probe_steps, 3)):
        t0 = time.perf_counter()
        x, y = sample(rng)
        _step(probe, optimizer, x.to(cfg.device), y.to(cfg.device), cfg, cfg.lr * 1e-3)
        _sync(cfg.device)
        times.append(time.perf_counter() - t0)
        if k >= 2 and time.perf_counter() - start > 0.1 * cfg.time_budget_s:  # probing must stay cheap
            break
    step_s = float(np.median(times[2:]))
    eval_s = 0.0
    for _ in range(2):  # the first pass compiles kernels for the evaluation shapes; the second is timed
        t0 = time.perf_counter()
        for batches in eval_sets.values():
            evaluate(probe, batches, cfg.device, cfg)
        _sync(cfg.device)
        eval_s = time.perf_counter() - t0
        if time.perf_counter() - start > 0.2 * cfg.time_budget_s:
            break
    del probe, optimizer
    spent = time.perf_counter() - start
    num_evals = math.ceil(cfg.steps / cfg.eval_every)
    left = cfg.time_budget_s - spent
    # steps * step_s + num_evals * eval_s must fit into 90 % of what is left (data, logging, jitter).
    fit = int((0.9 * left - num_evals * eval_s) / step_s)
    steps = max(1, min(cfg.steps, fit))
    scale = steps / cfg.steps
    fitted = replace(cfg, steps=steps, warmup_steps=round(cfg.warmup_steps * scale),
                     eval_every=max(1, min(steps, round(cfg.eval_every * scale))))
    return fitted, {"probe_step_time_ms": 1000 * step_s, "probe_eval_time_s": eval_s, "probe_time_s": spent,
                    "requested_steps": cfg.steps, "fitted_steps": steps}


def train(model: nn.Module, sample: BatchSampler, eval_sets: dict[str, list[Batch]], cfg: TrainConfig,
          log: Callable[[str], None] | None = None,
          on_eval: Callable[[list[dict]], None] | None = None) -> dict:
    """Train `model` on batches from `sample(rng)` and evaluate on `eval_sets`; returns the history dict.

    The history holds, per evaluation, the step, learning rate, mean training loss / accuracy since the last
    evaluation, and loss / accuracy on each eval set; plus wall time and step time. `on_eval(history)` is
    called after every evaluation (e.g. to save partial results of a long run). With `cfg.time_budget_s` the
    run is first fitted to the budget (`fit_to_budget`); "train_config" is then the fitted one,
    "requested_train_config" the one asked for, and "stopped_early" says whether it still had to stop early.
    """
    on_eval_cb = on_eval
    device = cfg.device
    model.to(device).train()
    start = time.perf_counter()
    requested, budget = cfg, {}
    if cfg.time_budget_s is not None:
        cfg, budget = fit_to_budget(model, sample, eval_sets, cfg)
        if log is not None:
            log(f"budget {requested.time_budget_s:.0f} s: step {budget['probe_step_time_ms']:.1f} ms, "
                f"eval {budget['probe_eval_time_s']:.1f} s -> {cfg.steps} of {requested.steps} steps "
                f"(warm-up {cfg.warmup_steps}, eval every {cfg.eval_every})")
    optimizer = cfg.optimizer(model)
    rng = np.random.default_rng([cfg.seed, 0])
    history: list[dict] = []
    window = {"loss": 0, "correct": 0, "count": 0, "steps": 0}
    last_eval_s = budget.get("probe_eval_time_s", 0.0)

    def do_step(step: int) -> None:
        x, y = sample(rng)
        x, y = x.to(device), y.to(device)
        logits, loss = _step(model, optimizer, x, y, cfg, lr_at(step, cfg))
        keep = y != IGNORE  # accumulated on the device: no host sync per step
        window["correct"] = window["correct"] + ((logits.argmax(-1) == y) & keep).sum()
        window["count"] = window["count"] + keep.sum()
        window["loss"] = window["loss"] + loss.float()
        window["steps"] += 1

    def on_eval(steps_done: int) -> None:
        nonlocal last_eval_s
        if not math.isfinite(float(window["loss"])):
            raise FloatingPointError(f"the training loss became {float(window['loss'])} between steps "
                                     f"{steps_done + 1 - window['steps']} and {steps_done}; lower the learning rate")
        t_eval = time.perf_counter()
        point = {"step": steps_done, "lr": lr_at(steps_done - 1, cfg),
                 "train_loss": float(window["loss"]) / window["steps"],
                 "train_batch_accuracy": int(window["correct"]) / max(int(window["count"]), 1)}
        for name, batches in eval_sets.items():
            for key, value in evaluate(model, batches, device, cfg).items():
                point[f"{name}_{key}"] = value
        last_eval_s = time.perf_counter() - t_eval
        history.append(point)
        window.update(loss=0, correct=0, count=0, steps=0)
        point["elapsed_s"] = time.perf_counter() - start
        if log is not None:
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()))
        if on_eval_cb is not None:
            on_eval_cb(history)

    def over_budget(_steps_done: int) -> bool:
        return (cfg.time_budget_s is not None
                and time.perf_counter() - start + 1.2 * last_eval_s > cfg.time_budget_s)

    result = engine.run_loop(start_step=0, total_steps=cfg.steps, do_step=do_step, eval_every=cfg.eval_every,
                             on_eval=on_eval, over_budget=over_budget, catch_ctrl_c=False)
    steps_done, train_time = result.step, result.train_time_s
    stopped_early = result.reason == "budget"
    if stopped_early and log is not None:
        log(f"stopped early at step {steps_done} of {cfg.steps}: time budget {cfg.time_budget_s:.0f} s")
    wall = time.perf_counter() - start
    out = {"history": history, "wall_time_s": wall, "train_time_s": train_time,
           "step_time_ms": 1000 * train_time / steps_done, "steps_done": steps_done,
           "stopped_early": stopped_early, "train_config": cfg.to_dict(),
           "num_parameters": sum(p.numel() for p in model.parameters())}
    if budget:
        out.update(requested_train_config=requested.to_dict(), budget=budget)
    return out
