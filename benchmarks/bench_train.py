"""Training throughput and memory of flashxlstm's trainer vs a Llama of the same size (transformers
LlamaForCausalLM, SDPA) and the official xLSTMLarge (xlstm 2.0.6, train mode), one GPU, bf16 autocast, at equal
tokens per step; plus where the step time goes.

Each measurement is a full optimiser step per iteration (forward, backward, fused AdamW) on random tokens
(throughput does not depend on the text). Ours runs the path `flashxlstm train --data` runs: CausalLMLoss
(every row a document through cu_seqlens, chunked cross-entropy), fp32 master weights under bf16 autocast,
optional per-block activation checkpointing, and with --compile the same per-region torch.compile
(training/compile.py: every block and the loss chunk). Llama runs `model(input_ids, labels=...)` with SDPA
attention, its own best path, fp32 weights under the same autocast, with its gradient checkpointing where
ours checkpoints; compiled the same way (every decoder layer and its loss function), so both sides compile the
same regions. The Llama depth is the one whose parameter count is closest to ours at the same width
(intermediate size 8/3 x width, 128-wide heads, untied head like ours). The official xLSTMLarge ("official"
side, needs the `xlstm` and `mlstm_kernels` packages) runs in a child process, since a kernel that crashes its
compiler ends the process: mode "train" with return_last_states=True (its train mode without it unpacks the
kernel's h as (h, state) and fails on a shape check), each kernel of --official-kernels in turn until one runs,
logits from its forward into a float32 cross-entropy (its user's path); eager only.

Reported per (model, B x S, activation checkpointing, compile): median step time of `--iters` steps after
`--warmup` (the first warm-up step includes the compile; its time is reported as "first step s"), tokens/s,
peak memory (torch.cuda.max_memory_allocated), and MFU = model FLOPs / (step time x the bf16 matmul rate this
GPU reaches, measured at the start). Model FLOPs per token: 6 x (non-embedding parameters) + 6 x width x vocab
(head), plus Llama's causal attention 6 x layers x width x S; the mLSTM's own chunkwise FLOPs (about 1 % of the
total at 1.3B) are not counted, so our MFU is a lower bound. `--profile` adds, for the named grid points, one
profiled step per side in the modes of --profile-modes (torch.profiler): GPU kernel time by kind (mLSTM /
sLSTM kernels, GEMMs, attention, cross-entropy, optimiser, everything else = norms and glue; the compiler's
fused kernels count as glue unless they hold the cross-entropy) and the head + loss (the chunked
cross-entropy with its GEMMs, forward + backward, eager) timed alone.

The run is time-boxed: `--budget-s` is a hard cap (an alarm stops the measurement in progress); a grid point
is skipped when less than `--min-left-s` remains. Rows are printed and appended to OUT/bench_train.md and
OUT/bench_train.jsonl as they finish, so a stopped run leaves a partial table.

    python benchmarks/bench_train.py --out $OUT/training --budget-s 200 --ac off --grid large-1.3b:2x8192 \
        --modes compile,eager --compile large-1.3b:1x32768,large-125m:4x8192,large-125m:1x32768 \
        --profile large-1.3b:2x8192 --profile-modes compile --sides ours,llama,official \
        --official-points large-1.3b:2x8192 --official-reserve-s 40
    python benchmarks/bench_train.py --tiny --out /tmp/bt     # the same passes on the CPU in seconds
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import re
import signal
import statistics
import sys
import time
from pathlib import Path

import torch


class BudgetExceeded(Exception):
    pass


_ALARM = {"rang": False}


def _on_alarm(signum, frame):
    _ALARM["rang"] = True
    raise BudgetExceeded


# GPU kernel names by kind, checked in order (first match wins).
KINDS = [
    ("mLSTM kernels", re.compile(r"mlstm", re.I)),
    ("sLSTM kernels", re.compile(r"slstm", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|sdpa|efficient_attention|scaled_dot", re.I)),
    ("optimiser", re.compile(r"multi_tensor|fused_adam|adam|foreach", re.I)),
    ("cross-entropy", re.compile(r"log_softmax|softmax|nll_loss|cross_entropy", re.I)),
    ("GEMMs", re.compile(r"gemm|cutlass|xmma|nvjet|cublas|matmul|aten::(mm|addmm|bmm|linear)$|sm90_|sm80_|splitk", re.I)),
]
OTHER = "norms, elementwise and glue"


def classify(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return OTHER


# the sides that run flashxlstm, with the model config fields they change
OURS = {"ours": {}, "ours-unfused": {"norm_gate_backend": "torch"},
        # the mLSTM op's rounding residual of h (B x S x v_dim 16-bit values per block) kept for the backward, or not
        "ours-h-lo": {"keep_h_lo": True}, "ours-no-h-lo": {"keep_h_lo": False}}


def build_ours(spec: str, vocab: int, device: torch.device, ac: bool, compile_options: dict | None = None,
               overrides: dict | None = None):
    from flashxlstm.training.compile import compile_regions
    from flashxlstm.training.lm_loss import CausalLMLoss, checkpoint_blocks
    from flashxlstm.training.presets import build_model, resolve_model

    family, fields = resolve_model(spec, vocab)
    if family == "large":
        fields = {**fields, **(overrides or {})}
    with device:
        model = build_model(family, fields)
    model = model.to(device)
    if ac:
        checkpoint_blocks(model)
    module = CausalLMLoss(model)
    if compile_options is not None:
        compile_regions(module, **compile_options)  # what `flashxlstm train --compile` does
    return model, module


def ours_loss_fn(module, device):
    def loss_fn(ids, targets):
        B, S = ids.shape
        cu = torch.arange(0, B * S + 1, S, device=device, dtype=torch.int64)  # every row its own document
        loss_sum, count, _ = module(ids, targets, cu)
        return loss_sum / count
    return loss_fn


def llama_config(width: int, target_params: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, width // 128)
    inter = int(8 * width / 3 / 64 + 1) * 64
    best = None
    for layers in range(1, 97):
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=inter, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1 << 17,
                          tie_word_embeddings=False, use_cache=False)
        with torch.device("meta"):
            n = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (cfg, n)
        if n > target_params:
            break
    return best[0]


def build_llama(cfg, device: torch.device, ac: bool, compile_options: dict | None = None):
    from transformers import LlamaForCausalLM

    with device:
        model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
    model = model.to(device=device, dtype=torch.float32)  # fp32 master weights, as ours
    model.train()
    if ac:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compile_options is not None:  # the regions ours compiles: every layer and the loss
        for layer in model.model.layers:
            layer.forward = torch.compile(layer.forward, **compile_options)
        model.loss_function = torch.compile(model.loss_function, **compile_options)
    return model


def llama_loss_fn(module):
    def loss_fn(ids, targets):
        return module(input_ids=ids, labels=ids).loss
    return loss_fn


def amp_context(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_step(params, opt, loss_fn, ids, targets, device) -> None:
    with amp_context(device):
        loss = loss_fn(ids, targets)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def time_steps(params, loss_fn, B: int, S: int, vocab: int, warmup: int, iters: int, device: torch.device):
    """(median step seconds, peak memory GiB, the optimiser, inputs, first step seconds) for B x S random
    tokens."""
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, vocab, (B, S), generator=g).to(device)
    targets = torch.roll(ids, -1, dims=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for it in range(warmup + iters):
        sync(device)
        t0 = time.perf_counter()
        one_step(params, opt, loss_fn, ids, targets, device)
        sync(device)
        times.append(time.perf_counter() - t0)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times[warmup:]), mem, opt, ids, targets, times[0]


def profile_step(params, opt, loss_fn, ids, targets, device) -> tuple[dict, dict]:
    """GPU kernel time (CPU op self time on a CPU) of one step, by kind, in ms; and the glue kind by kernel name
    ({name: [ms, launches]})."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=acts) as prof:
        one_step(params, opt, loss_fn, ids, targets, device)
        sync(device)
    by_kind: dict[str, float] = {}
    glue: dict[str, list] = {}

    def add(name: str, ms: float, n: int = 1) -> None:
        kind = classify(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
        if kind == OTHER:
            entry = glue.setdefault(name, [0.0, 0])
            entry[0] += ms
            entry[1] += n

    if device.type == "cuda":
        for e in prof.events():
            if e.device_type != torch.autograd.DeviceType.CUDA or getattr(e, "is_user_annotation", False):
                continue
            if e.name.startswith(("Optimizer.", "ProfilerStep", "## ")) or "autograd::" in e.name:
                continue
            add(e.name, e.time_range.elapsed_us() / 1e3)
    else:
        for e in prof.key_averages():
            if e.key.startswith("aten::") and e.self_cpu_time_total > 0:
                add(e.key, e.self_cpu_time_total / 1e3, e.count)
    return by_kind, glue


def time_head_loss(width: int, vocab: int, B: int, S: int, soft_cap, device, iters: int = 3) -> float:
    """ms of the chunked cross-entropy (head GEMM + loss, forward + backward) on B x S positions alone."""
    from flashxlstm.training.lm_loss import chunked_cross_entropy

    h = torch.randn(B * S, width, device=device, requires_grad=True)
    w = torch.randn(vocab, width, device=device, requires_grad=True) * 0.02
    w = w.detach().requires_grad_()
    t = torch.randint(0, vocab, (B * S,), device=device)
    times = []
    for _ in range(iters + 1):
        sync(device)
        t0 = time.perf_counter()
        with amp_context(device):
            loss = chunked_cross_entropy(h, w, t, soft_cap=soft_cap)
        loss.backward()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[1:])


