"""`flashxlstm experiment forecast`: rolling-origin evaluation of the forecaster and its baselines on the
held-out series (tasks/forecast.py); optionally pretrains the forecaster first, time-boxed.

    flashxlstm experiment forecast --quick --out runs/fc-demo                 # CPU demo: pretrain ~1 min + 4 sets
    flashxlstm experiment forecast --checkpoint runs/forecaster/checkpoint --out runs/fc-eval   # the full suite
    flashxlstm experiment forecast --pretrain-seconds 300 --out runs/fc      # pretrain (cpu-demo preset), evaluate

Writes OUT/results.json, OUT/results.md (per dataset and geometric means of MASE and WQL relative to
seasonal naive) and OUT/plots/<dataset>.png; with pretraining also OUT/pretrain/ (checkpoint, loss log).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

# the --quick demo: four held-out sets of four frequencies, small enough for a few CPU minutes
QUICK_DATASETS = ("airline", "uschange", "nile", "hyndsight")


def add_arguments(sub) -> None:
    from flashxlstm.data.series import HELD_OUT
    from flashxlstm.tasks.forecast import MODELS
    p = sub.add_parser("forecast", help="evaluate the forecaster and baselines on the held-out series "
                                        "(MASE, WQL vs seasonal naive)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--checkpoint", help="a pretrained forecaster (xLSTMForecaster.save_pretrained directory)")
    p.add_argument("--pretrain-seconds", type=float,
                   help="pretrain the forecaster first for this many seconds (into OUT/pretrain) and evaluate it")
    p.add_argument("--pretrain-preset", default="cpu-demo",
                   help="forecast-pretrain preset of that run (default cpu-demo)")
    p.add_argument("--quick", action="store_true",
                   help=f"the CPU demo: datasets {' '.join(QUICK_DATASETS)}, 2 origins, PatchTST 10 s each, and "
                        f"(without --checkpoint) 60 s of pretraining")
    p.add_argument("--datasets", nargs="+", choices=list(HELD_OUT), help="held-out datasets (default: all)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), help="models (default: all)")
    p.add_argument("--origins", type=int, help="rolling origins per series (default 3; --quick 2)")
    p.add_argument("--max-context", type=int, default=1024, help="past points any model sees (0: all; default 1024)")
    p.add_argument("--max-series", type=int, default=0, help="first N series per dataset (0: all)")
    p.add_argument("--patchtst-steps", type=int, default=300)
    p.add_argument("--patchtst-seconds", type=float, help="PatchTST training time box per dataset (default 30; "
                                                          "--quick 10)")
    p.add_argument("--reuse", metavar="RESULTS_JSON",
                   help="copy the scores of models not named in --models from an earlier run's results.json on the "
                        "same windows (e.g. the statsforecast baselines) instead of fitting them again")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")


def _pretrain(args, log):
    import torch

    from flashxlstm.models.forecast import ForecastConfig
    from flashxlstm.training.forecast import PretrainConfig, pretrain, pretrain_real_series

    from .forecast_pretrain import PRESETS
    if args.pretrain_preset not in PRESETS:
        raise ValueError(f"--pretrain-preset must be one of {', '.join(sorted(PRESETS))}, got {args.pretrain_preset!r}")
    preset = dict(PRESETS[args.pretrain_preset])
    model_cfg = ForecastConfig(**preset.pop("model"))
    preset.update(time_budget_s=args.pretrain_seconds, seed=args.seed)
    cfg = PretrainConfig(**preset, device="auto", model=model_cfg)
    t0 = time.perf_counter()
    res = pretrain(cfg, f"{args.out}/pretrain", real_series=pretrain_real_series(),
                   deadline=t0 + args.pretrain_seconds, print_fn=log or (lambda s: None))
    info = {"pretrained_here": True, "preset": args.pretrain_preset, "steps": res.steps,
            "seconds": res.seconds, "eval_before": res.eval_before, "eval_after": res.eval_after,
            "checkpoint": f"{args.out}/pretrain/checkpoint"}
    return res.model.eval(), info


def run(args: argparse.Namespace) -> int:
    import torch

    from flashxlstm.tasks.forecast import MODELS, EvalConfig, run_forecast_eval, xlstm_forecaster
    from flashxlstm.tasks.forecast_patchtst import PatchTSTConfig

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if args.quick and args.pretrain_seconds is None and not args.checkpoint:
        args.pretrain_seconds = 60.0
    if args.checkpoint and args.pretrain_seconds:
        raise ValueError("give either --checkpoint (evaluate it) or --pretrain-seconds (pretrain one), not both")
    models = tuple(args.models or MODELS)
    if "xlstm" in models and not (args.checkpoint or args.pretrain_seconds):
        raise ValueError("the model 'xlstm' needs --checkpoint DIR or --pretrain-seconds S (or leave it out with "
                         "--models ...)")
    for name, least in (("origins", 1), ("patchtst_steps", 1), ("max_context", 0), ("max_series", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
    datasets = tuple(args.datasets or (QUICK_DATASETS if args.quick else ())) or None
    patch_seconds = args.patchtst_seconds if args.patchtst_seconds is not None else (10.0 if args.quick else 30.0)
    cfg = EvalConfig(**({"datasets": datasets} if datasets else {}), models=models,
                     origins=args.origins or (2 if args.quick else 3), max_context=args.max_context,
                     max_series=args.max_series,
                     patchtst=PatchTSTConfig(steps=args.patchtst_steps, time_budget_s=patch_seconds, seed=args.seed))
    xlstm, info = None, None
    if "xlstm" in models:
        if args.checkpoint:
            from flashxlstm.models.forecast import xLSTMForecaster
            model = xLSTMForecaster.from_pretrained(args.checkpoint)
            info = {"pretrained_here": False, "checkpoint": args.checkpoint}
        else:
            model, info = _pretrain(args, log)
        model = model.float().cpu().eval()
        info["parameters"] = sum(p.numel() for p in model.parameters())
        info["config"] = model.config.to_dict()
        xlstm = xlstm_forecaster(model)
    command = "flashxlstm experiment forecast " + " ".join(shlex.quote(a) for a in sys.argv[3:]) \
        if sys.argv[1:3] == ["experiment", "forecast"] else None
    reuse = None
    if args.reuse:
        import json
        with open(args.reuse) as f:
            reuse = json.load(f)
    res = run_forecast_eval(args.out, cfg, xlstm=xlstm, xlstm_info=info, command=command,
                            plots=not args.no_plots, reuse=reuse, log=log)
    g = res["relative_geomean"]
    for m in res["config"]["models"]:
        print(f"{m:14s} geometric mean vs seasonal naive: MASE {g[m]['mase']:.3f}  WQL {g[m]['wql']:.3f}")
    print(f"-> {args.out}/results.json, results.md{'' if args.no_plots else ', plots/'}", flush=True)
    return 0
