"""`flashxlstm train`: train a byte-level xLSTM LM (default: the embedded pydoc-topics job, ~5 minutes on
2 CPU cores), or continue one with --resume."""
from __future__ import annotations

import argparse

from ..training.config import DEFAULT_JOB_MAX_MINUTES, TrainConfig

# (option, TrainConfig field, type, help); every option defaults to None = "the config's default".
_OPTIONS = [
    ("--steps", "steps", int, "total optimiser steps (default %(d)s)"),
    ("--text-file", "text_file", str, "train on this text file (bytes) instead of the embedded pydoc topics"),
    ("--val-fraction", "val_fraction", float, "fraction of the text (its end) held out for validation (default %(d)s)"),
    ("--batch-size", "batch_size", int, "parallel byte streams per step (default %(d)s)"),
    ("--seq-len", "seq_len", int, "bytes per window; gradients are truncated here (default %(d)s)"),
    ("--lr", "lr", float, "peak learning rate (default %(d)s)"),
    ("--min-lr", "min_lr", float, "learning rate at the end of the cosine decay (default %(d)s)"),
    ("--warmup-steps", "warmup_steps", int, "linear warmup steps (default %(d)s)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay on projection weights (default %(d)s)"),
    ("--grad-clip", "grad_clip", float, "clip the gradient norm to this (default %(d)s)"),
    ("--d-model", "embedding_dim", int, "model width (default %(d)s)"),
    ("--blocks", "num_blocks", int, "number of xLSTM blocks (default %(d)s)"),
    ("--pattern", "block_pattern", str, "block mix, e.g. xlstm[1:1], xlstm[1:0], xlstm[0:1] (default %(d)s)"),
    ("--heads", "num_heads", int, "mLSTM heads (default %(d)s)"),
    ("--slstm-heads", "slstm_num_heads", int, "sLSTM heads (default %(d)s)"),
    ("--dropout", "dropout", float, "dropout (default %(d)s)"),
    ("--eval-every", "eval_every", int, "validate and checkpoint every N steps (default %(d)s)"),
    ("--log-every", "log_every", int, "refresh the progress bar numbers every N steps (default %(d)s)"),
    ("--seed", "seed", int, "random seed for initialisation and data order (default %(d)s)"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N (default %(d)s)"),
    ("--threads", "threads", int, "CPU threads (default: torch's default)"),
    ("--max-minutes", "max_minutes", float,
     "stop training after the job has run this many minutes, checkpointed so --resume continues; "
     "0: no limit (default: none, except 8 for the embedded default corpus job)"),
    ("--sample-tokens", "sample_tokens", int, "bytes to generate at the end; 0 for none (default %(d)s)"),
    ("--prompt", "sample_prompt", str, "prompt of the final sample (default %(d)r)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--out", default="runs/default",
                        help="run directory: checkpoint/, loss_curve.png, metrics.json (default %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in --out exactly where it stopped")
    parser.add_argument("--overwrite", action="store_true",
                        help="let a new run replace an earlier run's files in --out (checkpoint/, metrics.json, "
                             "loss_curve.png); without it --out must be new or empty. Other files are never touched")
    for flag, name, kind, help_text in _OPTIONS:
        parser.add_argument(flag, dest=name, type=kind, default=None,
                            help=help_text.replace("%(d)s", str(getattr(defaults, name))).replace(
                                "%(d)r", repr(getattr(defaults, name))))
    parser.add_argument("--no-carry-state", dest="carry_state", action="store_const", const=False, default=None,
                        help="start every window from an empty state instead of carrying it across windows")
    parser.add_argument("--tie-weights", dest="tie_weights", action="store_const", const=True, default=None,
                        help="share the embedding and output head weights")
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None,
                        help="no progress bar (log validation lines only)")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """(the config to train with, the options the user actually gave)."""
    names = [name for _, name, _, _ in _OPTIONS] + ["carry_state", "tie_weights", "progress"]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    settings = dict(given)
    if "text_file" not in settings and "max_minutes" not in settings:  # the embedded job keeps its safety net
        settings["max_minutes"] = DEFAULT_JOB_MAX_MINUTES
    return TrainConfig(**settings).validated(), given


def run(args: argparse.Namespace) -> int:
    from ..training.loop import resume_training, train

    config, given = config_from_args(args)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    if args.resume:
        result = resume_training(args.out, given)
    else:
        result = train(config, args.out, overwrite=args.overwrite)
    return 130 if result.interrupted else 0