def flops_per_token(n_params: int, width: int, vocab: int, attn_layers: int, S: int, embed_params: int) -> float:
    return 6 * (n_params - embed_params) + 6 * width * vocab + 6 * attn_layers * width * S


class Recorder:
    def __init__(self, out: Path | None):
        self.out = out
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "bench_train.md").write_text("")
            (out / "bench_train.jsonl").write_text("")

    def line(self, text: str) -> None:
        print(text, flush=True)
        if self.out is not None:
            with open(self.out / "bench_train.md", "a") as f:
                f.write(text + "\n")

    def record(self, rec: dict) -> None:
        if self.out is not None:
            with open(self.out / "bench_train.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")


def parse_point(item: str) -> tuple[str, int, int]:
    spec, _, shape = item.rpartition(":")
    try:
        B, S = (int(v) for v in shape.lower().split("x"))
    except ValueError:
        raise SystemExit(f"grid point {item!r}: expected MODEL:BxS, e.g. large-1.3b:2x8192") from None
    return spec, B, S


TINY_MODEL = {"family": "large", "embedding_dim": 64, "num_heads": 2, "num_blocks": 2, "chunk_size": 16}


def tiny_settings(args) -> None:
    """--tiny: every pass of the GPU run on the CPU in seconds (a 2-block model; aot_eager unless a compile
    backend is given, since Inductor's C++ code generation takes minutes on a small CPU)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="bench_train_tiny_")) / "tiny.json"
    path.write_text(json.dumps(TINY_MODEL))
    args.device, args.vocab, args.warmup, args.iters = "cpu", 256, 1, 1
    args.grid = f"{path}:2x64"
    args.compile = f"{path}:1x128" if args.compile else ""  # the passes the GPU command has, at tiny points
    args.then = f"{path}:1x128" if args.then else ""
    args.profile = f"{path}:2x64"
    args.official_points = f"{path}:2x64" if "official" in args.sides else ""
    args.official_kernels = "chunkwise--native_autograd"
    args.compile_backend = args.compile_backend or "aot_eager"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="large-1.3b:2x8192,large-1.3b:1x32768,large-125m:4x8192,large-125m:1x32768",
                   help="MODEL:BxS points (a preset or a model config file), measured in this order")
    p.add_argument("--ac", default="off,on", help="activation checkpointing passes, in order: off, on or both")
    p.add_argument("--modes", default="eager", help="per grid point and side, in this order: eager, compile "
                                                    "(torch.compile per region, both sides)")
    p.add_argument("--compile", default="", help="more MODEL:BxS points measured compiled (both sides), after the "
                                                 "--ac passes")
    p.add_argument("--then", default="", help="more MODEL:BxS points, activation checkpointing off, eager, measured "
                                              "after the --compile points (e.g. the 2k contexts)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    p.add_argument("--profile", default="", help="grid points (activation checkpointing off) to profile")
    p.add_argument("--profile-modes", default="eager", help="the modes in which --profile points are profiled")
    p.add_argument("--profile-sides", default="", help="the sides profiled at --profile points (default: all)")
    p.add_argument("--glue-top", type=int, default=15, help="the slowest glue kernels listed per profile")
    p.add_argument("--fallback-unfused", action="store_true",
                   help="when an 'ours' row fails (not out of memory), measure 'ours-unfused' (the norm and output "
                        "gate unfused) at the same point right after")
    p.add_argument("--sides", default="ours,llama", help="ours, ours-unfused (the norm and output gate as separate "
                                                        "modules), ours-h-lo / ours-no-h-lo (the model config's "
                                                        "keep_h_lo set to true / false), llama, official (the "
                                                        "official xLSTMLarge)")
    p.add_argument("--official-points", default="", help="grid points where the official side runs, eager, AC "
                                                         "off, after everything else (default: every grid point)")
    p.add_argument("--official-kernels", default="chunkwise--triton_xl_chunk:128,chunkwise--triton_limit_chunk:64",
                   help="the official's chunkwise_kernel:chunk_size settings, tried in order until one runs")
    p.add_argument("--official-timeout-s", type=float, default=60.0, help="cap per official child process")
    p.add_argument("--official-reserve-s", type=float, default=0.0,
                   help="seconds of the budget kept for the official side, measured last")
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=140.0, help="hard cap on the whole run (seconds)")
    p.add_argument("--min-left-s", type=float, default=6.0, help="skip a point when less than this remains")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a CPU smoke run of every pass with a 2-block model")
    p.add_argument("--out", default=None, help="directory for bench_train.md / bench_train.jsonl")
    p.add_argument("--official-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.official_child:
        return official_child(args)
    if args.tiny:
        tiny_settings(args)
    args.compile_backend = args.compile_backend or "inductor"
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_train.py: no CUDA device (pass --device cpu or --tiny for a smoke run)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, args.budget_s)
    rec = Recorder(Path(args.out) if args.out else None)
    import transformers

    import flashxlstm
    from flashxlstm.training.lm import measured_peak_tflops

    peak = measured_peak_tflops(device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    rec.line(f"command: python {' '.join(sys.argv)}")
    rec.line(f"machine: {machine}; torch {torch.__version__}, triton "
             f"{getattr(sys.modules.get('triton'), '__version__', '-')}, transformers {transformers.__version__}, "
             f"flashxlstm {getattr(flashxlstm, '__version__', '?')}, python {platform.python_version()}; "
             f"compile: backend {args.compile_backend}, mode {args.compile_mode or 'default'}; "
             + (f"measured bf16 matmul peak {peak:.0f} TFLOP/s" if peak else "no MFU (no GPU peak)"))
    rec.line("")
    rec.line("| model | side | params | B x S | act. ckpt | compile | step ms | tokens/s | peak GiB | MFU | "
             "first step s |")
    rec.line("|---|---|---|---|---|---|---|---|---|---|---|")

    points = [parse_point(x) for x in args.grid.split(",") if x]
    to_profile = {parse_point(x) for x in args.profile.split(",") if x}
    profile_modes = {m == "compile" for m in args.profile_modes.split(",") if m}
    profile_sides = {x for x in args.profile_sides.split(",") if x}
    modes = [m == "compile" for m in args.modes.split(",") if m]
    sides = [x for x in args.sides.split(",") if x]
    official_at = ([parse_point(x) for x in args.official_points.split(",") if x] if args.official_points
                   else points)
    passes = [(ac == "on", modes, points) for ac in args.ac.split(",") if ac]
    compiled = [parse_point(x) for x in args.compile.split(",") if x]
    if compiled:
        passes.append((False, [True], compiled))
    later = [parse_point(x) for x in args.then.split(",") if x]
    if later:
        passes.append((False, [False], later))
    if "official" in sides:  # last, with its reserved time
        passes.append((False, [False], official_at))
    ratios: dict = {}
    profiles: list = []
    status = "complete"
    try:
        for index, (ac, pass_modes, pts) in enumerate(passes):
            official_pass = "official" in sides and index == len(passes) - 1
            for spec, B, S in pts:
                for use_compile in pass_modes:
                    for side in (["official"] if official_pass else [x for x in sides if x != "official"]):
                        left = args.budget_s - (time.perf_counter() - started)
                        usable = left if official_pass or "official" not in sides else left - args.official_reserve_s
                        if usable < args.min_left_s:
                            rec.line(f"| {spec} | {side} | | {B} x {S} | {'on' if ac else 'off'} | "
                                     f"{'yes' if use_compile else 'no'} | skipped: {left:.0f} s of budget left "
                                     f"| | | | |")
                            continue
                        if side == "official":
                            results = [measure_official(spec, B, S, args, left)]
                        else:
                            profiled = ((spec, B, S) in to_profile and not ac and use_compile in profile_modes
                                        and (not profile_sides or side in profile_sides))
                            results = [measure(side, spec, B, S, ac, use_compile, args, device, peak, profiled)]
                            if (side == "ours" and args.fallback_unfused and "error" in results[0]
                                    and results[0]["error"] != "out of memory" and "ours-unfused" not in sides):
                                rec.line(row(results[0]))
                                rec.record(results[0])
                                results = [measure("ours-unfused", spec, B, S, ac, use_compile, args, device, peak,
                                                   profiled)]
                        for res in results:
                            rec.record(res)
                            rec.line(row(res))
                            ratios[(spec, B, S, ac, use_compile, res["side"])] = res
                            if "profile" in res:
                                profiles.append(res)
    except BudgetExceeded:
        status = f"stopped by the {args.budget_s:.0f} s budget"
        rec.line(f"| (stopped: the {args.budget_s:.0f} s budget ran out during the next point) | | | | | | | | | | |")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    summary(rec, ratios, profiles)
    rec.line("")
    rec.line(f"run {status} after {time.perf_counter() - started:.0f} s")
    return 0


def measure(side, spec, B, S, ac, use_compile, args, device, peak, profile=False) -> dict:
    from torch._dynamo.utils import counters

    from flashxlstm.training.presets import resolve_model

    res = {"model": spec, "side": side, "B": B, "S": S, "ac": ac, "compile": use_compile}
    gc.collect()  # the previous point's model, optimiser and closures are gone only now
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    torch._dynamo.reset()  # each compiled point compiles afresh, as a new process would
    counters.clear()
    options = {"backend": args.compile_backend, "mode": args.compile_mode} if use_compile else None
    family, fields = resolve_model(spec, args.vocab)
    width = fields["embedding_dim"]
    model = module = None
    try:
        t_build = time.perf_counter()
        if side in OURS:
            model, module = build_ours(spec, args.vocab, device, ac, options, OURS[side])
            loss_fn = ours_loss_fn(module, device)
            attn_layers = 0
        else:
            with torch.device("meta"):
                ours_meta, _ = build_ours(spec, args.vocab, torch.device("meta"), False)
            target = sum(q.numel() for q in ours_meta.parameters())
            cfg = llama_config(width, target, args.vocab)
            model = build_llama(cfg, device, ac, options)
            loss_fn = llama_loss_fn(model)
            attn_layers = cfg.num_hidden_layers
            res["llama_layers"] = attn_layers
        res["build_s"] = time.perf_counter() - t_build
        n = sum(q.numel() for q in model.parameters())
        embed = 2 * width * args.vocab
        res["params"] = n
        t0 = time.perf_counter()
        step_s, mem, opt, ids, targets, first_s = time_steps(list(model.parameters()), loss_fn, B, S, args.vocab,
                                                             args.warmup, args.iters, device)
        res["wall_s"] = time.perf_counter() - t0
        res.update(step_ms=1e3 * step_s, tokens_per_s=B * S / step_s, peak_gib=mem, first_step_s=first_s)
        if use_compile:
            res["graph_breaks"] = sum(counters["graph_break"].values())
            res["graphs"] = counters["stats"].get("unique_graphs", 0)
        if peak:
            res["mfu"] = B * S / step_s * flops_per_token(n, width, args.vocab, attn_layers, S, embed) / (peak * 1e12)
        if profile:
            kinds, glue = profile_step(list(model.parameters()), opt, loss_fn, ids, targets, device)
            soft_cap = getattr(getattr(model, "config", None), "output_logit_soft_cap", None) if side in OURS \
                else None
            top = sorted(glue.items(), key=lambda kv: -kv[1][0])[:args.glue_top]
            res["profile"] = {"unit": "GPU kernel" if device.type == "cuda" else "CPU op", "kernel_ms": kinds,
                              "glue_top": [[name, ms, n] for name, (ms, n) in top],
                              "head_loss_alone_ms":
                              time_head_loss(width, args.vocab, B, S, soft_cap, device)}
    except torch.cuda.OutOfMemoryError:
        res["error"] = "out of memory"
    except BudgetExceeded:
        raise
    except Exception as e:  # a failing side is a row of the table, not the end of the run
        if _ALARM["rang"]:  # the alarm fired inside a library that wrapped it (inductor does)
            raise BudgetExceeded from None
        res["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    finally:
        del model, module
        torch._dynamo.reset()  # compiled code holds the model's tensors
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def official_child(args) -> int:
    """The official xLSTMLarge's measurement in this (child) process; prints one JSON line."""
    spec, B, S = parse_point(args.official_child)
    kernel, _, chunk = args.official_kernels.partition(":")
    device = torch.device(args.device)
    from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

    from flashxlstm.training.presets import resolve_model

    _, fields = resolve_model(spec, args.vocab)
    cfg = xLSTMLargeConfig(embedding_dim=fields["embedding_dim"], num_heads=fields["num_heads"],
                           num_blocks=fields["num_blocks"], vocab_size=args.vocab, mode="train",
                           return_last_states=True, chunk_size=int(chunk or 64), chunkwise_kernel=kernel,
                           sequence_kernel="native_sequence__native", step_kernel="native",
                           autocast_kernel_dtype="bfloat16")
    torch.manual_seed(0)
    with device:
        model = xLSTMLarge(cfg)
    model = model.to(device=device, dtype=torch.float32).train()  # fp32 master weights, as the others

    def loss_fn(ids, targets):
        logits = model(ids)[0]
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

    peak = None
    if device.type == "cuda":
        from flashxlstm.training.lm import measured_peak_tflops

        peak = measured_peak_tflops(device)
    step_s, mem, *_, first_s = time_steps(list(model.parameters()), loss_fn, B, S, args.vocab, args.warmup,
                                          args.iters, device)
    n = sum(q.numel() for q in model.parameters())
    width = fields["embedding_dim"]
    res = {"params": n, "step_ms": 1e3 * step_s, "tokens_per_s": B * S / step_s, "peak_gib": mem,
           "first_step_s": first_s, "kernel": f"{kernel} (chunk {chunk or 64})"}
    if peak:
        res["mfu"] = B * S / step_s * flops_per_token(n, width, args.vocab, 0, S, 2 * width * args.vocab) / (peak * 1e12)
    print("OFFICIAL_RESULT " + json.dumps(res), flush=True)
    return 0


