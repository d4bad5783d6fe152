"""`flashxlstm train --data DIR`: a language model of either family on `flashxlstm prepare` token shards, on one
device or under torchrun (DDP / FSDP2), resumable on any world size.

    torchrun --nproc-per-node 2 -m flashxlstm train --data data/ --model large-125m --parallel fsdp \
        --amp bf16 --seq-len 2048 --batch-size 16 --steps 10000 --out runs/large125

The global batch (`batch_size` rows of `seq_len` tokens) is the same for every world size: rank r takes its
share of rows, in `micro_batch_size` pieces (gradient accumulation). The loss of a step is the mean over the
global batch's counted targets, so a run's losses do not depend on the world size or the accumulation.
Checkpoints (torch.distributed.checkpoint) every `save_every` steps and at the end; `--resume` continues from
the last one with the same or another world size (a stream-fed run's carried states are saved per rank and
regrouped by global row). At the end the weights are exported to OUT/model for from_pretrained / generate.
Metrics go to OUT/metrics.jsonl (loss, lr, grad norm, tokens/s, MFU where a peak is known, memory), optionally
TensorBoard; validation loss and perplexity every `eval_every` steps, and OUT/loss_curve.png.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..checkpoints.atomic import atomic_file, resolve_directory
from ..data.shards import PackedBatches, StreamBatches, TokenData, pack_rows, validation_windows
from ..nn.state import detach_state, map_state, state_to
from . import distributed as D
from .engine import autocast, optimizer_step, run_loop
from .compile import compile_regions
from .lm_loss import CausalLMLoss, checkpoint_blocks
from .presets import build_model, resolve_model
from .schedule import warmup_cosine_lr
from .settings import LoopSettings, resume_settings

RUN_CONFIG = "run_config.json"
MODEL_CONFIG = "model_config.json"
# Settings a resumed run may change: how it runs, not what it computes.
RESUMABLE = ("steps", "out", "data", "parallel", "micro_batch_size", "device", "threads", "compile", "compile_backend",
             "compile_mode",
             "activation_checkpointing",
             "log_every", "eval_every", "save_every", "progress", "tensorboard", "max_minutes", "peak_tflops",
             "eval_windows")


@dataclass
class RunConfig(LoopSettings):
    data: str = ""
    out: str = "runs/lm"
    model: str | dict = "large-125m"  # a preset name, a config file, or a dict of config fields
    feed: str = "packed"  # "packed" (documents reset the state) or "stream" (carried state, truncated BPTT)
    seq_len: int = 2048
    batch_size: int = 8  # global rows per optimiser step
    micro_batch_size: int | None = None  # rows per rank per forward; None: batch_size / world size
    min_lr: float = 1e-4  # the end of the cosine decay (steps, lr, warm-up, decay, betas, clipping: LoopSettings')
    amp: str = "none"  # "none" (fp32) or "bf16" (autocast; fp32 master weights and recurrent states)
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile's backend ("aot_eager": the graphs without code generation)
    compile_mode: str | None = None  # torch.compile's mode (None: default; "max-autotune-no-cudagraphs": tunes longer)
    activation_checkpointing: bool = False
    ce_chunk: int = 4096
    parallel: str = "none"  # "none", "ddp", "fsdp"
    val_fraction: float = 0.01
    eval_every: int = 500
    eval_windows: int | None = 64
    save_every: int = 1000
    log_every: int = 10
    threads: int | None = None  # CPU threads per process; None: torch's default
    progress: bool = True
    tensorboard: bool = False
    max_minutes: float | None = None
    peak_tflops: float | None = None  # for MFU; None: measured bf16 matmul peak on CUDA, no MFU on CPU
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        super().check()
        self.check_positive_ints("seq_len", "batch_size", "save_every", "log_every", "ce_chunk")
        if self.feed not in ("packed", "stream"):
            raise ValueError(f"feed must be 'packed' or 'stream', got {self.feed!r}")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {self.amp!r}")
        if self.parallel not in ("none", "ddp", "fsdp"):
            raise ValueError(f"parallel must be none, ddp or fsdp, got {self.parallel!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if not self.data:
            raise ValueError("--data DIR is required (a directory made by `flashxlstm prepare`)")
        if self.compile:
            import torch._dynamo

            known = torch._dynamo.list_backends(exclude_tags=())
            if self.compile_backend not in known:
                raise ValueError(f"compile_backend {self.compile_backend!r} is not a torch.compile backend; "
                                 f"known: {', '.join(known)}")
            modes = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
            if self.compile_mode not in modes:
                raise ValueError(f"compile_mode {self.compile_mode!r} is not a torch.compile mode; known: "
                                 f"{', '.join(m for m in modes if m)}")


def _memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"max_memory_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        import resource

        return {"max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    except ImportError:
        return {}


def regroup_states(parts: list, first_row: int, micro: int, accum: int) -> list:
    """The carried states of one rank's `accum` micro-batches of `micro` rows starting at global row
    `first_row`, from `parts`: every saved micro-batch's state in global row order (any world size and
    micro-batch size). All None (nothing carried yet) gives Nones."""
    if not parts or any(p is None for p in parts):
        return [None] * accum

    def cat(items):
        if items[0] is None:
            return None
        if isinstance(items[0], torch.Tensor):
            return torch.cat(items, dim=0)
        parts = [cat([it[i] for it in items]) for i in range(len(items[0]))]
        return type(items[0])(*parts) if hasattr(items[0], "_fields") else type(items[0])(parts)  # typed states

    rows = cat(parts)
    return [map_state(lambda t: t[first_row + m * micro: first_row + (m + 1) * micro], rows) for m in range(accum)]


def measured_peak_tflops(device: torch.device) -> float | None:
    """The bf16 matmul rate this GPU reaches (8192^3, best of 5), the denominator of MFU; None on CPU."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    best = math.inf
    for _ in range(6):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * 8192**3 / best / 1e12


