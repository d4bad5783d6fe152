"""Images/s of ViL and its parameter-matched ViT at several tokens per image: does the cost grow linearly
(ViL) or quadratically (ViT's attention) from 196 to 1024 and 4096 tokens?

    python benchmarks/bench_vision.py --device cuda --amp bf16 --tokens 196 1024 4096 --max-s 40 --json OUT.json
    python benchmarks/bench_vision.py --device cuda --amp bf16 --tokens 49 --patch-size 4 --in-channels 1 \
        --num-classes 10 --depth 8 --tokens-per-batch 25088 50176     # the Fashion-MNIST training shapes
    python benchmarks/bench_vision.py --device cpu --dim 32 --depth 2 --tokens 16 64 --tokens-per-batch 128

Tokens per image T come from square images of side sqrt(T) * patch (patch 16: 196 tokens = 224 px, 1024
tokens = 512 px, 4096 tokens = 1024 px, 3 channels). The ViL's chunkwise (torch) form runs at
tasks/vision.py's `default_chunk_size` (the whole sequence up to 64 tokens, else the largest divisor <= 64: 49 at
196 tokens, 64 at 1024 and 4096), so no padding inflates any size; Triton at 64. The batch holds about
`--tokens-per-batch` tokens (the same work per step at every T, large enough to keep the GPU busy; several
values: rows for each). Each model runs its inference and its training step (AdamW,
clipping, bf16 autocast) through tasks/vision_step.py: on CUDA as a replayed CUDA graph, checked against one
eager step first (largest |difference| of the logits, the loss and the updated weights is printed); if
capture fails the row says so and is timed eagerly. The table gives images/s, the peak GPU memory of each
measurement, and per model the cost ratio (time per image at the largest T / at the smallest) next to the
token ratio, for every T against the smallest: a ratio near the token ratio is linear cost, well above it is
super-linear. For the ViT the table also gives attention's share of its matmul FLOPs at each size,
T / (T + 6 d) per layer (scores and mixing 4 T d per token against 24 d^2 in the projections and the MLP), the
part of its cost that grows with T.
`--max-s` is a wall deadline for the whole script (start-up and captures included): measurements that would
start after it are skipped and listed.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import replace

T0 = time.perf_counter()

import torch  # noqa: E402

from flashxlstm.models.vision import ViL, ViLConfig, ViT, ViTConfig, matched_vit, num_parameters  # noqa: E402
from flashxlstm.tasks.vision import default_chunk_size  # noqa: E402
from flashxlstm.tasks.vision_step import InferStep, TrainStep  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, min_s: float, max_iters: int) -> float:
    """Seconds per call: one timed call sets the count of calls that fill about `min_s`."""
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    one = time.perf_counter() - t
    iters = int(min(max(min_s / max(one, 1e-6), 2), max_iters))
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / iters


def measure(model, x, y, *, train: bool, amp: str, graph: bool, min_s: float, max_iters: int) -> dict:
    """images/s, peak memory and the graph check of one model's inference or training step on (x, y)."""
    dev = x.device
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    res: dict = {"graph": graph}

    def build(use_graph: bool):
        if train:
            step = TrainStep(model, lr=1e-4, weight_decay=0.05, amp=amp, grad_clip=1.0, graph=use_graph)
            return step, (lambda: step(x, y, 1e-4))
        step = InferStep(model, amp=amp, graph=use_graph)
        return step, (lambda: step(x))

    step, call = build(graph)
    try:
        for _ in range(step.warmup + 1):  # warm-up, then (graphed) capture and the first replay
            call()
        if graph and step.graph_error:
            raise RuntimeError(step.graph_error)
        if graph:
            res["check"] = step.check_graph(x, y, 1e-4) if train else {"logits": step.check_graph(x)}
    except Exception as e:  # noqa: BLE001  a capture that fails is reported, and the row is timed eagerly
        if not graph or isinstance(e, torch.cuda.OutOfMemoryError):
            raise
        res.update(graph=False, graph_error=f"{type(e).__name__}: {e}"[:300])
        del step, call
        torch.cuda.synchronize(dev)
        step, call = build(False)
        call()
    sec = _timed(call, dev, min_s, max_iters)
    res["images_per_s"] = x.shape[0] / sec
    res["ms_per_step"] = 1000 * sec
    if dev.type == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return res


