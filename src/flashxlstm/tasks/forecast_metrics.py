"""Forecast accuracy: MASE, weighted quantile loss, and geometric means of ratios to seasonal naive.

Definitions (as in the Chronos and GIFT-Eval papers; numpy, float64):
- pinball (quantile) loss of a quantile forecast f at level q for the truth y: max(q * (y - f), (q - 1) * (y - f)).
- MASE of one window: mean over the horizon of |y - median| divided by the in-sample mean absolute error of the
  seasonal naive forecast on that window's context: mean_t |x_t - x_{t-m}| over t = m .. len(context) - 1.
  A dataset's MASE is the mean over its windows; a window whose context has a zero scale (constant over every
  season) has no MASE and is left out of the mean (the count is reported).
- WQL of a dataset: sum over quantiles, windows and horizon steps of 2 * pinball, divided by the number of
  quantiles and by the sum of |y| over windows and steps (Chronos' weighted quantile loss; with a single
  median it is the weighted absolute percentage error).
- A model's score on the suite: the geometric mean over datasets of its metric divided by seasonal naive's.
"""
from __future__ import annotations

import math

import numpy as np

QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def pinball_loss(y: np.ndarray, forecast: np.ndarray, quantiles) -> np.ndarray:
    """Elementwise pinball loss; `forecast` (..., Q) against `y` (...), quantile levels `quantiles` (Q,)."""
    q = np.asarray(quantiles, dtype=np.float64)
    diff = np.asarray(y, dtype=np.float64)[..., None] - np.asarray(forecast, dtype=np.float64)
    return np.maximum(q * diff, (q - 1.0) * diff)


def seasonal_scale(context: np.ndarray, season: int) -> float:
    """In-sample mean absolute error of the seasonal naive forecast on `context` (the MASE denominator)."""
    x = np.asarray(context, dtype=np.float64)
    if season < 1:
        raise ValueError(f"season must be >= 1, got {season}")
    if x.size <= season:
        raise ValueError(f"a context of {x.size} points has no seasonal naive error at season {season}: "
                         f"it needs more than {season} points")
    return float(np.nanmean(np.abs(x[season:] - x[:-season])))


def mase(y: np.ndarray, median: np.ndarray, context: np.ndarray, season: int) -> float:
    """MASE of one window; NaN when the context's seasonal naive error is zero."""
    scale = seasonal_scale(context, season)
    err = float(np.mean(np.abs(np.asarray(y, dtype=np.float64) - np.asarray(median, dtype=np.float64))))
    return err / scale if scale > 0 else math.nan


def wql(ys, forecasts, quantiles) -> float:
    """Weighted quantile loss over windows: ys[i] (H_i,), forecasts[i] (H_i, Q)."""
    num = sum(float(pinball_loss(y, f, quantiles).sum()) for y, f in zip(ys, forecasts, strict=True))
    den = sum(float(np.abs(np.asarray(y, dtype=np.float64)).sum()) for y in ys)
    if den == 0:
        raise ValueError("WQL is undefined when every target value is 0")
    return 2.0 * num / (len(quantiles) * den)


def dataset_scores(ys, forecasts, contexts, season: int, quantiles) -> dict:
    """MASE (mean over windows, on the median) and WQL of one model on one dataset's windows."""
    qs = list(quantiles)
    if 0.5 not in qs:
        raise ValueError(f"the median (0.5) must be among the quantiles, got {qs}")
    med = qs.index(0.5)
    per_window = [mase(y, f[:, med], c, season) for y, f, c in zip(ys, forecasts, contexts, strict=True)]
    valid = [m for m in per_window if not math.isnan(m)]
    return {"mase": float(np.mean(valid)) if valid else math.nan, "wql": wql(ys, forecasts, qs),
            "windows": len(per_window), "windows_without_mase": len(per_window) - len(valid)}


def geometric_mean(values) -> float:
    """exp(mean(log v)); NaN when empty or when a value is not a positive finite number."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        return math.nan
    return float(np.exp(np.mean(np.log(v))))


def relative_geomean(scores: dict[str, dict[str, float]], model: str, baseline: str, metric: str) -> float:
    """Geometric mean over datasets of scores[dataset][model][metric] / scores[dataset][baseline][metric]."""
    return geometric_mean(s[model][metric] / s[baseline][metric] for s in scores.values())
