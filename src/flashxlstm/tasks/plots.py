"""Figures of the synthetic experiments (matplotlib, Agg backend): learning curves and the Figure-4 heatmap."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curve(history: list[dict], path: str | Path, title: str, scaled_keys: dict[str, float] | None = None) -> None:
    """Training loss (left) and accuracies (right) against the step; one line per eval set.

    `scaled_keys` maps an accuracy key to its random baseline: that curve is drawn as scaled accuracy.
    """
    steps = [p["step"] for p in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    floor = 1e-9  # a loss of exactly 0 would vanish from the log axis
    ax_loss.plot(steps, [max(p["train_loss"], floor) for p in history], label="train loss")
    for key in history[0]:
        if key.endswith("_loss") and key != "train_loss":
            ax_loss.plot(steps, [max(p[key], floor) for p in history], label=key.replace("_", " "))
    ax_loss.set_xlabel("step"), ax_loss.set_ylabel("cross-entropy"), ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    for key in history[0]:
        if key.endswith("accuracy"):
            values = [p[key] for p in history]
            label = key.replace("_", " ")
            if scaled_keys and key in scaled_keys:
                r = scaled_keys[key]
                values, label = [(v - r) / (1 - r) for v in values], label + " (scaled)"
            ax_acc.plot(steps, values, label=label)
    ax_acc.set_xlabel("step"), ax_acc.set_ylabel("accuracy"), ax_acc.set_ylim(-0.05, 1.05)
    ax_acc.axhline(0.0, color="grey", lw=0.5)
    ax_acc.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heatmap(rows: list[str], cols: list[str], values: list[list[float | None]], path: str | Path, title: str) -> None:
    """Models (rows) x tasks (columns) of scaled accuracy in [0, 1], annotated, in the style of Figure 4."""
    fig, ax = plt.subplots(figsize=(1.2 + 1.05 * len(cols), 0.9 + 0.5 * len(rows)))
    grid = [[float("nan") if v is None else v for v in row] for row in values]
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, "-" if v is None else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(cols)), [c.replace("_", "\n") for c in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
