"""The training loop: plain PyTorch, one function, resumable bit for bit.

`train(config, out_dir)` reads the corpus, builds the model, and runs AdamW with warmup + cosine over
truncated-BPTT windows (the recurrent state is carried from one window to the next and detached),
validating every `eval_every` steps. Each validation writes a checkpoint (weights + everything needed to
continue: optimiser, step, RNG, carried state, history), the loss-curve PNG and metrics.json. A run
continued with `resume_training` produces the same losses as an uninterrupted one.

Ctrl-C stops at the end of the current step and saves a checkpoint to resume from.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..checkpoints.atomic import resolve_directory, write_json_atomic
from ..checkpoints.native import (
    CHECKPOINT_FILES, WEIGHTS_NAME, load_state_into, load_training_state, read_config, read_weights, write_checkpoint,
)
from ..data import ByteSplit, StreamBatcher, decode_bytes, encode_prompt, load_corpus, unigram_bits_per_byte
from ..nn.state import detach_state, state_to
from .config import RESUMABLE_OVERRIDES, TrainConfig
from .engine import optimizer_step, resolve_device, run_loop
from .metrics import bits_per_byte, evaluate
from .model_factory import build_model
from .plot import plot_loss_curve
from .progress import progress_bar
from .schedule import warmup_cosine_lr
from .settings import resume_settings

CHECKPOINT_SUBDIR = "checkpoint"


@dataclass
class TrainResult:
    step: int
    val_loss: float
    val_bpb: float
    unigram_bpb: float
    history: dict
    out_dir: Path
    sample: str | None
    interrupted: bool = False


def merge_resume_config(saved: TrainConfig, overrides: dict) -> TrainConfig:
    """The saved settings with the few that may change on resume (`steps` and bookkeeping) replaced;
    any other setting that differs from the saved run is an error, since it would break continuation."""
    return resume_settings(TrainConfig, saved.to_dict(), overrides, RESUMABLE_OVERRIDES)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# What a run writes into its directory: the only entries `overwrite=True` may replace (the byte-level job and
# token-shard runs: metrics.jsonl, tensorboard/; their checkpoints: native files or DCP's .metadata + shards).
RUN_FILES = (CHECKPOINT_SUBDIR, "metrics.json", "metrics.jsonl", "loss_curve.png", "tensorboard", "model")
_DCP_FILE = re.compile(r"(\.metadata|__\d+_\d+\.distcp|carried-rank\d+\.pt|trainer\.json|run_config\.json"
                       r"|model_config\.json)")


_EXPORT_FILE = re.compile(r"(config\.json|tokenizer\.json|generation_config\.json|model[-\w.]*\.safetensors"
                          r"|model\.safetensors\.index\.json)")


def _ours_in_checkpoint(name: str) -> bool:
    return name in CHECKPOINT_FILES or bool(_DCP_FILE.fullmatch(name))


_OURS_IN = {CHECKPOINT_SUBDIR: _ours_in_checkpoint, "model": lambda name: bool(_EXPORT_FILE.fullmatch(name))}


def check_run_directory(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse a run directory that would lose someone's files: `out_dir` must be missing or empty, or (with
    `overwrite`) hold nothing but an earlier run's own files (RUN_FILES, a checkpoint/ of checkpoint files)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, expected a directory for the run (checkpoint/, metrics.json, "
                         "loss_curve.png)")
    if not out_dir.exists():
        return
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    if not overwrite:
        raise ValueError(f"--out {out_dir} is not empty (holds {', '.join(entries[:5])}"
                         f"{', ...' if len(entries) > 5 else ''}); pass --resume to continue the run saved there, "
                         "--overwrite to replace an earlier run's files, or choose a new --out")
    foreign = [name for name in entries if name not in RUN_FILES and not name.startswith(
        tuple(f".{n}." for n in RUN_FILES))]
    for sub, ours in _OURS_IN.items():
        folder = out_dir / sub
        if folder.exists():
            if not folder.is_dir():
                foreign.append(sub)
            else:
                foreign += [f"{sub}/{p.name}" for p in sorted(folder.iterdir()) if not ours(p.name)]
    if foreign:
        raise ValueError(f"--overwrite: {out_dir} holds files a training run did not write ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}); they would be lost, so nothing was changed; "
                         "move them or choose a new --out")


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    stop_after_step: int | None = None,
    log: Callable[[str], None] = print,
    corpus: ByteSplit | None = None,
) -> TrainResult:
    """Train a byte-level LM from scratch into `out_dir`; see the module docstring.

    overwrite: allow `out_dir` to hold an earlier run (its checkpoint/, metrics.json and loss_curve.png are
    replaced); without it `out_dir` must be missing or empty. Files a run did not write are never touched.
    stop_after_step: end the run early after this many total steps (as an interruption would), saving a
    checkpoint that `resume_training` continues from.
    corpus: use this split instead of reading `config.text_file` / the embedded corpus.
    """
    out_dir = Path(out_dir)
    config = config.validated()
    check_run_directory(out_dir, overwrite=overwrite)
    return _run(config, out_dir, None, stop_after_step, log, corpus)


def resume_training(
    out_dir: str | os.PathLike,
    overrides: dict | None = None,
    *,
    stop_after_step: int | None = None,
    log: Callable[[str], None] = print,
    corpus: ByteSplit | None = None,
) -> TrainResult:
    """Continue the run saved in `out_dir` exactly where it stopped.

    overrides: settings to change, limited to `steps` (train further) and bookkeeping such as `device`;
    any other setting that differs from the saved run raises ValueError.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / CHECKPOINT_SUBDIR
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, expected the directory of the run to resume")
    if not resolve_directory(ckpt_dir).is_dir():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_dir} (train into --out {out_dir} first)")
    saved_state, saved_cfg = load_training_state(ckpt_dir)
    config = merge_resume_config(TrainConfig.from_dict(saved_cfg), overrides or {})
    return _run(config, out_dir, saved_state, stop_after_step, log, corpus)


