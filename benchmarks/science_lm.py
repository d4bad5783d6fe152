"""Equal-token language-model runs: NeurIPS xLSTM[7:1], the 7B-family architecture and a Llama baseline
(transformers LlamaForCausalLM, SDPA) at about the same parameter count, trained on the same tokens in the
same order with the same schedule; validation perplexity at fixed token counts (issue 13's science question:
does xLSTM reach Llama's perplexity or lower?).

What every model gets alike:
- the batches: step t reads the same `--batch-size` windows of `--seq-len` + 1 tokens (the trainer's seeded
  window order over the training range of a `flashxlstm prepare` directory); a running BLAKE2 digest of every
  batch's inputs and targets is written with each evaluation, so equal tokens can be checked, not assumed;
- the feed (`--feed`): `windows` (default): every window starts from an empty state and runs straight through
  the documents inside it, for the recurrent models exactly as for the Llama's causal attention; `packed`:
  the recurrent models also reset their state at every document start (cu_seqlens; the Llama cannot, it
  still attends across documents). In both, the target that would predict a document's first token from
  the previous document is not counted;
- the loss (the trainer's chunked cross-entropy), the optimiser step (the trainer's `optimizer_step`: AdamW,
  betas 0.9 / 0.95, weight decay 0.1 through `decay_groups`, clipping at 1.0), bf16 autocast on CUDA with fp32
  master weights, and one schedule over `--steps` steps (the trainer's `warmup_cosine_lr`), driven by the
  trainer's `run_loop`;
- the evaluations: after every `--steps / --evals` steps, the mean loss over the same held-out windows.

Each model stops cleanly at `--time-cap-s` (counted from its own start, compilation included): its rows so
far are already written, and the report (science_lm.md, science_lm.png, science_lm.jsonl) is rewritten after
every evaluation, so a kill still leaves the curves measured until then. `--concurrent` trains every model in
its own process at the same time (one GPU shared); without it the models run one after another in this one.

    python benchmarks/science_lm.py --data data/docs-16k --steps 320 --concurrent --out results/science
    python benchmarks/science_lm.py --report results/science        # redraw the table and plot from the rows
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("xlstm71-125m", "large-125m", "llama")
ROWS = "science_lm.{}.jsonl"


class Stopped(Exception):
    """SIGTERM or the --budget-s alarm: end the model in progress; the rows written so far stay."""


def _stop(signum, frame):
    raise Stopped(signal.Signals(signum).name)


def llama_loss(model, ce_chunk: int = 4096):
    """A transformers Llama behind the trainer's loss interface: (input_ids, targets, cu_seqlens, state) ->
    (loss sum, counted targets, None), through the same chunked cross-entropy as ours. cu_seqlens is ignored:
    SDPA's causal attention has no document reset. (torch is imported here, not at the top: a --concurrent
    parent only starts processes and draws the report.)"""
    from torch import nn

    from flashxlstm.data.shards import IGNORE_INDEX
    from flashxlstm.training.lm_loss import chunked_cross_entropy

    class LlamaLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, targets, cu_seqlens=None, state=None):
            hidden = self.model.model(input_ids=input_ids).last_hidden_state
            B, S = input_ids.shape
            loss = chunked_cross_entropy(hidden.reshape(B * S, -1), self.model.lm_head.weight, targets.reshape(-1),
                                         chunk=ce_chunk)
            return loss, (targets != IGNORE_INDEX).sum(), None

    return LlamaLoss()


def label_of(spec: str) -> str:
    """The name a model's rows go under: a preset name as it is, a config file by its stem."""
    return Path(spec).stem if spec.endswith((".json", ".toml", ".yaml", ".yml")) else spec


def build(spec: str, vocab: int, device, llama_like: str) -> tuple:
    """(the model, the loss module, a description, the recurrent kernels the backend rule picks here);
    `llama` is sized like `llama_like` (its width, and the depth that comes closest to its parameter count)."""
    import torch

    from flashxlstm.training.lm_loss import CausalLMLoss
    from flashxlstm.training.presets import build_model, resolve_model

    if spec == "llama":
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_train import build_llama, llama_config

        family, fields = resolve_model(llama_like, vocab)
        with torch.device("meta"):
            target = sum(p.numel() for p in build_model(family, fields).parameters())
        width = fields["embedding_dim"]
        cfg = llama_config(width, target, vocab)
        model = build_llama(cfg, device, ac=False)
        return model, llama_loss(model), f"Llama {cfg.num_hidden_layers} x {width} (SDPA)", {"attention": "sdpa"}
    family, fields = resolve_model(spec, vocab)
    model = build_model(family, fields).to(device)
    if family == "neurips":
        shape = f"{fields['num_blocks']} x {fields['embedding_dim']}, sLSTM at {model.config.slstm_at}"
    else:
        shape = f"{fields['num_blocks']} x {fields['embedding_dim']}"
    return model, CausalLMLoss(model), f"{label_of(spec)} ({family}, {shape})", kernels_used(family, device)


