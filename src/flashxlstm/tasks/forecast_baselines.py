"""Statistical baselines of the forecast evaluation, each a function (contexts, horizon, season, quantiles) ->
(N, horizon, Q) quantile forecasts.

- seasonal naive (ours, exact; numpy): the value one season back, repeated; quantiles from a normal around it
  with sigma_h = sigma * sqrt(k + 1), k = floor((h - 1) / m), sigma the root mean square of the in-sample
  seasonal differences (Hyndman & Athanasopoulos, FPP3 5.5; statsforecast's SeasonalNaive gives the same).
- AutoETS, AutoARIMA, AutoTheta from statsforecast (`pip install flashxlstm[forecast]`): their prediction
  intervals at the levels 100 * (1 - 2q) become the quantiles q and 1 - q, their mean the median.
A model that fails on a window (statsforecast raises on some degenerate contexts) falls back to seasonal naive
for that window; the number of fallbacks is returned in `info`.
"""
from __future__ import annotations

import math
import warnings
from statistics import NormalDist

import numpy as np

STATSFORECAST_MODELS = {"auto_ets": "AutoETS", "auto_arima": "AutoARIMA", "auto_theta": "AutoTheta"}


def seasonal_naive_point(context: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """y_hat[T + h] = y[T + h - m * (floor((h - 1) / m) + 1)], h = 1..horizon."""
    x = np.asarray(context, dtype=np.float64)
    if x.size < season:
        raise ValueError(f"seasonal naive needs at least one season ({season} points), got {x.size}")
    last = x[x.size - season:]
    return np.array([last[h % season] for h in range(horizon)])


def seasonal_naive(contexts, horizon: int, season: int, quantiles) -> np.ndarray:
    """(N, horizon, Q) seasonal naive quantile forecasts (see the module doc)."""
    z = np.array([NormalDist().inv_cdf(q) for q in quantiles])
    k = np.arange(horizon) // season
    out = []
    for c in contexts:
        x = np.asarray(c, dtype=np.float64)
        point = seasonal_naive_point(x, horizon, season)
        diffs = x[season:] - x[:-season]
        sigma = math.sqrt(float(np.mean(diffs ** 2))) if diffs.size else 0.0
        out.append(point[:, None] + (sigma * np.sqrt(k + 1.0))[:, None] * z[None, :])
    return np.stack(out)


def _levels(quantiles) -> list[int]:
    levels = set()
    for q in quantiles:
        if q != 0.5:
            level = round(100 * abs(1 - 2 * q), 6)
            if not float(level).is_integer():
                raise ValueError(f"quantile {q} needs a prediction interval at level {level}; statsforecast "
                                 f"takes whole-number levels")
            levels.add(int(level))
    return sorted(levels)


def statsforecast_model(name: str, season: int):
    """A fresh statsforecast model object by our name (auto_ets, auto_arima, auto_theta)."""
    try:
        import statsforecast.models as sfm
    except ImportError as e:
        raise ImportError("the AutoETS / AutoARIMA / AutoTheta baselines need statsforecast: "
                          "pip install 'flashxlstm[forecast]'") from e
    if name not in STATSFORECAST_MODELS:
        raise ValueError(f"unknown statsforecast baseline {name!r}; known: {', '.join(STATSFORECAST_MODELS)}")
    return getattr(sfm, STATSFORECAST_MODELS[name])(season_length=season)


def statsforecast_quantiles(name: str, contexts, horizon: int, season: int, quantiles, info: dict | None = None):
    """(N, horizon, Q) quantiles of a statsforecast model fitted to each context alone."""
    levels = _levels(quantiles)
    out = []
    for c in contexts:
        x = np.asarray(c, dtype=np.float64)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = statsforecast_model(name, season).forecast(y=x, h=horizon, level=levels)
            cols = []
            for q in quantiles:
                if q == 0.5:
                    cols.append(np.asarray(res["mean"], dtype=np.float64))
                else:
                    level = int(round(100 * abs(1 - 2 * q)))
                    cols.append(np.asarray(res[f"{'lo' if q < 0.5 else 'hi'}-{level}"], dtype=np.float64))
            f = np.stack(cols, axis=-1)
            if f.shape != (horizon, len(quantiles)) or not np.all(np.isfinite(f)):
                raise FloatingPointError(f"{name} returned a non-finite or misshapen forecast")
        except Exception:  # noqa: BLE001 - any fitting failure: this window falls back, and it is counted
            if info is not None:
                info["fallbacks"] = info.get("fallbacks", 0) + 1
            f = seasonal_naive([x], horizon, season, quantiles)[0]
        out.append(np.sort(f, axis=-1))
    return np.stack(out)
