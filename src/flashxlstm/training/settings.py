"""The settings every trainer shares, as one dataclass the four run configurations extend: the byte-level job
(`training.config.TrainConfig`), token-shard runs (`training.lm.RunConfig`), the synthetic experiments
(`tasks.harness.TrainConfig`) and the forecaster's pretraining (`training.forecast.PretrainConfig`, whose
`steps` is the cap beside an optional time box). All run the same loop step (`training.engine`), so a setting
they share has one name, one meaning, one check and one optimiser built from it; each configuration keeps its
own defaults and adds only what is its own (data, model, schedule floor, parallelism).

A configuration round-trips through JSON (`to_dict` / `from_dict`, unknown keys refused by name) and is
resumed with `resume_settings`: the saved settings, with only the ones that do not change what the run
computes replaced.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from .schedule import decay_groups

S = TypeVar("S", bound="LoopSettings")


@dataclass
class LoopSettings:
    steps: int = 1000  # optimiser steps in the whole run
    lr: float = 1e-3  # peak learning rate, after the linear warm-up
    warmup_steps: int = 100
    weight_decay: float = 0.1  # AdamW decay on the model's decay group (`schedule.decay_groups`)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # clip the gradient norm to this; 0: no clipping
    eval_every: int = 200
    seed: int = 0
    device: str = "auto"

    def validated(self: S) -> S:
        """Self, after checking every setting (`check`); raises ValueError naming the bad one."""
        self.check()
        return self

    def check(self) -> None:
        """Checks the shared settings; a configuration extends it with its own (calling super().check())."""
        self.check_positive_ints("steps", "eval_every")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0 (0: no clipping), got {self.grad_clip}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))  # JSON gives a list

    def check_positive_ints(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def optimizer(self, model: nn.Module) -> torch.optim.AdamW:
        """AdamW at `lr` with `betas` over the model's decay groups (`schedule.decay_groups`: the model's own
        when it defines them, as the NeurIPS LM does with the paper's)."""
        return torch.optim.AdamW(decay_groups(model, self.weight_decay), lr=self.lr, betas=self.betas,
                                 weight_decay=self.weight_decay)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls: type[S], d: dict) -> S:
        """The configuration `d` (as `to_dict` writes it) describes, checked."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d).validated()


def resume_settings(cls: type[S], saved: dict, overrides: dict, resumable: tuple[str, ...]) -> S:
    """The saved run's settings with `overrides` applied: a name in `resumable` (how the run executes: steps,
    logging, devices) replaces the saved value; any other override must equal it, since it would change what
    the continued run computes. None means "not given"."""
    merged = dict(saved)
    for name, value in overrides.items():
        if value is None:
            continue
        if name == "betas":
            value = list(value)
        if name in resumable:
            merged[name] = value
        elif merged.get(name) != value:
            raise ValueError(f"--resume: {name}={value!r} differs from the saved run's {name}={merged.get(name)!r}; "
                             "drop the option to continue it, or train into a new --out")
    return cls.from_dict(merged)