VIEW_OPS = {"aten::view", "aten::_unsafe_view", "aten::reshape", "aten::transpose", "aten::t", "aten::permute",
            "aten::expand", "aten::as_strided", "aten::unsqueeze", "aten::squeeze", "aten::slice", "aten::select",
            "aten::split", "aten::split_with_sizes", "aten::unflatten", "aten::flatten", "aten::detach",
            "aten::alias", "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::unbind", "aten::narrow",
            "aten::lift_fresh", "aten::result_type", "aten::contiguous"}


def count_kernels(model, x, y, top: int = 8) -> dict:
    """One eager training step (forward, cross-entropy, backward) under torch.profiler: on CUDA the GPU kernels
    it launches, their summed time and the `top` kernels by time; on CPU the aten ops that are not views or
    allocations (each a kernel on a GPU). A model whose step is thousands of small kernels is bound by their
    count, not by its FLOPs."""
    from torch.profiler import ProfilerActivity, profile
    import torch.nn.functional as F
    dev = x.device

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).float(), y).backward()

    step()  # warm-up: lazy initialisation and autotuning are not the step
    _sync(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        _sync(dev)
    if dev.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                   and not e.name.startswith(("Memcpy", "Memset"))]
        by_name: dict[str, list[float]] = {}
        for e in kernels:
            by_name.setdefault(e.name, []).append(e.time_range.elapsed_us())
        tops = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
        return {"kernels": len(kernels), "kernel_ms": sum(sum(v) for v in by_name.values()) / 1000,
                "top": [{"name": k[:80], "calls": len(v), "ms": sum(v) / 1000} for k, v in tops]}
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::") and e.key not in VIEW_OPS]
    return {"aten_ops": sum(e.count for e in ops)}


