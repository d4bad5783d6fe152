"""`flashxlstm experiment`: the paper's synthetic experiments from the command line.

    flashxlstm experiment formal-language --task parity --model "xlstm[0:1]" --seed 0 [--seeds 5] --out DIR
    flashxlstm experiment mqar --model "xlstm[1:0]" --num-kv-pairs 16 --context-length 256 --out DIR
    flashxlstm experiment suite --out DIR [--tasks parity even_pairs ...] [--models lstm "xlstm[1:1]" ...]
    flashxlstm experiment vision --model vil|vit --dataset digits|fashion-mnist --out DIR
    flashxlstm experiment forecast-pretrain --preset cpu-demo|gpu --out DIR   (cli/forecast_pretrain.py)
    flashxlstm experiment forecast --quick | --checkpoint DIR --out DIR          (cli/forecast_eval.py)

Each run writes DIR/results.json and DIR/learning_curve.png; the suite writes one run per task and model under
DIR/<task>/<model>/ plus DIR/summary.md, DIR/summary.json and DIR/heatmap.png. With `--seeds N` each seed
runs into DIR/seed_S and DIR/seeds.md / seeds.json (the suite: its summary) hold median, min and the fraction solved (>= 0.9). The
formal-language defaults (batch 32, lr 3e-3, 2000 steps, a length curriculum over the first quarter) are the
ones docs/experiments.md measures: parity solved by xLSTM[0:1] on every seed tried, in minutes of a CPU.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch

from flashxlstm.tasks.formal_languages import TASKS
from flashxlstm.tasks.zoo import MODEL_NAMES

from . import forecast_eval, forecast_pretrain

# The formal-language defaults (docs/experiments.md, "Defaults"): small batches at a higher peak learning rate
# and a curriculum over the training lengths make parity reliable for xLSTM[0:1] within minutes of a CPU; the
# official recipe (batch 256, lr 1e-3, 20 000 steps, no curriculum) is `--batch-size 256 --lr 1e-3
# --steps 20000 --curriculum 0`.
FL_STEPS, FL_LR, FL_BATCH = 2000, 3e-3, 32
CURRICULUM_FRACTION = 0.25
CURRICULUM_START = 8


def _common(p: argparse.ArgumentParser, *, steps: int, lr: float, batch_size: int, dim: int) -> None:
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--seed", type=int, default=0, help="seed for data and initialisation (default 0)")
    p.add_argument("--seeds", type=int, default=1,
                   help="run this many seeds (--seed, --seed + 1, ...) one after the other, each into OUT/seed_S, "
                        "and report median, min and the fraction solved (>= 0.9) in OUT/seeds.md (default 1)")
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


def _curriculum_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--curriculum", type=float, default=CURRICULUM_FRACTION,
                   help="fraction of the steps over which the longest training length grows from "
                        f"--curriculum-start to 40 (default {CURRICULUM_FRACTION}; 0: off, lengths 3..40 throughout)")
    p.add_argument("--curriculum-start", type=int, default=CURRICULUM_START,
                   help=f"longest training length at step 0 of the curriculum (default {CURRICULUM_START})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)

    fl = sub.add_parser("formal-language", help="one formal-language task, train lengths 3..40, test 40..256")
    fl.add_argument("--task", required=True, choices=sorted(TASKS) + [t.replace("_", "-") for t in TASKS],
                    help="task name")
    fl.add_argument("--model", required=True, help=f"one of {', '.join(MODEL_NAMES)} or xlstm[a:b]")
    _common(fl, steps=FL_STEPS, lr=FL_LR, batch_size=FL_BATCH, dim=64)
    _curriculum_arguments(fl)

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
    _common(su, steps=FL_STEPS, lr=FL_LR, batch_size=FL_BATCH, dim=64)
    _curriculum_arguments(su)

    _vision_arguments(sub)
    forecast_pretrain.add_arguments(sub)
    forecast_eval.add_arguments(sub)


def _vision_arguments(sub) -> None:
    vi = sub.add_parser("vision", help="image classification: ViL or a parameter-matched ViT (tasks/vision.py)")
    vi.add_argument("--model", required=True, choices=["vil", "vit"])
    vi.add_argument("--dataset", required=True, choices=["digits", "fashion-mnist"])
    vi.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST idx.gz files "
                    "(default /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist)")
    vi.add_argument("--out", required=True, help="output directory (created)")
    vi.add_argument("--steps", type=int, default=2000)
    vi.add_argument("--batch-size", type=int, default=128)
    vi.add_argument("--eval-batch-size", type=int, default=256)
    vi.add_argument("--lr", type=float, default=1e-3)
    vi.add_argument("--weight-decay", type=float, default=0.05)
    vi.add_argument("--grad-clip", type=float, default=0.0, help="gradient norm clip (default 0: off)")
    vi.add_argument("--warmup-steps", type=int, default=None, help="(default: steps / 10)")
    vi.add_argument("--eval-every", type=int, default=None, help="(default: steps / 5)")
    vi.add_argument("--patch-size", type=int, default=4)
    vi.add_argument("--dim", type=int, default=64, help="width of both models (default 64)")
    vi.add_argument("--depth", type=int, default=4, help="ViL blocks; the ViT's depth matches its parameters")
    vi.add_argument("--num-heads", type=int, default=4)
    vi.add_argument("--pooling", default="bilateral_concat", choices=["bilateral_concat", "bilateral_avg", "mean"])
    vi.add_argument("--backend", default="auto", help="mLSTM kernel of the ViL (default auto; 'fastest': time a "
                    "few training steps with each of parallel, chunkwise, triton and train with the fastest)")
    vi.add_argument("--crop-pad", type=int, default=None, help="augmentation: random crop after zero padding by "
                    "this many pixels (default: 2 on fashion-mnist, 0 on digits)")
    vi.add_argument("--hflip", type=float, default=None, help="augmentation: horizontal flip probability "
                    "(default: 0.5 on fashion-mnist, 0 on digits)")
    vi.add_argument("--erase", type=float, default=None, help="augmentation: random erasing probability "
                    "(default: 0.25 on fashion-mnist, 0 on digits)")
    vi.add_argument("--amp", choices=["none", "bf16"], default="none")
    vi.add_argument("--time-budget", type=float, default=None, help="wall-clock seconds (tasks/harness.py)")
    vi.add_argument("--seed", type=int, default=0)
    vi.add_argument("--device", default="auto")
    vi.add_argument("--threads", type=int, default=None)
    vi.add_argument("--quiet", action="store_true")


def _run_vision(args: argparse.Namespace) -> int:
    from flashxlstm.tasks.harness import TrainConfig
    from flashxlstm.tasks.vision import DATASET_AUGMENT, run_vision
    from flashxlstm.tasks.vision_augment import AugmentConfig
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for name in ("steps", "batch_size", "eval_batch_size", "patch_size", "dim", "depth", "num_heads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    cfg = TrainConfig(steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, amp=args.amp,
                      grad_clip=args.grad_clip,
                      warmup_steps=args.warmup_steps if args.warmup_steps is not None else args.steps // 10,
                      eval_every=args.eval_every or max(args.steps // 5, 1), seed=args.seed,
                      device=_device(args.device), time_budget_s=args.time_budget)
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    default = DATASET_AUGMENT[args.dataset]
    aug = AugmentConfig(pad=default.pad if args.crop_pad is None else args.crop_pad,
                        hflip=default.hflip if args.hflip is None else args.hflip,
                        erase=default.erase if args.erase is None else args.erase)
    res = run_vision(args.model, args.dataset, args.out, train_cfg=cfg, batch_size=args.batch_size,
                     eval_batch_size=args.eval_batch_size, patch_size=args.patch_size, dim=args.dim,
                     depth=args.depth, num_heads=args.num_heads, backend=args.backend, pooling=args.pooling,
                     data_dir=args.data_dir, augment_cfg=aug, log=log)
    print(f"vision {res['model']} {res['dataset']}: test accuracy {res['test_accuracy']:.4f}, "
          f"{res['num_parameters']} parameters, {res['tokens_per_image']} tokens/image, "
          f"train {res['train_images_per_s']:.0f} images/s, eval {res['eval_images_per_s']:.0f} images/s "
          f"-> {args.out}/results.json", flush=True)
    return 0


def _device(name: str) -> str:
    from ..training.engine import resolve_device
    return str(resolve_device(name))


def run(args: argparse.Namespace) -> int:
    if args.experiment == "forecast-pretrain":
        return forecast_pretrain.run(args)
    if args.experiment == "vision":
        return _run_vision(args)
    if args.experiment == "forecast":
        return forecast_eval.run(args)
    from flashxlstm.tasks.experiments import run_formal_language, run_mqar, run_seeds, run_suite
    from flashxlstm.tasks.formal_languages import LengthCurriculum
    from flashxlstm.tasks.harness import TrainConfig
    from flashxlstm.tasks.mqar import MQARConfig
    from flashxlstm.tasks.zoo import ModelSize

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    for name in ("steps", "batch_size", "test_size", "embedding_dim", "num_blocks", "num_heads", "eval_batch_size",
                 "seeds"):
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

    seeds = list(range(args.seed, args.seed + args.seeds))
    curriculum = None
    if args.experiment != "mqar":
        if not 0.0 <= args.curriculum <= 1.0:
            raise ValueError(f"--curriculum must be a fraction in [0, 1], got {args.curriculum}")
        if args.curriculum > 0:
            curriculum = LengthCurriculum(args.curriculum_start, round(args.curriculum * args.steps))

    if args.experiment == "formal-language":
        size = ModelSize(args.embedding_dim, args.num_blocks, args.num_heads, context_length=256, **backends)

        def one(seed: int, out) -> dict:
            res = run_formal_language(args.task, args.model, out, train_cfg=replace(cfg, seed=seed), size=size,
                                      batch_size=args.batch_size, test_size=args.test_size,
                                      eval_batch_size=args.eval_batch_size, curriculum=curriculum, log=log)
            print(f"{res['task']} {res['model']} seed {seed}: {res['steps']} steps"
                  f"{' (stopped early)' if res['stopped_early'] else ''}, "
                  f"train scaled accuracy {res['train_scaled_accuracy']:.3f}, "
                  f"test scaled accuracy {res['test_scaled_accuracy']:.3f} ({res['wall_time_s']:.0f} s) -> {out}",
                  flush=True)
            return res
        metric = "test_scaled_accuracy"
    elif args.experiment == "mqar":
        mq = MQARConfig(vocab_size=args.vocab_size, num_kv_pairs=args.num_kv_pairs,
                        context_length=args.context_length, power_a=args.power_a,
                        random_non_queries=args.random_non_queries)
        size = ModelSize(args.embedding_dim, args.num_blocks, args.num_heads, context_length=args.context_length,
                         **backends)

        def one(seed: int, out) -> dict:
            res = run_mqar(args.model, out, train_cfg=replace(cfg, seed=seed), mqar=mq, size=size,
                           batch_size=args.batch_size, test_size=args.test_size,
                           eval_batch_size=args.eval_batch_size, log=log)
            print(f"mqar {res['model']} seed {seed}: test accuracy {res['test_accuracy']:.3f} "
                  f"({res['wall_time_s']:.0f} s) -> {out}", flush=True)
            return res
        metric = "test_accuracy"
    else:
        size = ModelSize(args.embedding_dim, args.num_blocks, args.num_heads, context_length=256, **backends)
        summary = run_suite(args.out, tasks=args.tasks, models=args.models, train_cfg=cfg, size=size,
                            batch_size=args.batch_size, test_size=args.test_size, seeds=seeds,
                            curriculum=curriculum, log=log)
        print(f"suite: {len(summary['models'])} models x {len(summary['tasks'])} tasks x {len(seeds)} seed(s) "
              f"-> {args.out}/summary.md")
        return 0
    if len(seeds) == 1:
        one(seeds[0], args.out)
        return 0
    what = f"{args.task} {args.model}" if args.experiment == "formal-language" else f"mqar {args.model}"
    summary = run_seeds(one, seeds, args.out, metric,
                        header=f"{what}, seeds {seeds[0]}..{seeds[-1]} (settings: seed_S/results.json)")
    print(f"{len(seeds)} seeds: median {summary['median']:.3f}, min {summary['min']:.3f}, "
          f"solved (>= {summary['solved_at']}) {summary['fraction_solved']:.0%} -> {args.out}/seeds.md")
    return 0