def measure_official(spec, B, S, args, left: float) -> dict:
    """The official side in child processes, one per kernel setting until one runs; the errors of those that
    did not (the last lines of their output) are kept in the row."""
    import subprocess

    res = {"model": spec, "side": "official", "B": B, "S": S, "ac": False, "compile": False}
    errors = []
    started = time.perf_counter()
    for kernel in [k for k in args.official_kernels.split(",") if k]:
        budget = min(args.official_timeout_s, left - (time.perf_counter() - started) - 2)
        if budget < args.min_left_s:
            errors.append(f"{kernel}: not tried, {budget:.0f} s left")
            break
        cmd = [sys.executable, __file__, "--official-child", f"{spec}:{B}x{S}", "--official-kernels", kernel,
               "--device", args.device, "--vocab", str(args.vocab), "--warmup", str(args.warmup),
               "--iters", str(args.iters)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=budget)
        except subprocess.TimeoutExpired:
            errors.append(f"{kernel}: no result within {budget:.0f} s")
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("OFFICIAL_RESULT ")]
        if proc.returncode == 0 and lines:
            res.update(json.loads(lines[-1].split(" ", 1)[1]))
            break
        tail = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()][-3:]
        errors.append(f"{kernel}: exit {proc.returncode}: {' / '.join(tail)[:300]}")
    if errors:
        res["tried"] = errors
    if "step_ms" not in res:
        res["error"] = "did not run: " + "; ".join(errors)
    return res