def _fmt_check(r: dict) -> str:
    if "graph_error" in r:
        return "eager (capture failed: " + r["graph_error"][:60] + ")"
    if not r.get("graph"):
        return "eager"
    return "graph; " + ", ".join(f"{k} {v:.1e}" for k, v in r["check"].items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[196, 1024], help="tokens per image (perfect squares)")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--dim", type=int, default=192, help="width (default 192: ViL-T / DeiT-T)")
    p.add_argument("--depth", type=int, default=24, help="ViL blocks (default 24: ViL-T); the ViT is matched")
    p.add_argument("--num-heads", type=int, default=3)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--tokens-per-batch", type=int, nargs="+", default=[32768],
                   help="batch = round(this / tokens per image); several values: rows for each")
    p.add_argument("--min-s", type=float, default=0.5, help="timed seconds per measurement (at least 2 steps)")
    p.add_argument("--max-iters", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--backends", nargs="+", default=["chunkwise", "triton"],
                   help="mLSTM kernels of the ViL, each its own rows (linear-cost ones: chunkwise, triton; "
                        "'parallel' is the quadratic form); one not available here is skipped")
    p.add_argument("--also-unfused", action="store_true", help="also time the ViL (first backend) with nn's "
                   "mLSTMLayer instead of the fused-glue layer, after the other rows")
    p.add_argument("--no-graph", action="store_true", help="time eager steps (the default on CPU)")
    p.add_argument("--max-s", type=float, default=None, help="wall deadline of the whole script, seconds")
    p.add_argument("--json", default=None, help="also write the measurements here")
    p.add_argument("--max-chunks", type=int, default=None, help="the chunkwise ViL's chunk grows to ceil(T / this) "
                   "where the default chunk would need more chunks (the torch form's chunk loop is ~10 kernels per "
                   "chunk and block: at 4096 tokens and chunk 64 an eager step is ~300k kernels, too slow to capture)")
    p.add_argument("--count-kernels", action="store_true", help="after the timings, per model at the first --tokens "
                   "size and batch: the kernels one eager training step launches (CUDA) or its non-view aten ops (CPU)")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    graph = dev.type == "cuda" and not a.no_graph
    machine = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or "cpu")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {machine}; torch {torch.__version__}; python {platform.python_version()}; "
          f"{'CUDA graphs' if graph else 'eager'}; amp {a.amp}", flush=True)
    for t in a.tokens:
        if math.isqrt(t) ** 2 != t:
            raise ValueError(f"--tokens must be perfect squares, got {t}")
    from flashxlstm.ops.mlstm_cell import BACKENDS
    missing = [b for b in a.backends if b not in BACKENDS]
    if missing:
        print(f"mLSTM backends not available here, skipped: {', '.join(missing)}")
    a.backends = [b for b in a.backends if b in BACKENDS] or ["chunkwise"]
    rows, skipped = [], []
    print("| model | mLSTM backend | tokens | px | batch | params | mode | infer img/s | train img/s | "
          "infer peak GiB | train peak GiB | graph check (max abs diff) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    def chunk_for(t: int, backend: str) -> int:
        if backend != "chunkwise":
            return 64
        chunk = default_chunk_size(t)
        return max(chunk, -(-t // a.max_chunks)) if a.max_chunks else chunk

    setups = {}
    for t in a.tokens:
        px = math.isqrt(t) * a.patch_size
        kw = dict(image_size=px, patch_size=a.patch_size, in_channels=a.in_channels, num_classes=a.num_classes,
                  dim=a.dim, num_heads=a.num_heads)
        vil_cfg = ViLConfig(depth=a.depth, **kw)
        vit_cfg = matched_vit(ViTConfig(**kw), num_parameters(ViL(vil_cfg)))
        setups[t] = (px, vil_cfg, vit_cfg)
    counts = {}
    # the first backend and the ViT at every size (and batch) first; further backends after, as the deadline allows
    jobs = [(job, t, tpb, True) for i, backend in enumerate(a.backends) for tpb in a.tokens_per_batch
            for t in a.tokens for job in ([backend, "vit"] if i == 0 else [backend])]
    if a.also_unfused:  # the ViL with nn's mLSTMLayer as is: what the fused glue saves
        jobs += [(a.backends[0], t, a.tokens_per_batch[0], False) for t in a.tokens]
    for backend, t, tpb, fused in jobs:
        name = "vit" if backend == "vit" else "vil"
        px, vil_cfg, vit_cfg = setups[t]
        batch = max(1, round(tpb / t))
        if a.max_s is not None and time.perf_counter() - T0 > a.max_s:
            skipped.append(f"{name} ({backend}{'' if fused else ', unfused'}) at {t} tokens, batch {batch}")
            continue
        torch.manual_seed(0)
        # the torch chunkwise form pads the sequence to whole chunks: a chunk that divides T where one does
        chunk = chunk_for(t, backend)
        model = (ViT(vit_cfg) if name == "vit" else ViL(replace(vil_cfg, backend=backend, chunk_size=chunk,
                                                                   fused_glue=fused))).to(dev)
        x = torch.randn(batch, a.in_channels, px, px, device=dev)
        y = torch.randint(0, a.num_classes, (batch,), device=dev)
        row = {"model": name, "backend": None if name == "vit" else backend, "fused_glue": fused,
               "chunk_size": None if name == "vit" else chunk, "tokens": t, "px": px,
               "batch": batch, "params": num_parameters(model), "depth": model.cfg.depth}
        for train in (False, True):
            key = "train" if train else "infer"
            try:
                row[key] = measure(model, x, y, train=train, amp=a.amp, graph=graph, min_s=a.min_s,
                                   max_iters=a.max_iters)
            except Exception as e:  # noqa: BLE001  an OOM or a kernel that cannot run this shape: a row, not a crash
                row[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
        del model
        rows.append(row)
        inf, tr = row["infer"], row["train"]
        ips = lambda r: f"{r['images_per_s']:.0f}" if "images_per_s" in r else r["error"][:40]
        mem = lambda r: f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-"
        mode = "graph" if inf.get("graph") and tr.get("graph") else "eager" if not graph else "mixed"
        chk = lambda r: _fmt_check(r) if "error" not in r else "-"
        print(f"| {name}{'' if fused else ' (unfused glue)'} | {row['backend'] + f' (chunk {chunk})' if row['backend'] else '-'} | {t} | {px} | {batch} | {row['params']:,} ({row['depth']} "
              f"blocks) | {mode} | {ips(inf)} | {ips(tr)} | {mem(inf)} | {mem(tr)} | infer {chk(inf)}; "
              f"train {chk(tr)} |", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"argv": sys.argv, "machine": machine, "torch": torch.__version__, "rows": rows,
                           "skipped": skipped, "kernel_counts": counts}, f, indent=1)
    if a.count_kernels:  # after the timings: they come first under the deadline
        t = a.tokens[0]
        px, vil_cfg, vit_cfg = setups[t]
        batch = max(1, round(a.tokens_per_batch[0] / t))
        for name, backend in [("vil", a.backends[0]), ("vit", None)]:
            if a.max_s is not None and time.perf_counter() - T0 > a.max_s:
                skipped.append(f"kernel count of {name}")
                continue
            torch.manual_seed(0)
            model = (ViT(vit_cfg) if name == "vit" else ViL(replace(
                vil_cfg, backend=backend, chunk_size=chunk_for(t, backend)))).to(dev)
            x = torch.randn(batch, a.in_channels, px, px, device=dev)
            y = torch.randint(0, a.num_classes, (batch,), device=dev)
            try:
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.amp == "bf16"):
                    counts[name] = count_kernels(model, x, y)
            except Exception as e:  # noqa: BLE001  a profile that fails is reported, not a crash
                counts[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            del model
            print(f"kernels of one eager training step, {name}{f' ({backend})' if backend else ''}, {t} tokens, "
                  f"batch {batch}: {json.dumps(counts[name])}", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"argv": sys.argv, "machine": machine, "torch": torch.__version__, "rows": rows,
                           "skipped": skipped, "kernel_counts": counts}, f, indent=1)
    lo = min(a.tokens)
    tpb = a.tokens_per_batch[0]
    his = sorted(t for t in set(a.tokens) if t != lo)
    if his:
        print(f"\nCost growth per image against {lo} tokens (time per image at T / at {lo}), at about {tpb} "
              f"tokens per batch; ViT attention share = T / (T + 6 d) of its matmul FLOPs per layer:\n")
        print("| model | mLSTM backend | T | token ratio | attention pair ratio | infer cost ratio | "
              "train cost ratio | ViT attention share at T (at the smallest) |")
        print("|---|---|---|---|---|---|---|---|")
        for name, backend in [("vil", b) for b in a.backends] + [("vit", None)]:
            r = {row["tokens"]: row for row in rows if row["model"] == name and row["backend"] == backend
                 and row["fused_glue"] and row["batch"] == max(1, round(tpb / row["tokens"]))}
            for hi in his:
                if lo not in r or hi not in r:
                    continue
                ratio = lambda k: (f"{r[lo][k]['images_per_s'] / r[hi][k]['images_per_s']:.2f}"
                                   if "images_per_s" in r[lo][k] and "images_per_s" in r[hi][k] else "-")
                share = lambda t: t / (t + 6 * a.dim)
                shares = f"{share(hi):.2f} ({share(lo):.2f})" if name == "vit" else "-"
                print(f"| {name} | {backend or '-'} | {hi} | {hi / lo:.2f} | {(hi / lo) ** 2:.1f} | "
                      f"{ratio('infer')} | {ratio('train')} | {shares} |")
    if skipped:
        print(f"\nskipped at the --max-s {a.max_s} deadline: {', '.join(skipped)}")
    print(f"\nwall: {time.perf_counter() - T0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