def train_lm(config: RunConfig, *, overwrite: bool = False, stop_after_step: int | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Run the training `config` describes into `config.out` (new or empty unless `overwrite`); returns
    {"step", "history", "world_size", "reason"}."""
    from .loop import check_run_directory  # the byte-level job's rule: never touch files a run did not write

    config = config.validated()
    check_run_directory(Path(config.out), overwrite=overwrite)
    return _run(config, False, stop_after_step, log)


def resume_lm(out: str | os.PathLike, overrides: dict | None = None, *, stop_after_step: int | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Continue the run saved in `out` (any world size). overrides: RunConfig fields to change, limited to
    how the run executes (RESUMABLE: steps, parallelism, logging, ...); others must match the saved run."""
    ckpt_dir = Path(out) / "checkpoint"
    if not resolve_directory(ckpt_dir).is_dir():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_dir} (train into --out {out} first)")
    saved = json.loads((resolve_directory(ckpt_dir) / RUN_CONFIG).read_text())
    config = resume_settings(RunConfig, saved, {**(overrides or {}), "out": str(out)}, RESUMABLE)
    return _run(config, True, stop_after_step, log)


def _run(config: RunConfig, resume: bool, stop_after_step: int | None, log: Callable[[str], None]) -> dict:
    world = D.setup(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    say = log if world.main else (lambda _msg: None)
    out = Path(config.out)
    ckpt_dir = out / "checkpoint"
    D.barrier(world)

    data = TokenData(config.data)
    train_range, val_range = data.split(config.val_fraction)
    family, fields = resolve_model(config.model, data.vocab_size)
    torch.manual_seed(config.seed)
    model = build_model(family, fields).to(world.device)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.lm_head.weight.numel() + (model.token_embedding.weight.numel() if hasattr(model, "token_embedding")
                                               else model.backbone.embeddings.weight.numel())
    if config.activation_checkpointing:
        checkpoint_blocks(model)
    loss_module = CausalLMLoss(model, config.ce_chunk)
    if config.compile:  # per block and per loss chunk, before DDP / FSDP2 wrap it (training/compile.py)
        compile_regions(loss_module, backend=config.compile_backend, mode=config.compile_mode)
    loss_module = D.parallelize(loss_module, config.parallel, world, amp=config.amp)
    if config.parallel == "none" and world.size > 1:
        raise ValueError("a torchrun launch with several processes needs --parallel ddp or fsdp")
    optimizer = config.optimizer(model)
    step_module = loss_module

    rows_per_rank, rem = divmod(config.batch_size, world.size)
    if rem:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of the world size {world.size}")
    micro = config.micro_batch_size or rows_per_rank
    if rows_per_rank % micro:
        raise ValueError(f"micro_batch_size {micro} must divide the rows per rank ({rows_per_rank})")
    accum = rows_per_rank // micro
    batches = (PackedBatches if config.feed == "packed" else StreamBatches)(
        data, train_range, config.seq_len, config.batch_size, config.seed)
    val_starts = validation_windows(data, val_range, config.seq_len, config.eval_windows)

    history: dict = {"train": [], "val": []}
    start_step, carried = 0, [None] * accum
    if resume:
        state = D.load_checkpoint(ckpt_dir, loss_module, optimizer)
        start_step, history = int(state["step"]), state["history"]
        if config.feed == "stream":  # every row's carried state, regrouped for this world size
            saved = D.load_rank_files(ckpt_dir, int(state["world_size"]))
            carried = [state_to(c, device=world.device) for c in
                       regroup_states([c for part in saved for c in part], world.rank * rows_per_rank, micro, accum)]
        if start_step >= config.steps:
            raise ValueError(f"--resume: the checkpoint has already trained {start_step} of {config.steps} steps; "
                             "pass a larger --steps to train further")
    peak = config.peak_tflops or measured_peak_tflops(world.device)
    flops_per_token = 6 * (n_params - n_embed) + 6 * model.lm_head.weight.numel()

    if world.main:
        out.mkdir(parents=True, exist_ok=True)
    D.barrier(world)
    say(f"data: {config.data}: {data.num_tokens:,} tokens ({train_range[1] - train_range[0]:,} train, "
        f"{val_range[1] - val_range[0]:,} validation), vocab {data.vocab_size:,}")
    say(f"model: {family} {config.model if isinstance(config.model, str) else ''}: {n_params:,} parameters; "
        f"world {world.size} x {world.device.type}, parallel {config.parallel}, amp {config.amp}, "
        f"{config.batch_size} x {config.seq_len} tokens per step ({accum} micro-batch(es) of {micro} per rank), "
        f"feed {config.feed}" + (f", resuming at step {start_step}" if start_step else ""))

    tb = None
    if config.tensorboard and world.main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ModuleNotFoundError:
            raise ModuleNotFoundError("--tensorboard needs the tensorboard package: pip install 'flashxlstm[tensorboard]'"
                                      ) from None
        # purge_step: a resumed run drops the events a killed run logged after its last checkpoint
        tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)
    progress = None
    if config.progress and world.main:
        from .progress import progress_bar

        progress = progress_bar(total=config.steps, initial=start_step, desc="train", unit="step")
    write = progress.write if progress is not None else say
    metrics_path = out / "metrics.jsonl"
    if resume and world.main:
        _drop_records_after(metrics_path, start_step)
    timer = {"t": time.perf_counter(), "tokens": 0}

    def emit(record: dict) -> None:
        if not world.main:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    tb.add_scalar(k, v, record["step"])

    def do_step(step: int) -> None:
        first = world.rank * rows_per_rank
        parts = [batches.rows(step, first + m * micro, micro) for m in range(accum)]
        count = torch.tensor(float(sum(int((p.targets != -100).sum()) for p in parts)), device=world.device)
        global_count = float(D.all_reduce_sum(count, world))
        scale = world.size / max(global_count, 1.0)  # DDP / FSDP average gradients over ranks
        lr = warmup_cosine_lr(step, lr=config.lr, warmup_steps=config.warmup_steps, total_steps=config.steps,
                              min_lr=config.min_lr)
        sums = []

        def loss_fn(m: int) -> torch.Tensor:
            b = parts[m]
            state_in = None if (config.feed == "packed" or b.reset_state) else carried[m]
            cu = None if b.cu_seqlens is None else b.cu_seqlens.to(world.device)
            with autocast(world.device, config.amp):
                loss_sum, _, state = step_module(b.inputs.to(world.device), b.targets.to(world.device), cu, state_in)
            if config.feed == "stream":
                carried[m] = detach_state(state)
            sums.append(loss_sum.detach())
            return loss_sum * scale * accum  # the engine divides by accum: the gradient is of the global mean

        try:
            _, grad_norm = optimizer_step(loss_module, optimizer, loss_fn, lr=lr, accum_steps=accum,
                                          grad_clip=config.grad_clip, step=step)
        except Exception as e:
            if config.compile and type(e).__module__.startswith("torch._dynamo"):
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                errors = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception"))]
                reason = (errors or lines or [type(e).__name__])[0]
                raise ValueError(f"--compile: torch.compile failed on this model ({reason[:300]}); "
                                 "train without --compile") from None
            raise
        loss = float(D.all_reduce_sum(torch.stack(sums).sum(), world)) / max(global_count, 1.0)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        record = {"step": step + 1, "loss": loss, "lr": lr,
                  "grad_norm": None if grad_norm is None else float(grad_norm)}
        history["train"].append(record)
        timer["tokens"] += config.batch_size * config.seq_len
        if progress is not None:
            progress.update(1)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            elapsed = time.perf_counter() - timer["t"]
            tok_s = timer["tokens"] / max(elapsed, 1e-9)
            extra = {"tokens_per_s": tok_s, **_memory(world.device)}
            if peak:
                extra["mfu"] = tok_s * flops_per_token / (peak * 1e12 * world.size)
            emit({**record, **extra})
            if progress is not None:
                progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}")
            else:
                say(f"step {step + 1}/{config.steps}: loss {loss:.4f}, {tok_s:,.0f} tokens/s, lr {lr:.2e}")
            timer.update(t=time.perf_counter(), tokens=0)

    @torch.no_grad()
    def validate(step: int) -> dict:
        loss_module.eval()
        total = torch.zeros((), dtype=torch.float64, device=world.device)
        count = torch.zeros((), dtype=torch.float64, device=world.device)
        mine = val_starts[world.rank::world.size]
        for k in range(0, max(len(mine), 1), micro):
            starts = mine[k:k + micro] or val_starts[:1]  # ranks with fewer windows still join the collectives
            b = pack_rows(data, starts, config.seq_len)
            with autocast(world.device, config.amp):
                s, c, _ = loss_module(b.inputs.to(world.device), b.targets.to(world.device),
                                      b.cu_seqlens.to(world.device))
            if mine[k:k + micro]:
                total += s.double()
                count += c.double()
        loss_module.train()
        loss = float(D.all_reduce_sum(total, world) / D.all_reduce_sum(count, world))
        record = {"step": step, "val_loss": loss, "val_perplexity": math.exp(min(loss, 700))}
        history["val"].append(record)
        emit(record)
        write(f"step {step}: validation loss {loss:.4f}, perplexity {record['val_perplexity']:.2f}")
        return record

    def save(step: int) -> None:
        per_rank = [state_to(c, device="cpu") for c in carried] if config.feed == "stream" else None
        D.save_checkpoint(ckpt_dir, loss_module, optimizer,
                          {"step": step, "history": history, "world_size": world.size},
                          world, extra_files={RUN_CONFIG: config.to_dict(),
                                              MODEL_CONFIG: {"family": family, **fields}}, per_rank=per_rank)
        if world.main:
            _plot(history, out / "loss_curve.png", say)

    def on_eval(step: int) -> None:
        validate(step)
        save(step)

    def every(step: int) -> None:
        do_step(step)
        done = step + 1
        if done % config.save_every == 0 and done % config.eval_every and done != config.steps:
            save(done)

    loss_module.train()
    result = run_loop(start_step=start_step, total_steps=config.steps, end_step=stop_after_step, do_step=every,
                      eval_every=config.eval_every, on_eval=on_eval,
                      time_limit_s=60 * config.max_minutes if config.max_minutes else None)
    if result.step < config.steps and (not history["val"] or history["val"][-1]["step"] != result.step):
        validate(result.step)
        save(result.step)
    if result.step < config.steps:
        say(f"stopped at step {result.step} of {config.steps} ({result.reason}); continue with --resume")
    else:
        export_model(loss_module, family, fields, out / "model", world, data.directory / "tokenizer.json")
        say(f"done: step {result.step}, validation loss {history['val'][-1]['val_loss']:.4f}; model for "
            f"from_pretrained / generate in {out / 'model'}, checkpoint {ckpt_dir}, metrics {metrics_path}")
    if progress is not None:
        progress.close()
    if tb is not None:
        tb.close()
    return {"step": result.step, "history": history, "world_size": world.size, "reason": result.reason}


