"""The loss-curve PNG of a run (matplotlib, headless Agg backend), written atomically."""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..checkpoints.atomic import atomic_file
from .progress import require


def _figure():
    """pyplot on the headless Agg backend and one empty loss axis."""
    matplotlib = require("matplotlib", "plot", "the loss plot")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    return plt, fig, ax


def _save(plt, fig, ax, path: Path, ylabel: str, title: str) -> Path:
    """Label the axis, write the PNG atomically and free the figure."""
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_file(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def plot_loss_curve(history: dict, path: str | os.PathLike, baseline_bpb: float | None = None) -> Path:
    """Training loss (bits per byte, smoothed) and validation bits per byte against the step."""
    plt, fig, ax = _figure()
    train = history.get("train", [])
    if train:
        steps = [r["step"] for r in train]
        bpb = [r["loss"] / math.log(2) for r in train]
        ax.plot(steps, bpb, color="tab:blue", alpha=0.25, linewidth=0.8)
        window = max(1, len(bpb) // 50)
        smooth = [sum(bpb[max(0, i - window + 1): i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(bpb))]
        ax.plot(steps, smooth, color="tab:blue", label="train (smoothed)")
    val = history.get("val", [])
    if val:
        ax.plot([r["step"] for r in val], [r["bpb"] for r in val], "o-", color="tab:orange", label="validation")
    if baseline_bpb is not None:
        ax.axhline(baseline_bpb, color="gray", linestyle="--", linewidth=1, label=f"unigram {baseline_bpb:.2f}")
    return _save(plt, fig, ax, Path(path), "bits per byte", "flashxlstm train")


def plot_curves(history: dict, path: str | os.PathLike) -> Path:
    """Training loss (nats per token) and validation loss against the step, for token-shard runs."""
    plt, fig, ax = _figure()
    train = history.get("train", [])
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", alpha=0.5, label="train")
    val = history.get("val", [])
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", color="tab:orange", label="validation")
    return _save(plt, fig, ax, Path(path), "loss (nats per token)", "flashxlstm train --data")
