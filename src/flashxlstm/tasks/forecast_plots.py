"""Forecast plots of the evaluation (matplotlib, Agg backend): one figure per dataset, one panel per model, each
showing the end of the context, the truth, the median and the 10-90 % (outer quantiles) interval."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_windows(examples: dict, quantiles, folder: str | Path, tail_horizons: int = 4) -> list[Path]:
    """examples[dataset] = {"context": (T,), "target": (H,), "forecasts": {model: (H, Q)}} -> folder/<dataset>.png"""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("forecast plots need matplotlib: pip install 'flashxlstm[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    qs = list(quantiles)
    lo, med, hi = 0, qs.index(0.5), len(qs) - 1
    paths = []
    for name, ex in examples.items():
        target, forecasts = np.asarray(ex["target"]), ex["forecasts"]
        H = len(target)
        context = np.asarray(ex["context"])[-tail_horizons * H:]
        t_ctx = np.arange(-len(context), 0)
        t_fut = np.arange(H)
        n = len(forecasts)
        cols = min(n, 3)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False, sharey=True)
        for ax, (model, fc) in zip(axes.flat, forecasts.items()):
            ax.plot(t_ctx, context, color="black", lw=1)
            ax.plot(t_fut, target, color="black", lw=1, ls="--", label="truth")
            ax.fill_between(t_fut, fc[:, lo], fc[:, hi], color="tab:blue", alpha=0.25,
                            label=f"{qs[lo]:.0%}-{qs[hi]:.0%}")
            ax.plot(t_fut, fc[:, med], color="tab:blue", lw=1.3, label="median")
            ax.axvline(-0.5, color="grey", lw=0.5)
            ax.set_title(model, fontsize=9)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7, loc="upper left")
        fig.suptitle(f"{name}: last window of the first series", fontsize=10)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