def export_model(module, family: str, fields: dict, directory: Path, world: D.World, tokenizer: Path) -> None:
    """The trained weights, gathered to rank 0, as a checkpoint `flashxlstm.from_pretrained` and
    `flashxlstm generate` load: flashxlstm's native format (NeurIPS family) or the hub layout (7B family),
    with the data's tokenizer.json beside it."""
    import shutil

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not world.main:
        return
    weights = {k.removeprefix("model."): v for k, v in full.items()}
    with torch.device("meta"):
        model = build_model(family, fields)
    model.load_state_dict(weights, assign=True)
    if family == "large":  # a shape transformers' xLSTM cannot run is written as a flashxlstm-only checkpoint
        from ..checkpoints.hub import transformers_incompatibility

        model.save_pretrained(directory, for_transformers=transformers_incompatibility(model.config) is None)
    else:
        from ..checkpoints.native import save_model

        save_model(model, directory)
    if tokenizer.is_file():
        shutil.copyfile(tokenizer, directory / "tokenizer.json")


def _drop_records_after(path: Path, step: int) -> None:
    """Keep the metrics records of steps <= `step`: a run stopped (or killed) after its last checkpoint logged
    steps that the resumed run repeats. Rewritten atomically; a missing file stays missing."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            continue
    if len(kept) != len(lines):
        atomic_file(path, lambda tmp: tmp.write_text("".join(k + "\n" for k in kept)))


def _plot(history: dict, path: Path, log: Callable[[str], None]) -> None:
    """Training loss and validation loss against the step (skipped with a note without matplotlib)."""
    try:
        from .plot import plot_curves
    except ModuleNotFoundError as e:
        log(f"note: no loss_curve.png: {e}")
        return
    try:
        plot_curves(history, path)
    except ModuleNotFoundError as e:
        log(f"note: no loss_curve.png: {e}")