def kernels_used(family: str, device) -> dict:
    """What backend="auto" resolves to for the bf16 (CUDA) or fp32 (CPU) recurrent ops of a run on `device`."""
    import torch

    from flashxlstm.ops import mlstm_cell, slstm_cell
    from flashxlstm.ops.choose import choose_backend

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = {"mlstm": choose_backend("mlstm", "auto", mlstm_cell.BACKENDS, fallback="chunkwise", device=device,
                                   dtype=dtype)}
    if family == "neurips":
        out["slstm"] = choose_backend("slstm", "auto", slstm_cell.BACKENDS, fallback="fused", device=device,
                                      dtype=dtype)
    return out


def causality_check(module, vocab: int, seq_len: int, device, amp) -> dict:
    """The largest change of the last hidden states before position t, and from t on, when the tokens from t on
    change (two rows, at initialisation, on the run's device and kernels): a model that sees the future fails."""
    import torch

    from flashxlstm.training.engine import autocast

    g = torch.Generator().manual_seed(1)
    t = seq_len // 2 + 1
    a = torch.randint(0, vocab, (2, seq_len), generator=g)
    b = a.clone()
    b[:, t:] = torch.randint(0, vocab, (2, seq_len - t), generator=g)

    def hidden(ids):
        if hasattr(module, "body"):
            return module.body(ids)[0]
        return module.model.model(input_ids=ids).last_hidden_state

    with torch.no_grad(), autocast(device, amp):
        ha, hb = hidden(a.to(device)).float(), hidden(b.to(device)).float()
    return {"prefix_max_diff": float((ha[:, :t] - hb[:, :t]).abs().max()),
            "suffix_max_diff": float((ha[:, t:] - hb[:, t:]).abs().max())}


def validate(module, data, starts, args, device, amp) -> float:
    import torch

    from flashxlstm.data.shards import pack_rows
    from flashxlstm.training.engine import autocast

    module.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    with torch.no_grad():
        for k in range(0, len(starts), args.batch_size):
            b = pack_rows(data, starts[k:k + args.batch_size], args.seq_len)
            cu = b.cu_seqlens.to(device) if args.feed == "packed" else None
            with autocast(device, amp):
                s, c, _ = module(b.inputs.to(device), b.targets.to(device), cu)
            total += s.double()
            count += int(c)
    module.train()
    return float(total) / max(count, 1)


