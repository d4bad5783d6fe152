"""`flashxlstm experiment`: the paper's synthetic experiments from the command line.

    flashxlstm experiment formal-language --task parity --model "xlstm[0:1]" --steps 2000 --seed 0 --out DIR
    flashxlstm experiment mqar --model "xlstm[1:0]" --num-kv-pairs 16 --context-length 256 --out DIR
    flashxlstm experiment suite --out DIR [--tasks parity even_pairs ...] [--models lstm "xlstm[1:1]" ...]

Each run writes DIR/results.json and DIR/learning_curve.png; the suite writes one run per task and model under
DIR/<task>/<model>/ plus DIR/summary.md, DIR/summary.json and DIR/heatmap.png.
"""
from __future__ import annotations

import argparse
import sys

import torch

from flashxlstm.tasks.formal_languages import TASKS
from flashxlstm.tasks.zoo import MODEL_NAMES


def _common(p: argparse.ArgumentParser, *, steps: int, lr: float, batch_size: int, dim: int) -> None:
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--seed", type=int, default=0, help="seed for data and initialisation (default 0)")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up steps (default: steps / 10, the official 2000 of 20000)")
    p.add_argument("--min-lr-factor", type=float, default=1e-3,
                   help="cosine decay ends at lr x this (default 1e-3, the official lr_decay_factor)")
    p.add_argument("--weight-decay", type=float, default=0.1,
                   help="AdamW weight decay on the model's decay group (default 0.1)")
    p.add_argument("--beta2", type=float, default=0.999, help="AdamW beta2 (default 0.999, torch's and the official)")
    p.add_argument("--grad-clip", type=float, default=0.0,
                   help="clip the gradient norm to this (default 0: off, as the official recipe)")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16 autocast (the official recipe on CUDA) or none (float32, default)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="wall-clock seconds for the run: steps, warm-up and evaluation interval are scaled down "
                        "to what fits (measured), and training stops early if it still runs over")
    p.add_argument("--eval-batch-size", type=int, default=128, help="evaluation batch size (default 128)")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"training batch size (default {batch_size})")
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default: steps / 10)")
    p.add_argument("--test-size", type=int, default=512, help="held-out sequences per evaluation set (default 512)")
    p.add_argument("--embedding-dim", type=int, default=dim, help=f"model width D (default {dim})")
    p.add_argument("--num-blocks", type=int, default=2, help="blocks / layers (default 2)")
    p.add_argument("--num-heads", type=int, default=1, help="xLSTM heads (default 1; the Transformer uses >= 4)")
    p.add_argument("--mlstm-backend", default="auto", help="mLSTM kernel of the xLSTM models (default auto: Triton on CUDA)")
    p.add_argument("--slstm-backend", default="auto", help="sLSTM kernel of the xLSTM models (default auto: Triton on CUDA)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="do not print the learning curve while training")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)

    fl = sub.add_parser("formal-language", help="one formal-language task, train lengths 3..40, test 40..256")
    fl.add_argument("--task", required=True, choices=sorted(TASKS) + [t.replace("_", "-") for t in TASKS],
                    help="task name")
    fl.add_argument("--model", required=True, help=f"one of {', '.join(MODEL_NAMES)} or xlstm[a:b]")
    _common(fl, steps=2000, lr=1e-3, batch_size=128, dim=64)

    mq = sub.add_parser("mqar", help="multi-query associative recall (Zoology)")
    mq.add_argument("--model", required=True, help=f"one of {', '.join(MODEL_NAMES)} or xlstm[a:b]")
    mq.add_argument("--num-kv-pairs", type=int, default=16)
    mq.add_argument("--context-length", type=int, default=256)
    mq.add_argument("--vocab-size", type=int, default=512, help="(default 512; the paper's Zoology setup uses 8192)")
    mq.add_argument("--power-a", type=float, default=0.01, help="power-law exponent of the query gaps")
    mq.add_argument("--random-non-queries", action="store_true", help="fill the gaps with random tokens, not 0")
    _common(mq, steps=2000, lr=3e-3, batch_size=64, dim=128)

    su = sub.add_parser("suite", help="a grid of formal-language tasks x models: table + Figure-4 heatmap")
    su.add_argument("--tasks", nargs="+", default=sorted(TASKS), help="tasks (default: all)")
    su.add_argument("--models", nargs="+", default=list(MODEL_NAMES), help="models (default: the five baselines)")
    _common(su, steps=2000, lr=1e-3, batch_size=128, dim=64)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but CUDA is not available; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device must be cpu, cuda[:N] or auto, got {name!r}")
    return name


def run(args: argparse.Namespace) -> int:
    from flashxlstm.tasks.experiments import run_formal_language, run_mqar, run_suite
    from flashxlstm.tasks.harness import TrainConfig
    from flashxlstm.tasks.mqar import MQARConfig
    from flashxlstm.tasks.zoo import ModelSize

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    for name in ("steps", "batch_size", "test_size", "embedding_dim", "num_blocks", "num_heads", "eval_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    warmup = args.warmup_steps if args.warmup_steps is not None else args.steps // 10
    eval_every = args.eval_every or max(args.steps // 10, 1)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=warmup, min_lr_factor=args.min_lr_factor,
                      weight_decay=args.weight_decay, betas=(0.9, args.beta2), grad_clip=args.grad_clip,
                      amp=args.amp, eval_every=eval_every, seed=args.seed, device=_device(args.device),
                      time_budget_s=args.time_budget)
    backends = {"mlstm_backend": args.mlstm_backend, "slstm_backend": args.slstm_backend}
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))

    if args.experiment == "formal-language":
        size = ModelSize(args.embedding_dim, args.num_blocks, args.num_heads, context_length=256, **backends)
        res = run_formal_language(args.task, args.model, args.out, train_cfg=cfg, size=size,
                                  batch_size=args.batch_size, test_size=args.test_size,
                                  eval_batch_size=args.eval_batch_size, log=log)
        print(f"{res['task']} {res['model']}: {res['steps']} steps{' (stopped early)' if res['stopped_early'] else ''}, "
              f"train scaled accuracy {res['train_scaled_accuracy']:.3f}, "
              f"test scaled accuracy {res['test_scaled_accuracy']:.3f} ({res['wall_time_s']:.0f} s) -> {args.out}")
    elif args.experiment == "mqar":
        mq = MQARConfig(vocab_size=args.vocab_size, num_kv_pairs=args.num_kv_pairs,
                        context_length=args.context_length, power_a=args.power_a,
                        random_non_queries=args.random_non_queries)
        size = ModelSize(args.embedding_dim, args.num_blocks, args.num_heads, context_length=args.context_length,
                         **backends)
        res = run_mqar(args.model, args.out, train_cfg=cfg, mqar=mq, size=size, batch_size=args.batch_size,
                       test_size=args.test_size, eval_batch_size=args.eval_batch_size, log=log)
        print(f"mqar {res['model']}: test accuracy {res['test_accuracy']:.3f} ({res['wall_time_s']:.0f} s) -> {args.out}")
    else:
        size = ModelSize(args.embedding_dim, args.num_blocks, args.num_heads, context_length=256, **backends)
        summary = run_suite(args.out, tasks=args.tasks, models=args.models, train_cfg=cfg, size=size,
                            batch_size=args.batch_size, test_size=args.test_size, log=log)
        print(f"suite: {len(summary['models'])} models x {len(summary['tasks'])} tasks -> {args.out}/summary.md")
    return 0
