"""`flashxlstm experiment forecast-pretrain`: pretrain the time-series forecaster, time-boxed.

    flashxlstm experiment forecast-pretrain --preset cpu-demo --out runs/forecaster          # a few CPU minutes
    flashxlstm experiment forecast-pretrain --preset gpu --total-seconds 350 --out runs/fc-gpu \\
        --real-npz pretrain_series.npz --save-dtype bfloat16          # benchmarks/forecast_gpu.sh wraps this

Writes OUT/checkpoint (xLSTMForecaster.from_pretrained reads it), OUT/loss_log.jsonl and OUT/pretrain.json.
Real series: the PRETRAIN datasets from the installed packages (default), from an .npz written by
`--write-real-npz` (for machines without sktime/statsmodels), or none (`--no-real`).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

# the structural generators' weights of the presets: free-form seasonal profiles four times as often as each
# other generator (the held-out ablation in benchmarks/results/forecast_eval/ablations.md: short, strongly
# seasonal series need them)
SEASONAL_MIX = {"seasonal_profile": 4.0, "seasonal_trend": 1.0, "regime_switch": 1.0, "random_walk": 1.0,
                "intermittent": 1.0}

PRESETS = {
    # ~0.5M parameters: a usable demo in about three CPU minutes
    "cpu-demo": dict(time_budget_s=150.0, batch_size=32, context_length=256, prediction_length=64, lr=3e-3,
                     synthetic_count=384, synthetic_length=512, eval_windows=64, eval_every=50,
                     generator_weights=SEASONAL_MIX,
                     model=dict(patch_size=32, dim=128, num_blocks=3, num_heads=4)),
    # ~11M parameters, bf16 autocast, Triton sLSTM: a few H200 minutes (the run's --total-seconds caps it)
    "gpu": dict(time_budget_s=330.0, batch_size=384, context_length=512, prediction_length=128, lr=1.5e-3,
                warmup_steps=150, synthetic_count=8192, synthetic_length=1024, eval_windows=512, eval_every=200,
                generator_weights=SEASONAL_MIX,
                model=dict(patch_size=32, dim=512, num_blocks=6, num_heads=4)),
    # a smoke test of the whole path (tests/test_forecast_pretrain.py)
    "tiny": dict(time_budget_s=10.0, batch_size=8, context_length=64, prediction_length=32, synthetic_count=16,
                 synthetic_length=128, eval_windows=16, eval_every=1000,
                 model=dict(patch_size=16, dim=16, num_blocks=1, num_heads=2)),
}


def add_arguments(sub) -> None:
    p = sub.add_parser("forecast-pretrain", help="pretrain the time-series forecaster on synthetic + PRETRAIN series")
    p.add_argument("--out", required=True, help="output directory (checkpoint/, loss_log.jsonl, pretrain.json)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-demo", help="settings to start from")
    p.add_argument("--seconds", type=float, help="training-loop time box in seconds (0: none, --steps only)")
    p.add_argument("--total-seconds", type=float,
                   help="hard cap for the whole command: data generation included, the loop stops in time to save")
    p.add_argument("--steps", "--max-steps", dest="steps", type=int,
                   help="step cap; the run ends at the cap or the time box, whichever comes first")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--context-length", type=int)
    p.add_argument("--prediction-length", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--synthetic-count", type=int)
    p.add_argument("--synthetic-length", type=int)
    p.add_argument("--eval-windows", type=int, help="validation windows (fixed synthetic series of another seed)")
    p.add_argument("--patch-size", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--num-blocks", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--backend", help="sLSTM backend (auto: Triton on CUDA, fused elsewhere)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto")
    real = p.add_mutually_exclusive_group()
    real.add_argument("--real-npz", help="read the PRETRAIN series from this .npz (see --write-real-npz)")
    real.add_argument("--no-real", action="store_true", help="synthetic series only")
    p.add_argument("--write-real-npz", metavar="PATH",
                   help="only write the PRETRAIN series from the installed packages into PATH (.npz) and exit")
    p.add_argument("--save-dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--max-shard-mb", type=float, help="split the weights into files of at most this many MiB")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    import torch

    from flashxlstm.models.forecast import ForecastConfig
    from flashxlstm.training.forecast import PretrainConfig, pretrain, pretrain_real_series, save_pretrain_npz

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.write_real_npz:
        counts = save_pretrain_npz(args.write_real_npz)
        print(f"wrote {sum(counts.values())} series of {len(counts)} PRETRAIN datasets to {args.write_real_npz}")
        return 0
    preset = dict(PRESETS[args.preset])
    model_fields = dict(preset.pop("model"))
    for name in ("patch_size", "dim", "num_blocks", "num_heads", "backend"):
        if getattr(args, name) is not None:
            model_fields[name] = getattr(args, name)
    if args.seconds is not None:
        preset["time_budget_s"] = args.seconds or None
    for name in ("steps", "batch_size", "context_length", "prediction_length", "lr",
                 "synthetic_count", "synthetic_length", "eval_windows", "seed"):
        if getattr(args, name) is not None:
            preset[name] = getattr(args, name)
    cfg = PretrainConfig(**preset, device=args.device, amp=args.amp, model=ForecastConfig(**model_fields))
    real = None if args.no_real else pretrain_real_series(npz=args.real_npz)
    deadline = data_deadline = None
    if args.total_seconds:
        data_deadline = t_start + 0.25 * args.total_seconds  # the synthetic pool stops growing here
        # the loop stops early enough to evaluate and save (a few seconds at most)
        deadline = t_start + args.total_seconds - max(3.0, min(12.0, 0.08 * args.total_seconds))
        cfg = replace(cfg, time_budget_s=min(cfg.time_budget_s or args.total_seconds, args.total_seconds))
    pretrain(cfg, args.out, real_series=real, deadline=deadline, data_deadline=data_deadline,
             save_dtype=torch.bfloat16 if args.save_dtype == "bfloat16" else None,
             max_shard_bytes=int(args.max_shard_mb * 2 ** 20) if args.max_shard_mb else None)
    print(f"saved {args.out}/checkpoint in {time.perf_counter() - t_start:.1f} s in all")
    return 0