def run_model(spec: str, args, data, train_range, val_starts, device, emit) -> dict:
    """Train one model for args.steps steps (or until its time cap) and emit its evaluations."""
    import torch

    from flashxlstm.data.shards import PackedBatches
    from flashxlstm.training.engine import autocast, optimizer_step, run_loop
    from flashxlstm.training.schedule import decay_groups, warmup_cosine_lr

    started = time.perf_counter()
    name = label_of(spec)
    torch.manual_seed(args.seed)
    model, module, desc, kernels = build(spec, data.vocab_size, device, args.llama_like)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(decay_groups(model, 0.1), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1,
                            **({"fused": True} if device.type == "cuda" else {}))
    batches = PackedBatches(data, train_range, args.seq_len, args.batch_size, args.seed)
    amp = "bf16" if device.type == "cuda" else "none"
    try:
        causal = causality_check(module, data.vocab_size, args.seq_len, device, amp)
    except Exception as e:  # the check informs the table; training goes on
        causal = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    emit({"model": name, "event": "start", "description": desc, "params": n_params, "kernels": kernels,
          "feed": args.feed, "causal_check": causal})
    digest = hashlib.blake2b(digest_size=8)
    train_loss = torch.zeros((), device=device)
    state = {"since": 0, "failed": None}

    def do_step(step: int) -> None:
        b = batches.rows(step, 0, args.batch_size)
        digest.update(b.inputs.numpy().tobytes())
        digest.update(b.targets.numpy().tobytes())
        inputs, targets = b.inputs.to(device, non_blocking=True), b.targets.to(device, non_blocking=True)
        cu = b.cu_seqlens.to(device) if args.feed == "packed" else None

        def loss_fn(_micro):
            with autocast(device, amp):
                s, c, _ = module(inputs, targets, cu)
            return s / c.clamp(min=1)

        lr = warmup_cosine_lr(step, lr=args.lr, warmup_steps=args.warmup_steps, total_steps=args.steps,
                              min_lr=args.min_lr)
        loss, _ = optimizer_step(module, opt, loss_fn, lr=lr, grad_clip=1.0, step=step, check_finite=False)
        train_loss.add_(loss)  # no host sync per step; read at the evaluations
        state["since"] += 1

    def on_eval(step: int) -> None:
        mean_train = float(train_loss) / max(state["since"], 1)
        train_loss.zero_()
        state["since"] = 0
        val = validate(module, data, val_starts, args, device, amp)
        point = {"model": name, "event": "eval", "step": step, "tokens": step * args.batch_size * args.seq_len,
                 "train_loss": mean_train, "val_loss": val, "val_ppl": math.exp(min(val, 700.0)),
                 "wall_s": round(time.perf_counter() - started, 2), "data_digest": digest.hexdigest()}
        if device.type == "cuda":
            point["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        emit(point)
        if not (math.isfinite(val) and math.isfinite(mean_train)):
            state["failed"] = f"loss not finite at step {step} (train {mean_train}, validation {val})"
            raise FloatingPointError(state["failed"])

    every = max(1, args.steps // args.evals)
    try:
        result = run_loop(start_step=0, total_steps=args.steps, do_step=do_step, eval_every=every, on_eval=on_eval,
                          time_limit_s=args.time_cap_s, started=started, catch_ctrl_c=False)
        reason, steps = result.reason, result.step
    except FloatingPointError as e:
        reason, steps = str(e), None
    end = {"model": name, "event": "end", "reason": reason, "steps": steps,
           "wall_s": round(time.perf_counter() - started, 2)}
    emit(end)
    return end


# ---------------------------------------------------------------- report: the table and the plot from the rows

def read_rows(out: Path) -> dict[str, list[dict]]:
    """Every model's rows, by model, in the order the models were started (file names sorted otherwise)."""
    rows = {}
    for path in sorted(out.glob(ROWS.format("*"))):
        recs = []
        for line in path.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                break
        if recs:
            rows[path.name[len("science_lm."):-len(".jsonl")]] = recs
    return rows


def summarize(rows: dict[str, list[dict]]) -> dict:
    """The evaluation grid, the curves on it, and the common points (reached by every model, same data)."""
    header = next((r for recs in rows.values() for r in recs if r.get("event") == "header"), {})
    order = [m for m in header.get("models", []) if m in rows] + sorted(set(rows) - set(header.get("models", [])))
    curves = {m: {r["tokens"]: r for r in rows[m] if r.get("event") == "eval"} for m in order}
    info = {m: next((r for r in rows[m] if r.get("event") == "start"), {}) for m in order}
    ends = {m: next((r for r in rows[m] if r.get("event") in ("end", "error")), None) for m in order}
    grid = sorted({t for c in curves.values() for t in c})
    common = [t for t in grid if all(t in curves[m] for m in order)]
    aligned = all(len({curves[m][t]["data_digest"] for m in order}) == 1 for t in common)
    return {"header": header, "order": order, "curves": curves, "info": info, "ends": ends, "grid": grid,
            "common": common, "aligned": aligned}


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,.0f}"


def report_lines(s: dict) -> list[str]:
    h, order, curves = s["header"], s["order"], s["curves"]
    lines = [f"command: {h.get('command', '?')}", f"machine: {h.get('machine', '?')}",
             f"data: {h.get('data', '?')}", f"run: {h.get('run', '?')}", "",
             "| model | parameters | recurrent kernels | causal check: max change before / after t | steps done | end | "
             "wall s | peak GiB |", "|---|---|---|---|---|---|---|---|"]
    for m in order:
        i, e = s["info"][m], s["ends"][m]
        last = curves[m][max(curves[m])] if curves[m] else {}
        end = "running or killed" if e is None else e.get("reason") or e.get("error", "?")
        steps = e.get("steps") if e and e.get("steps") is not None else last.get("step", 0)
        kern = ", ".join(f"{k} {v}" for k, v in i.get("kernels", {}).items())
        cc = i.get("causal_check", {})
        causal = (f"{cc['prefix_max_diff']:.1e} / {cc['suffix_max_diff']:.1e}" if "prefix_max_diff" in cc
                  else cc.get("error", ""))
        lines.append(f"| {i.get('description', m)} | {_count(i.get('params', 0))} | {kern} | {causal} | {steps} | {end} | "
                     f"{e.get('wall_s', '') if e else last.get('wall_s', '')} | {last.get('peak_gib', '')} |")
    lines += ["", "Validation perplexity (loss) at equal training tokens:", "",
              "| step | tokens | " + " | ".join(order) + " | same data |", "|---|---|" + "---|" * len(order) + "---|"]
    for t in s["grid"]:
        pts = [curves[m].get(t) for m in order]
        step = next(p["step"] for p in pts if p)
        cells = [f"{p['val_ppl']:.1f} ({p['val_loss']:.3f})" if p else "-" for p in pts]
        digests = {p["data_digest"] for p in pts if p}
        same = ("yes" if len(digests) == 1 else "NO") if all(pts) else ""
        lines.append(f"| {step} | {_count(t)} | " + " | ".join(cells) + f" | {same} |")
    lines.append("")
    if s["common"]:
        t = s["common"][-1]
        ranked = sorted(order, key=lambda m: curves[m][t]["val_loss"])
        lines.append(f"At {_count(t)} tokens, the last point every model reached: "
                     + " < ".join(f"{m} {curves[m][t]['val_ppl']:.1f}" for m in ranked)
                     + " (validation perplexity, lower is better); the batches were "
                     + ("identical for every model (equal digests)." if s["aligned"] else "NOT identical (digests differ)."))
    else:
        lines.append("No token count was reached by every model yet.")
    return lines


def plot(s: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for m in s["order"]:
        pts = [s["curves"][m][t] for t in sorted(s["curves"][m])]
        if not pts:
            continue
        label = s["info"][m].get("description", m)
        ax[0].plot([p["tokens"] / 1e6 for p in pts], [p["val_ppl"] for p in pts], "o-", label=label)
        ax[1].plot([p["wall_s"] for p in pts], [p["val_ppl"] for p in pts], "o-", label=label)
    for a, xl in zip(ax, ("training tokens (M), the comparison", "wall time of its process (s), shared device")):
        a.set_xlabel(xl)
        a.set_ylabel("validation perplexity")
        a.set_yscale("log")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.{os.getpid()}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, png)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(out: Path, with_plot: bool = True) -> dict:
    """science_lm.md, science_lm.jsonl (every model's rows) and science_lm.png from the per-model rows in `out`;
    each file is replaced whole (several processes may write it)."""
    rows = read_rows(out)
    s = summarize(rows)
    _write(out / "science_lm.md", "# Equal-token LM runs (science_lm.py)\n\n" + "\n".join(report_lines(s)) + "\n")
    _write(out / "science_lm.jsonl", "".join(json.dumps(r) + "\n" for m in s["order"] for r in rows[m]))
    if with_plot and any(s["curves"].values()):
        try:
            plot(s, out / "science_lm.png")
        except ImportError:  # matplotlib is the `plot` extra; the table and rows are what matters
            pass
    return s


# ---------------------------------------------------------------- the command line

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="a `flashxlstm prepare` directory")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated: model presets, model config files, or `llama`")
    p.add_argument("--llama-like", default="large-125m", help="the Llama baseline's width and parameter target")
    p.add_argument("--steps", type=int, default=320, help="optimiser steps per model (the same for every model)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--feed", choices=("windows", "packed"), default="windows")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--min-lr", type=float, default=1.5e-4)
    p.add_argument("--warmup-steps", type=int, default=32)
    p.add_argument("--evals", type=int, default=8, help="evaluations per model, every steps / evals steps")
    p.add_argument("--eval-windows", type=int, default=160, help="held-out windows of seq-len per evaluation")
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--time-cap-s", type=float, default=None,
                   help="each model stops after the step that passes this many seconds from its own start")
    p.add_argument("--budget-s", type=float, default=None,
                   help="hard cap on this process (an alarm ends the model in progress; its rows stay)")
    p.add_argument("--concurrent", action="store_true", help="one process per model, all at the same time")
    p.add_argument("--out", default=None, help="output directory (required unless --report)")
    p.add_argument("--report", default=None, help="only rewrite the table and plot from the rows in this directory")
    p.add_argument("--command-line", default=None, help=argparse.SUPPRESS)  # a concurrent child: the parent's
    p.add_argument("--order", default=None, help=argparse.SUPPRESS)  # and its models, in the table's order
    args = p.parse_args(argv)
    if args.report is None:
        if not args.data or not args.out:
            p.error("--data and --out are required")
        if args.steps < 1 or args.evals < 1 or args.evals > args.steps:
            p.error(f"need 1 <= --evals <= --steps, got --evals {args.evals} --steps {args.steps}")
        if args.steps % args.evals:
            p.error(f"--steps {args.steps} must be a multiple of --evals {args.evals} (evaluations at equal "
                    "token counts)")
    return args