def _run(config: TrainConfig, out_dir: Path, saved_state: dict | None, stop_after_step: int | None,
         log: Callable[[str], None], corpus: ByteSplit | None) -> TrainResult:
    started = time.perf_counter()
    ckpt_dir = out_dir / CHECKPOINT_SUBDIR
    device = resolve_device(config.device)
    if config.threads:  # otherwise torch's own default
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    if corpus is None:
        corpus = load_corpus(config.text_file, config.val_fraction)
    unigram_bpb = unigram_bits_per_byte(corpus.train, corpus.val)
    corpus_digest = hashlib.sha256(corpus.train.numpy().tobytes() + corpus.val.numpy().tobytes()).hexdigest()
    batcher = StreamBatcher(corpus.train, config.batch_size, config.seq_len, seed=config.seed)

    model = build_model(config).to(device)
    optimizer = config.optimizer(model)
    n_params = sum(p.numel() for p in model.parameters())
    history: dict = {"train": [], "val": []}
    start_step, carried = 0, None

    if saved_state is not None:
        if read_config(ckpt_dir)["model_type"] != "flashxlstm-neurips":
            raise ValueError(f"--resume: {ckpt_dir} does not hold a flashxlstm-neurips model")
        load_state_into(model, read_weights(ckpt_dir / WEIGHTS_NAME), str(ckpt_dir / WEIGHTS_NAME))
        try:
            optimizer.load_state_dict(saved_state["optimizer"])
        except (ValueError, KeyError) as e:
            raise ValueError(f"--resume: the optimiser state does not fit the model ({e})") from None
        if saved_state.get("corpus_sha256", corpus_digest) != corpus_digest:
            raise ValueError(f"--resume: the training text ({corpus.source}) is not the one the checkpoint was "
                             "trained on, so the run cannot continue exactly; train into a new --out")
        start_step = int(saved_state["step"])
        history = saved_state["history"]
        carried = state_to(saved_state["carried_state"], device=device)
        _set_rng_state(saved_state["rng"], device)
        if start_step >= config.steps:
            raise ValueError(
                f"--resume: the checkpoint has already trained {start_step} of {config.steps} steps; "
                "pass a larger --steps to train further"
            )

    log(f"corpus: {corpus.source}: {len(corpus.train):,} training bytes, {len(corpus.val):,} validation bytes")
    log(f"unigram baseline (training byte frequencies): {unigram_bpb:.3f} bits per byte on validation")
    log(f"model: {config.block_pattern} with {config.num_blocks} blocks, width {config.embedding_dim}, "
        f"{n_params:,} parameters; device {device}, {torch.get_num_threads()} threads")
    log(f"training: {config.steps} steps of {config.batch_size} x {config.seq_len} bytes "
        f"({batcher.windows_per_epoch} steps per epoch), lr {config.lr:g} -> {config.min_lr:g}"
        + (f", resuming at step {start_step}" if start_step else ""))

    def validate(step: int) -> dict:
        loss = evaluate(model, corpus.val, config.eval_batch_size, config.eval_seq_len, device)
        record = {"step": step, "loss": loss, "bpb": bits_per_byte(loss)}
        if not history["val"] or history["val"][-1]["step"] != step:
            history["val"].append(record)
        return record

    notes: dict = {}

    def save(step: int) -> None:
        training_state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(device),
            "carried_state": state_to(carried, device="cpu"),
            "history": history,
            "epoch": step // batcher.windows_per_epoch,
            "corpus_sha256": corpus_digest,
        }
        write_checkpoint(ckpt_dir, model, training_state=training_state, train_config=config.to_dict())
        try:
            plot_loss_curve(history, out_dir / "loss_curve.png", baseline_bpb=unigram_bpb)
        except ModuleNotFoundError as e:
            if not notes.get("plot"):
                log(f"note: no loss_curve.png: {e}")
                notes["plot"] = True
        write_json_atomic(out_dir / "metrics.json", {
            "step": step, "unigram_bpb": unigram_bpb, "val": history["val"],
            "last_train_loss": history["train"][-1]["loss"] if history["train"] else None,
            "parameters": n_params, "config": config.to_dict(),
        })

    out_dir.mkdir(parents=True, exist_ok=True)
    end_step = config.steps if stop_after_step is None else min(config.steps, stop_after_step)
    model.train()
    progress = None
    if config.progress:
        progress = progress_bar(total=config.steps, initial=start_step, desc="train", unit="step")
    say = progress.write if progress is not None else log
    recent = {"tokens": 0, "time": 0.0, "loss": []}

    def do_step(step: int) -> None:
        nonlocal carried
        t0 = time.perf_counter()
        window = batcher.window(step)
        state_in = None if (window.reset_state or not config.carry_state) else carried
        lr = warmup_cosine_lr(step, lr=config.lr, warmup_steps=config.warmup_steps,
                              total_steps=config.steps, min_lr=config.min_lr)
        inputs, targets = window.inputs.to(device), window.targets.to(device)
        outputs = {}

        def loss_fn(_micro: int):
            logits, outputs["state"] = model(inputs, state=state_in)
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

        try:
            loss, grad_norm = optimizer_step(model, optimizer, loss_fn, lr=lr, grad_clip=config.grad_clip, step=step)
        except FloatingPointError as e:
            raise ValueError(str(e)) from None
        carried = detach_state(outputs["state"])
        done = step + 1
        loss_value = float(loss)
        history["train"].append({"step": done, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm)})
        recent["tokens"] += inputs.numel()
        recent["time"] += time.perf_counter() - t0
        recent["loss"].append(loss_value)
        if progress is not None:
            progress.update(1)
        if done % config.log_every == 0 or done == end_step:
            mean_loss = sum(recent["loss"]) / len(recent["loss"])
            tok_s = recent["tokens"] / max(recent["time"], 1e-9)
            if progress is not None:
                progress.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}")
            else:
                log(f"step {done}/{config.steps}: loss {mean_loss:.4f}, {tok_s:,.0f} tokens/s, lr {lr:.2e}")
            recent.update(tokens=0, time=0.0, loss=[])

    def on_eval(step: int) -> None:
        record = validate(step)
        say(f"step {step}: validation loss {record['loss']:.4f}, {record['bpb']:.4f} bits per byte "
            f"(unigram {unigram_bpb:.3f})")
        save(step)

    result = run_loop(start_step=start_step, total_steps=config.steps, end_step=end_step, do_step=do_step,
                      eval_every=config.eval_every, on_eval=on_eval, started=started,
                      time_limit_s=60 * config.max_minutes if config.max_minutes else None)
    step, interrupted = result.step, result.reason == "interrupted"
    if result.reason == "time limit":
        say(f"time limit of {config.max_minutes:g} minutes reached at step {step} of {config.steps}")
    if progress is not None:
        progress.close()

    if step < config.steps:  # stopped early: make sure the checkpoint is at `step`
        validate(step)
        save(step)
        log(f"stopped at step {step} of {config.steps}; continue with --resume (checkpoint: {ckpt_dir})")
    record = history["val"][-1] if history["val"] else validate(step)
    sample = None
    if not interrupted and config.sample_tokens > 0:
        sample = sample_text(model, config.sample_prompt, config.sample_tokens, seed=config.seed, device=device)
        log(f"sample (temperature 0.8, top-k 40) after {config.sample_prompt!r}:\n{config.sample_prompt}{sample}")
    log(f"done in {time.perf_counter() - started:.0f} s: step {step}, validation {record['bpb']:.4f} bits per byte "
        f"vs unigram {unigram_bpb:.3f}; "
        f"checkpoint {ckpt_dir}, loss curve {out_dir / 'loss_curve.png'}")
    return TrainResult(step=step, val_loss=record["loss"], val_bpb=record["bpb"], unigram_bpb=unigram_bpb,
                       history=history, out_dir=out_dir, sample=sample, interrupted=interrupted)


def sample_text(model, prompt: str, max_new_tokens: int, *, seed: int, device: torch.device,
                temperature: float = 0.8, top_k: int | None = 40) -> str:
    """A seeded sample continuing `prompt` (bytes decoded with errors='replace')."""
    from ..generation import generate

    ids = encode_prompt(prompt).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    out = generate(model, ids, max_new_tokens, do_sample=True, temperature=temperature, top_k=top_k,
                   generator=generator)
    model.train()
    return decode_bytes(out[0, ids.shape[1]:].tolist())
