"""`flashxlstm train`: train a byte-level xLSTM LM (default: the embedded pydoc-topics job, ~5 minutes on
2 CPU cores), or with --data / --recipe a model of either family on `flashxlstm prepare` token shards (also
under torchrun); continue either with --resume."""
from __future__ import annotations

import argparse
from pathlib import Path

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
    lm = parser.add_argument_group("token-shard runs (--data or --recipe; flags override the recipe)")
    lm.add_argument("--data", default=None, help="a directory made by `flashxlstm prepare`")
    lm.add_argument("--recipe", default=None, help="a TOML / YAML / JSON file of run settings (see recipes/)")
    lm.add_argument("--model", default=None,
                    help="a preset (large-125m, large-350m, large-760m, large-1.3b, xlstm71-125m, xlstm71-350m, "
                         "xlstm10-125m, xlstm10-350m) or a model config file")
    lm.add_argument("--feed", choices=["packed", "stream"], default=None,
                    help="packed documents with state resets (default) or carried-state streams")
    lm.add_argument("--micro-batch-size", type=int, default=None,
                    help="rows per rank per forward; the rest of the global batch is gradient accumulation")
    lm.add_argument("--amp", choices=["none", "bf16"], default=None, help="bf16 autocast (fp32 master weights)")
    lm.add_argument("--compile", action="store_const", const=True, default=None,
                    help="torch.compile every block and the loss (one compile serves all blocks)")
    lm.add_argument("--compile-backend", default=None,
                    help="torch.compile backend for --compile (default inductor; aot_eager traces without codegen)")
    lm.add_argument("--compile-mode", default=None,
                    help="torch.compile mode for --compile (default: torch's; e.g. max-autotune-no-cudagraphs)")
    lm.add_argument("--activation-checkpointing", action="store_const", const=True, default=None,
                    help="recompute each block in the backward")
    lm.add_argument("--ce-chunk", type=int, default=None, help="positions per cross-entropy chunk (default 4096)")
    lm.add_argument("--parallel", choices=["none", "ddp", "fsdp"], default=None,
                    help="data parallelism under torchrun: ddp or fsdp (FSDP2 fully_shard)")
    lm.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps")
    lm.add_argument("--eval-windows", type=int, default=None, help="validation windows per evaluation")
    lm.add_argument("--tensorboard", action="store_const", const=True, default=None,
                    help="also log to OUT/tensorboard")
    lm.add_argument("--peak-tflops", type=float, default=None, help="per-device peak for MFU (default: measured)")
    lm.add_argument("--stop-after-step", type=int, default=None,
                    help="end the run after this step with a checkpoint, as an interruption would")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """(the config to train with, the options the user actually gave)."""
    names = [name for _, name, _, _ in _OPTIONS] + ["carry_state", "tie_weights", "progress"]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    settings = dict(given)
    if "text_file" not in settings and "max_minutes" not in settings:  # the embedded job keeps its safety net
        settings["max_minutes"] = DEFAULT_JOB_MAX_MINUTES
    return TrainConfig(**settings).validated(), given


# Byte-level options that mean the same for token-shard runs (same RunConfig field names).
_SHARED = ("steps", "batch_size", "seq_len", "lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip",
           "eval_every", "log_every", "seed", "device", "threads", "max_minutes", "progress", "val_fraction")
_LM_ONLY = ("model", "feed", "micro_batch_size", "amp", "compile", "compile_backend", "compile_mode",
            "activation_checkpointing",
            "ce_chunk", "parallel", "save_every", "eval_windows", "tensorboard", "peak_tflops")


def lm_settings_from_args(args: argparse.Namespace) -> dict:
    """The settings of a token-shard run: the recipe file's, then the flags given."""
    from ..training.presets import read_config_file

    settings = read_config_file(args.recipe) if args.recipe else {}
    model = settings.get("model")
    if args.recipe and isinstance(model, str) and (Path(args.recipe).parent / model).is_file():
        settings["model"] = str(Path(args.recipe).parent / model)  # a model file named relative to the recipe
    byte_only = [n for _, n, _, _ in _OPTIONS if n not in _SHARED and getattr(args, n) is not None]
    byte_only += [n for n in ("carry_state", "tie_weights") if getattr(args, n) is not None]
    if byte_only:
        raise ValueError(f"option(s) for the byte-level job given with --data/--recipe: {', '.join(byte_only)}; "
                         "set the model with --model (a preset or a config file)")
    for name in _SHARED + _LM_ONLY + ("data",):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    if args.out != "runs/default" or "out" not in settings:
        settings["out"] = args.out
    return settings


def run(args: argparse.Namespace) -> int:
    from ..training.loop import resume_training, train

    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    if args.data or args.recipe:
        from ..training.lm import RunConfig, resume_lm, train_lm

        settings = lm_settings_from_args(args)
        if args.resume:
            result = resume_lm(settings.pop("out"), settings, stop_after_step=args.stop_after_step)
        else:
            result = train_lm(RunConfig.from_dict(settings), overwrite=args.overwrite,
                              stop_after_step=args.stop_after_step)
        return 130 if result["reason"] == "interrupted" else 0
    if any(getattr(args, n) is not None for n in _LM_ONLY + ("stop_after_step",)):
        raise ValueError("--model, --parallel, --amp and the other token-shard options need --data DIR (or --recipe)")
    config, given = config_from_args(args)
    if args.resume:
        result = resume_training(args.out, given)
    else:
        result = train(config, args.out, overwrite=args.overwrite)
    return 130 if result.interrupted else 0