def run_concurrent(args, argv: list[str], out: Path) -> int:
    """One child process per model (this script, one model each), started together; the report at the end.
    SIGTERM or --budget-s (plus 15 s for the children's own alarms to act) ends the children with SIGTERM."""
    grace = 15.0
    deadline = time.monotonic() + args.budget_s + grace if args.budget_s else None
    base = [a for a in argv if a != "--concurrent"]
    previous = signal.signal(signal.SIGTERM, _stop)
    procs = []
    try:
        for spec in args.models.split(","):
            cmd = [sys.executable, __file__, *base, "--models", spec, "--command-line", args.command_line,
                   "--order", args.models]
            log = open(out / f"science_lm.{label_of(spec)}.log", "w")
            procs.append((spec, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        for spec, proc, log in procs:
            proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    except (Stopped, subprocess.TimeoutExpired) as e:
        print(f"stopping the children: {e}", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for spec, proc, log in procs:
            if proc.poll() is None:
                proc.terminate()
        rc = 0
        for spec, proc, log in procs:
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            log.close()
            print(f"{label_of(spec)}: exit {code}", flush=True)
            rc = rc or int(code != 0)
    s = write_report(out)
    print("\n".join(report_lines(s)))
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.report:
        print("\n".join(report_lines(write_report(Path(args.report)))))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.command_line = args.command_line or "python benchmarks/science_lm.py " + " ".join(argv)
    specs = args.models.split(",")
    for spec in specs:
        (out / ROWS.format(label_of(spec))).write_text("")
    if args.concurrent and len(specs) > 1:
        return run_concurrent(args, argv, out)

    import torch

    from flashxlstm.data.shards import TokenData, validation_windows
    from flashxlstm.training.engine import resolve_device

    device = resolve_device(args.device)
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGALRM)}
    if args.budget_s:
        signal.setitimer(signal.ITIMER_REAL, args.budget_s)
    data = TokenData(args.data)
    train_range, val_range = data.split(args.val_fraction)
    val_starts = validation_windows(data, val_range, args.seq_len, args.eval_windows)
    child = args.order is not None
    versions = []
    for dist in ("triton", "transformers"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor()})")
    header = {"event": "header", "command": args.command_line,
              "models": [label_of(s) for s in (args.order or args.models).split(",")],
              "machine": f"{machine}; torch {torch.__version__}, {', '.join(versions)}, python "
                         f"{platform.python_version()}",
              "data": f"{args.data}: {data.num_tokens:,} tokens, vocab {data.vocab_size:,}; "
                      f"{train_range[1] - train_range[0]:,} for training, {len(val_starts)} held-out windows of "
                      f"{args.seq_len} ({len(val_starts) * args.seq_len:,} tokens) for validation",
              "run": f"{args.steps} steps of {args.batch_size} x {args.seq_len} tokens "
                     f"({args.steps * args.batch_size * args.seq_len / 1e6:.2f}M tokens); feed {args.feed}; lr "
                     f"{args.lr:g} -> {args.min_lr:g} (warmup {args.warmup_steps}, cosine); an evaluation every "
                     f"{args.steps // args.evals} steps; bf16 autocast on CUDA; time cap {args.time_cap_s} s per "
                     f"model; seed {args.seed}; " + ("one process per model, started together" if
                                                     "--concurrent" in args.command_line else "one model after another")}
    rc = 0
    for spec in specs:
        name = label_of(spec)
        path = out / ROWS.format(name)

        def emit(rec: dict, path=path) -> None:
            print(json.dumps(rec), flush=True)
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if rec.get("event") in ("eval", "end", "error"):  # the table after every evaluation, the plot at the
                write_report(out, with_plot=rec["event"] != "eval" and not child)  # end (a parent draws its own)

        emit({**header, "model": name})
        try:
            run_model(spec, args, data, train_range, val_starts, device, emit)
        except Stopped as e:
            emit({"model": name, "event": "error", "error": f"stopped by {e}"})
            rc = 1
            break
        except Exception as e:  # one model failing is a row of the table, not the end of the run
            emit({"model": name, "event": "error", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"})
            rc = 1
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    signal.setitimer(signal.ITIMER_REAL, 0)
    for s, h in previous.items():
        signal.signal(s, h)
    print("\n".join(report_lines(write_report(out))))
    return rc


if __name__ == "__main__":
    sys.exit(main())