def row(r: dict) -> str:
    side = r["side"] + (f" ({r['llama_layers']} layers)" if "llama_layers" in r else "")
    if r["side"] == "official" and "kernel" in r:
        side += f" ({r['kernel']})"
    compiled = "yes" if r["compile"] else "no"
    if r["compile"] and "graph_breaks" in r:
        compiled += f" ({r['graphs']} graphs, {r['graph_breaks']} breaks)"
    head = (f"| {r['model']} | {side} | {r.get('params', 0) / 1e6:.1f}M | {r['B']} x {r['S']} | "
            f"{'on' if r['ac'] else 'off'} | {compiled} | ")
    if "error" in r:
        return head + f"{r['error'][:600]} | | | | |"
    mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
    mem = f"{r['peak_gib']:.1f}" if not math.isnan(r["peak_gib"]) else "-"
    return head + f"{r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {mem} | {mfu} | {r['first_step_s']:.1f} |"


def summary(rec: Recorder, ratios: dict, profiles: list) -> None:
    ok = {k: v for k, v in ratios.items() if "error" not in v}
    pairs = [(k, o, ok.get(k[:5] + ("llama",))) for k, o in ok.items() if k[5] in OURS]
    pairs = [(k, o, l) for k, o, l in pairs if l is not None]
    mem_ratio = lambda a, b: f"{a['peak_gib'] / b['peak_gib']:.2f}" if not math.isnan(a["peak_gib"]) else "-"
    if pairs:
        rec.line("")
        rec.line("| model | B x S | act. ckpt | compile | side | ours / Llama tokens/s | ours / Llama peak memory |")
        rec.line("|---|---|---|---|---|---|---|")
        for (spec, B, S, ac, comp, side), o, l in pairs:
            rec.line(f"| {spec} | {B} x {S} | {'on' if ac else 'off'} | {'yes' if comp else 'no'} | {side} | "
                     f"**{o['tokens_per_s'] / l['tokens_per_s']:.2f}x** | {mem_ratio(o, l)} |")
    # each side on its best path: the faster of its eager and compiled rows at the same point
    best: dict = {}
    for (spec, B, S, ac, comp, side), r in ok.items():
        key = (spec, B, S, ac, side)
        if key not in best or r["tokens_per_s"] > best[key]["tokens_per_s"]:
            best[key] = r
    lines = []
    for (spec, B, S, ac, side), o in best.items():
        if side not in OURS or (spec, B, S, ac, "llama") not in best:
            continue
        l = best[(spec, B, S, ac, "llama")]
        off = best.get((spec, B, S, ac, "official"))
        path = lambda r: "compiled" if r["compile"] else "eager"
        lines.append(f"| {spec} | {B} x {S} | {'on' if ac else 'off'} | {side} | {path(o)} / {path(l)} | "
                     f"**{o['tokens_per_s'] / l['tokens_per_s']:.2f}x** | {mem_ratio(o, l)} | "
                     + (f"{o.get('mfu', 0):.1%} / {l.get('mfu', 0):.1%}" if "mfu" in o and "mfu" in l else "-")
                     + " | " + (f"{o['tokens_per_s'] / off['tokens_per_s']:.2f}x" if off else "-") + " |")
    if lines:
        rec.line("")
        rec.line("Each side on its best path (the faster of eager and compiled):")
        rec.line("")
        rec.line("| model | B x S | act. ckpt | side | ours / Llama path | ours / Llama tokens/s | ours / Llama peak "
                 "memory | MFU ours / Llama | ours / official tokens/s |")
        rec.line("|---|---|---|---|---|---|---|---|---|")
        for line in lines:
            rec.line(line)
    for r in profiles:
        k = r["profile"]["kernel_ms"]
        total = sum(k.values())
        rec.line("")
        rec.line(f"Where the time goes: {r['side']}, {r['model']}, {r['B']} x {r['S']}, "
                 f"{'compiled' if r['compile'] else 'eager'} (one profiled step, {r['profile']['unit']} time "
                 f"{total:.1f} ms; the timed step {r['step_ms']:.1f} ms)")
        rec.line("")
        rec.line("| kind | ms | share |")
        rec.line("|---|---|---|")
        for kind, ms in sorted(k.items(), key=lambda kv: -kv[1]):
            rec.line(f"| {kind} | {ms:.1f} | {ms / max(total, 1e-9):.0%} |")
        rec.line(f"| head + loss alone (chunked CE, its GEMMs included; fw + bw, eager) | "
                 f"{r['profile']['head_loss_alone_ms']:.1f} | {r['profile']['head_loss_alone_ms'] / r['step_ms']:.0%}"
                 f" of the step |")
        if r["profile"].get("glue_top"):
            rec.line("")
            rec.line(f"The slowest kernels of '{OTHER}' ({r['side']}, {r['model']}, {r['B']} x {r['S']}; "
                     f"names cut to 110 characters):")
            rec.line("")
            rec.line("| kernel | ms | launches |")
            rec.line("|---|---|---|")
            for name, ms, n in r["profile"]["glue_top"]:
                rec.line(f"| `{name[:110]}` | {ms:.2f} | {n} |")


if __name__ == "__main__":
    sys.exit(main())
