"""The one training loop every trainer in flashxlstm runs: the byte-level job (`training.loop`), token-shard
runs under torchrun (`training.lm`) and the synthetic experiments (`tasks.harness`).

It owns what every run does the same way: the learning rate of each step, autocast, gradient accumulation
(with gradient synchronisation only on the last micro-batch under DDP / FSDP), clipping, the optimiser step,
a loss that is checked for NaN / inf, the evaluation cadence, Ctrl-C, and stopping on a time limit. What a run
reads and how it computes a loss (carried recurrent states, packed documents, masked targets) is the caller's
`loss_fn`; what it does at an evaluation (metrics, checkpoints) is the caller's `on_eval`.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from .schedule import set_lr

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """The torch device a run trains on: "auto" (CUDA when there is one, else CPU), cpu, cuda or cuda:N; anything
    else, or CUDA where there is none, is a ValueError naming what is accepted."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} cannot train or generate (no real storage or no kernels there); "
                         "expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return dev


def autocast(device: torch.device | str, amp: str = "none"):
    """The autocast context of `amp` ("none": float32, "bf16": bfloat16 autocast, weights stay float32)."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _no_sync(model: nn.Module, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch (DDP's no_sync, FSDP2's
    set_requires_gradient_sync); a plain module needs nothing."""
    if last:
        return nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        @contextlib.contextmanager
        def off():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        return off()
    return nullcontext()


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[int], Tensor], *,
                   lr: float, accum_steps: int = 1, grad_clip: float = 0.0, step: int | None = None,
                   check_finite: bool = True) -> tuple[Tensor, Tensor | None]:
    """One optimiser step at learning rate `lr` over `accum_steps` micro-batches.

    loss_fn(micro) returns the mean loss of micro-batch `micro` (it runs the forward pass, under autocast if
    wanted); the gradient is that of the mean over micro-batches. With `check_finite` it raises
    FloatingPointError if a loss is not finite (nothing is updated then); without, the caller checks the
    returned losses itself (no host synchronisation per step). Returns (mean loss, gradient norm before
    clipping or None), detached.
    """
    set_lr(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)
    total = None
    for micro in range(accum_steps):
        with _no_sync(model, micro == accum_steps - 1):
            loss = loss_fn(micro)
            if check_finite and not torch.isfinite(loss):
                where = f" at step {step}" if step is not None else ""
                raise FloatingPointError(f"the training loss became {float(loss)}{where}; try a lower --lr")
            (loss / accum_steps if accum_steps > 1 else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
    optimizer.step()
    return (total / accum_steps if accum_steps > 1 else total), grad_norm


class StopFlag:
    """Ctrl-C sets `stop` (the loop finishes the current step, then stops); a second Ctrl-C aborts."""

    def __init__(self):
        self.stop = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class LoopResult:
    step: int  # steps done in total (start_step included)
    reason: str  # "done", "interrupted", "time limit", "stop_after_step", "budget"
    train_time_s: float = 0.0
    extra: dict = field(default_factory=dict)


def run_loop(*, start_step: int, total_steps: int, do_step: Callable[[int], None], eval_every: int,
             on_eval: Callable[[int], None] | None = None, end_step: int | None = None,
             time_limit_s: float | None = None, started: float | None = None,
             over_budget: Callable[[int], bool] | None = None, catch_ctrl_c: bool = True) -> LoopResult:
    """Call `do_step(step)` for step = start_step .. end_step - 1 (end_step defaults to total_steps) and
    `on_eval(step + 1)` after every `eval_every`-th step and after the last of `total_steps`.

    Stops early, after the current step, on Ctrl-C ("interrupted"), when `time_limit_s` seconds have passed
    since `started` ("time limit"), or when `over_budget(steps_done)` says so ("budget", evaluated first).
    """
    started = time.perf_counter() if started is None else started
    end_step = total_steps if end_step is None else min(end_step, total_steps)
    step, reason, train_time = start_step, "done", 0.0
    with StopFlag() if catch_ctrl_c else nullcontext() as flag:
        while step < end_step:
            t0 = time.perf_counter()
            do_step(step)
            train_time += time.perf_counter() - t0
            step += 1
            budget_hit = over_budget is not None and step < total_steps and over_budget(step)
            if on_eval is not None and (step % eval_every == 0 or step == total_steps or budget_hit):
                on_eval(step)
            if budget_hit:
                reason = "budget"
                break
            if flag is not None and flag.stop:
                reason = "interrupted"
                break
            if time_limit_s and step < end_step and time.perf_counter() - started > time_limit_s:
                reason = "time limit"
                break
    if reason == "done" and step < total_steps:
        reason = "stop_after_step"
    return LoopResult(step=step, reason=reason, train_time_s=train_time)
