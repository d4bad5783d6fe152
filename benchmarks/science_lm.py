"""Equal-wall-time language-model runs on the same tokens: NeurIPS xLSTM[7:1], the 7B-family architecture and a
Llama baseline (transformers LlamaForCausalLM, SDPA) at about the same parameter count; validation perplexity
curves (issue 13's science question: does xLSTM reach Llama's perplexity or lower?).

Every model trains for `--minutes` of training time (validation excluded) on the same batches in the same
order: `flashxlstm prepare` shards read by the trainer's PackedBatches (windows of `--seq-len` tokens, documents
reset the recurrent state through cu_seqlens; targets that cross a document border are not counted, for every
model). The Llama sees the same rows with ordinary causal attention. The same loss code (the trainer's chunked
cross-entropy), the same optimiser step (the trainer's `optimizer_step`: AdamW, betas 0.9 / 0.95, weight
decay 0.1 on weight matrices, clipping at 1.0), bf16 autocast with fp32 master weights, and one learning-rate
schedule for all: linear warmup over `--warmup-steps`, then a cosine to `--min-lr` over the wall-time budget
(the schedule follows the fraction of the budget spent, so every model ends its decay when its time is up).
Validation (the same held-out windows for every model) at `--evals` evenly spaced points of the budget. The clock
starts after `--warmup-runs` untimed forward + backward passes (kernel compilation is not training time).

    python benchmarks/science_lm.py --data data/docs-16k --minutes 10 --out results/science   # the full runs
    python benchmarks/science_lm.py --plot results/science/science_lm.jsonl                   # the curve PNG

Rows go to OUT/science_lm.jsonl as they are measured and a table to OUT/science_lm.md at the end of each
model; `--budget-s` is a hard cap on the whole script (an alarm ends the model in progress, keeping its rows).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

MODELS = ("xlstm71-125m", "large-125m", "llama")


class _Budget(Exception):
    pass


def _alarm(signum, frame):
    raise _Budget


class LlamaLoss(nn.Module):
    """A transformers Llama behind the trainer's loss interface: (input_ids, targets, cu_seqlens, state) ->
    (loss sum, counted targets, None), through the same chunked cross-entropy as ours."""

    def __init__(self, model: nn.Module, ce_chunk: int = 4096):
        super().__init__()
        self.model = model
        self.ce_chunk = ce_chunk

    def forward(self, input_ids, targets, cu_seqlens=None, state=None):
        from flashxlstm.data.shards import IGNORE_INDEX
        from flashxlstm.training.lm_loss import chunked_cross_entropy

        hidden = self.model.model(input_ids=input_ids).last_hidden_state
        B, S = input_ids.shape
        loss = chunked_cross_entropy(hidden.reshape(B * S, -1), self.model.lm_head.weight, targets.reshape(-1),
                                     chunk=self.ce_chunk)
        return loss, (targets != IGNORE_INDEX).sum(), None


def build(name: str, vocab: int, device: torch.device, llama_like: str) -> tuple[nn.Module, nn.Module, str]:
    """(the model, the loss module, a description); `llama` is sized like `llama_like` (width, parameters)."""
    from flashxlstm.training.lm_loss import CausalLMLoss
    from flashxlstm.training.presets import build_model, resolve_model

    if name == "llama":
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_train import build_llama, llama_config

        family, fields = resolve_model(llama_like, vocab)
        with torch.device("meta"):
            target = sum(p.numel() for p in build_model(family, fields).parameters())
        width = fields["embedding_dim"]
        cfg = llama_config(width, target, vocab)
        model = build_llama(cfg, device, ac=False)
        return model, LlamaLoss(model), f"Llama {cfg.num_hidden_layers} x {width} (SDPA)"
    family, fields = resolve_model(name, vocab)
    torch.manual_seed(0)
    model = build_model(family, fields).to(device)
    return model, CausalLMLoss(model), f"{name} ({family})"


def lr_at(step: int, frac: float, args) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


@torch.no_grad()
def validate(module, data, starts, seq_len, rows, device) -> float:
    from flashxlstm.data.shards import pack_rows
    from flashxlstm.training.engine import autocast

    module.eval()
    total = count = 0.0
    for k in range(0, len(starts), rows):
        b = pack_rows(data, starts[k:k + rows], seq_len)
        with autocast(device, "bf16" if device.type == "cuda" else "none"):
            s, c, _ = module(b.inputs.to(device), b.targets.to(device), b.cu_seqlens.to(device))
        total += float(s)
        count += float(c)
    module.train()
    return total / max(count, 1.0)


def run_model(name: str, args, data, train_range, val_starts, device, emit) -> dict:
    from flashxlstm.data.shards import PackedBatches
    from flashxlstm.training.engine import autocast, optimizer_step
    from flashxlstm.training.schedule import decay_groups

    torch.manual_seed(args.seed)
    model, module, desc = build(name, data.vocab_size, device, args.llama_like)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(decay_groups(model, 0.1), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1,
                            **({"fused": True} if device.type == "cuda" else {}))
    batches = PackedBatches(data, train_range, args.seq_len, args.batch_size, args.seed)
    amp = "bf16" if device.type == "cuda" else "none"
    budget = 60 * args.minutes
    marks = [budget * (i + 1) / args.evals for i in range(args.evals)]
    result = {"model": name, "description": desc, "params": n_params, "curve": []}
    emit({"model": name, "description": desc, "params": n_params, "event": "start"})
    # Untimed warm-up: forward + backward of `--warmup-runs` batches without an optimiser step (kernels compile,
    # caches fill); the gradients are dropped, so the weights and the data order stay those of a cold start.
    for w in range(args.warmup_runs):
        wb = batches.rows(w, 0, args.batch_size)
        with autocast(device, amp):
            s, c, _ = module(wb.inputs.to(device), wb.targets.to(device), wb.cu_seqlens.to(device))
        (s / c.clamp(min=1)).backward()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time, step, tokens = 0.0, 0, 0
    while marks:
        b = batches.rows(step, 0, args.batch_size)
        lr = lr_at(step, train_time / budget, args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()

        def loss_fn(_micro):
            with autocast(device, amp):
                s, c, _ = module(b.inputs.to(device), b.targets.to(device), b.cu_seqlens.to(device))
            return s / c.clamp(min=1)

        loss, _ = optimizer_step(module, opt, loss_fn, lr=lr, grad_clip=1.0, step=step, check_finite=False)
        loss = float(loss)  # synchronises: the step's time is complete
        train_time += time.perf_counter() - t0
        if not math.isfinite(loss):
            result["error"] = f"loss {loss} at step {step}"
            emit({"model": name, "event": "error", "error": result["error"]})
            break
        step += 1
        tokens += args.batch_size * args.seq_len
        if train_time >= marks[0]:
            marks.pop(0)
            val = validate(module, data, val_starts, args.seq_len, args.batch_size, device)
            point = {"model": name, "step": step, "tokens": tokens, "train_time_s": round(train_time, 2),
                     "train_loss": loss, "val_loss": val, "val_ppl": math.exp(min(val, 700)),
                     "tokens_per_s": tokens / train_time}
            result["curve"].append(point)
            emit(point)
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def table(results: list[dict], args) -> list[str]:
    lines = [f"Equal training time per model: {args.minutes:g} min; {args.batch_size} x {args.seq_len} tokens per "
             f"step; lr {args.lr:g} -> {args.min_lr:g} (warmup {args.warmup_steps} steps, cosine over the time)",
             "", "| model | params | steps | tokens | tokens/s | val loss | val perplexity | curve (ppl at each eval) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["curve"]
        if not c:
            lines.append(f"| {r['description']} | {r['params'] / 1e6:.1f}M | {r.get('error', 'no evaluation')} |"
                         " | | | | |")
            continue
        last = c[-1]
        lines.append(f"| {r['description']} | {r['params'] / 1e6:.1f}M | {last['step']} | {last['tokens'] / 1e6:.1f}M"
                     f" | {last['tokens_per_s']:,.0f} | {last['val_loss']:.3f} | **{last['val_ppl']:.1f}** | "
                     + ", ".join(f"{p['val_ppl']:.0f}" for p in c) + (f" ({r['error']})" if "error" in r else "")
                     + " |")
    return lines


def plot(jsonl: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict = {}
    names: dict = {}
    for line in jsonl.read_text().splitlines():
        r = json.loads(line)
        if r.get("event") == "start":
            names[r["model"]] = r["description"]
        elif "val_ppl" in r:
            curves.setdefault(r["model"], []).append(r)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for m, pts in curves.items():
        ax[0].plot([p["train_time_s"] for p in pts], [p["val_ppl"] for p in pts], "o-", label=names.get(m, m))
        ax[1].plot([p["tokens"] / 1e6 for p in pts], [p["val_ppl"] for p in pts], "o-", label=names.get(m, m))
    for a, xl in zip(ax, ("training time (s)", "training tokens (M)")):
        a.set_xlabel(xl)
        a.set_ylabel("validation perplexity")
        a.set_yscale("log")
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="a `flashxlstm prepare` directory")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--llama-like", default="large-125m", help="the Llama baseline's width and parameter target")
    p.add_argument("--minutes", type=float, default=10.0, help="training time per model")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--min-lr", type=float, default=1.5e-4)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--warmup-runs", type=int, default=2,
                   help="untimed forward + backward passes before the clock starts (compilation; no update)")
    p.add_argument("--evals", type=int, default=6, help="validations per model, evenly spaced in time")
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=None, help="hard cap on the whole script (seconds)")
    p.add_argument("--out", default=None)
    p.add_argument("--plot", default=None, help="only draw OUT-style science_lm.jsonl into a PNG beside it")
    args = p.parse_args()
    if args.plot:
        plot(Path(args.plot), Path(args.plot).with_suffix(".png"))
        return 0
    if not args.data:
        p.error("--data is required")
    from flashxlstm.data.shards import TokenData, validation_windows

    device = torch.device(args.device)
    if args.budget_s:
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, args.budget_s)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "science_lm.jsonl").write_text("")

    def emit(rec: dict) -> None:
        print(json.dumps(rec), flush=True)
        if out:
            with open(out / "science_lm.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    data = TokenData(args.data)
    train_range, val_range = data.split(args.val_fraction)
    val_starts = validation_windows(data, val_range, args.seq_len, args.eval_windows)
    import transformers

    header = [f"command: python {' '.join(sys.argv)}",
              f"machine: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch "
              f"{torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
              f"data: {args.data}: {data.num_tokens:,} tokens, vocab {data.vocab_size:,}; "
              f"{train_range[1] - train_range[0]:,} train, {len(val_starts)} validation windows of {args.seq_len}", ""]
    emit({"event": "header", "lines": header})
    results = []
    for name in args.models.split(","):
        r = {"model": name, "description": name, "params": 0, "curve": []}
        try:
            r = run_model(name, args, data, train_range, val_starts, device, emit)
        except _Budget:
            r["error"] = "stopped by --budget-s"
            emit({"model": name, "event": "error", "error": r["error"]})
            results.append(r)
            break
        except Exception as e:  # one model failing is a row of the table, not the end of the run
            r["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            emit({"model": name, "event": "error", "error": r["error"]})
        results.append(r)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        if out:
            (out / "science_lm.md").write_text("\n".join(header + table(results, args)) + "\n")
    signal.setitimer(signal.ITIMER_REAL, 0)
    if out:
        (out / "science_lm.md").write_text("\n".join(header + table(results, args)) + "\n")
    print("\n".join(header + table(results, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
