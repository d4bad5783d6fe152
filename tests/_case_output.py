"""What the interpreter case scripts print: one JSON line per case, which conftest.run_interpreter_cases reads
back by case name, and the relative error their entries hold."""
from __future__ import annotations

import json

import torch


def emit(name: str, **values) -> None:
    print(json.dumps(dict(case=name, **values)), flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
