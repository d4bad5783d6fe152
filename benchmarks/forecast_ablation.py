"""One pretraining ablation of the forecaster, step-counted, scored zero-shot on the held-out suite.

    PYTHONPATH=src python benchmarks/forecast_ablation.py TAG '{"real_fraction": 0.6, "model": {"patch_size": 16}}'

Pretrains a small forecaster (dim 64, 2 sLSTM blocks, patch 32, batch 32, context 384 + 64, lr 2e-3, 384
synthetic series of 512 steps, 30 % real batches from .gpu/forecast/pretrain_series.npz or the installed
packages) for a fixed number of steps (400 unless the overrides say "steps"), on one CPU thread, with the
PretrainConfig fields of the JSON overrides replaced ("model": ForecastConfig fields). Then scores it like
`flashxlstm experiment forecast` (the same windows: 3 rolling origins, context <= 1024) against seasonal naive
only, and prints one line: the geometric means of MASE and WQL relative to seasonal naive and the per-dataset
MASE ratios. `--json PATH` also writes them. Equal steps, not equal time: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flashxlstm.data.series import DATASETS, HELD_OUT, load_series
from flashxlstm.models.forecast import ForecastConfig
from flashxlstm.tasks.forecast import make_windows, xlstm_forecaster
from flashxlstm.tasks.forecast_baselines import seasonal_naive
from flashxlstm.tasks.forecast_metrics import QUANTILES, dataset_scores, geometric_mean
from flashxlstm.training.forecast import PretrainConfig, pretrain, pretrain_real_series

BASE = dict(time_budget_s=None, steps=400, batch_size=32, context_length=384, prediction_length=64, lr=2e-3,
            synthetic_count=384, synthetic_length=512, eval_windows=32, eval_every=100_000, log_every=100,
            device="cpu")
BASE_MODEL = dict(patch_size=32, dim=64, num_blocks=2, num_heads=4)
NPZ = Path(".gpu/forecast/pretrain_series.npz")


def held_out_scores(forecast) -> tuple[tuple[float, float], dict[str, tuple[float, float]]]:
    """(MASE, WQL) geometric means relative to seasonal naive, and the per-dataset ratios."""
    rel = {}
    for name in HELD_OUT:
        meta = DATASETS[name]
        w = make_windows(load_series(name), meta.horizon, meta.season, 3, 1024)
        base = dataset_scores(w.targets, list(seasonal_naive(w.contexts, meta.horizon, meta.season, QUANTILES)),
                              w.contexts, meta.season, QUANTILES)
        fc = forecast(w.contexts, meta.horizon, meta.season, QUANTILES)
        s = dataset_scores(w.targets, list(fc), w.contexts, meta.season, QUANTILES)
        rel[name] = (s["mase"] / base["mase"], s["wql"] / base["wql"])
    return (geometric_mean(v[0] for v in rel.values()), geometric_mean(v[1] for v in rel.values())), rel


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tag")
    p.add_argument("overrides", nargs="?", default="{}", help="JSON: PretrainConfig fields (model: ForecastConfig)")
    p.add_argument("--json", help="write the scores here")
    p.add_argument("--save", help="save the pretrained checkpoint here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    over = json.loads(args.overrides)
    model = {**BASE_MODEL, **over.pop("model", {})}
    cfg = PretrainConfig(**{**BASE, **over}, model=ForecastConfig(**model))
    real = None if cfg.real_fraction == 0 else pretrain_real_series(npz=NPZ if NPZ.is_file() else None)
    t0 = time.perf_counter()
    res = pretrain(cfg, None, real_series=real, print_fn=lambda *a: None)
    seconds = time.perf_counter() - t0
    if args.save:
        res.model.save_pretrained(args.save)
    (mase, wql), rel = held_out_scores(xlstm_forecaster(res.model))
    print(f"{args.tag} [{res.steps} steps, {seconds:.0f} s] MASE {mase:.3f} WQL {wql:.3f} | "
          + " ".join(f"{n}:{v[0]:.2f}" for n, v in rel.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"tag": args.tag, "overrides": json.loads(args.overrides),
                                               "steps": res.steps, "seconds": seconds, "mase": mase, "wql": wql,
                                               "per_dataset": rel, "argv": sys.argv}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
