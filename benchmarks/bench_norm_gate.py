"""The mLSTM layer's output glue in training, fused vs compiled: head_norm_gate_linear (one Triton op, the
out-projection's input recomputed in the backward) against the unfused expression compiled by Inductor, at the
layer shapes of large-1.3b and large-125m, bf16 activations, fp32 weights, compute in bf16 (what autocast does).

Per shape: the error of each output and gradient against the float64 expression, for the fused op and for
the unfused expression in the same dtypes; forward + backward wall time per call (median, with a sync per call,
so host work counts in full), the GPU kernel time of one call (torch.profiler); and the bytes kept between
forward and backward (memory allocated after the forward minus before and minus the output).

    python benchmarks/bench_norm_gate.py --out $OUT/trainspeed
    TRITON_INTERPRET=1 python benchmarks/bench_norm_gate.py --tiny     # the same passes on the CPU, small
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from flashxlstm.ops.fused.head_norm_gate_seq import head_norm_gate_linear, head_norm_gate_linear_reference

SHAPES = {"large-1.3b, 2 x 8192": (1, 16384, 8, 256, 2048), "large-125m, 4 x 8192": (1, 32768, 4, 192, 768)}


def make(B, S, NH, DH, P, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device)
    return dict(h=r(B, NH, S, DH, scale=2.0), o=r(B, S, NH * DH, scale=3.0), w=1 + 0.1 * r(NH * DH),
                pw=r(P, NH * DH, scale=(NH * DH) ** -0.5), dout=r(B, S, P))


def leaves(t, dtype):
    out = {}
    for k in ("h", "o"):
        out[k] = t[k].to(dtype, copy=True).requires_grad_()
    for k in ("w", "pw"):
        out[k] = t[k].to(torch.float32 if dtype != torch.float64 else dtype, copy=True).requires_grad_()
    return out


def run(fn, t, dtype, compute):
    x = leaves(t, dtype)
    y = fn(x["h"], x["o"], x["w"], None, x["pw"], None, 1e-6, compute)
    y.backward(t["dout"].to(y.dtype))
    return [y.detach()] + [x[k].grad for k in ("h", "o", "w", "pw")]


def rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


def fused(h, o, w, b, pw, pb, eps, compute):
    return head_norm_gate_linear(h, o, w, b, pw, pb, eps, compute, backend="triton")


def timed(fn, t, compute, iters):
    x = leaves(t, torch.bfloat16)
    dout = t["dout"].to(torch.bfloat16)
    cuda = dout.device.type == "cuda"
    times, kept = [], float("nan")
    for it in range(iters + 2):
        for p in x.values():
            p.grad = None
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        y = fn(x["h"], x["o"], x["w"], None, x["pw"], None, 1e-6, compute)
        if cuda:
            kept = torch.cuda.memory_allocated() - base - y.numel() * y.element_size()
        y.backward(dout)
        if cuda:
            torch.cuda.synchronize()
        if it >= 2:
            times.append(1e3 * (time.perf_counter() - t0))
        del y
    return statistics.median(times), kept


def kernel_ms(fn, t, compute) -> float:
    """GPU kernel time of one forward + backward call (torch.profiler, summed over kernels): the GPU's share of
    the wall time above, without host work."""
    from torch.profiler import ProfilerActivity, profile

    x = leaves(t, torch.bfloat16)
    dout = t["dout"].to(torch.bfloat16)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(x["h"], x["o"], x["w"], None, x["pw"], None, 1e-6, compute).backward(dout)
        torch.cuda.synchronize()
    return sum(e.time_range.elapsed_us() for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--tiny", action="store_true", help="CPU smoke run at a small shape (set TRITON_INTERPRET=1)")
    args = p.parse_args()
    shapes, device, backend = SHAPES, torch.device("cuda"), "inductor"
    if args.tiny:
        shapes, device, backend, args.iters = {"tiny": (2, 37, 3, 24, 29)}, torch.device("cpu"), "aot_eager", 1
    elif not torch.cuda.is_available():
        print("bench_norm_gate.py: needs a CUDA device (or --tiny under TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    import triton

    started = time.perf_counter()
    lines = [f"command: python {' '.join(sys.argv)}",
             f"machine: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}, triton {triton.__version__}, "
             f"python {platform.python_version()}", "",
             "| shape (B, S, NH, DH -> P) | path | y | dh | do | dnorm_w | dproj_w | fw+bw ms | GPU kernel ms | "
             "kept for bw MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    compiled = torch.compile(head_norm_gate_linear_reference, backend=backend)
    for name, (B, S, NH, DH, P) in shapes.items():
        t = make(B, S, NH, DH, P, device)
        want = run(head_norm_gate_linear_reference, t, torch.float64, None)
        for label, fn in (("fused (Triton op)", fused), ("unfused, Inductor", compiled)):
            got = run(fn, t, torch.bfloat16, torch.bfloat16)
            ms, kept = timed(fn, t, torch.bfloat16, args.iters)
            gpu = f"{kernel_ms(fn, t, torch.bfloat16):.3f}" if device.type == "cuda" else "-"
            errs = " | ".join(f"{rel(a, b):.1e}" for a, b in zip(got, want))
            line = (f"| {name}: {B}, {S}, {NH}, {DH} -> {P} | {label} | {errs} | {ms:.3f} | {gpu} | "
                    f"{kept / 2**20:.2f} |")
            lines.append(line)
            print(line, flush=True)
            if args.out:  # row by row, so a run stopped by its time box keeps what it measured
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / "bench_norm_gate.md").write_text("\n".join(lines) + "\n")
        del t, want
        if device.type == "cuda":
            torch.cuda.empty_cache()
    lines += ["", f"errors: max |x - x64| / max |x64| against the float64 expression; run took "
                  f"{time.perf_counter() - started:.0f} s"]
    print(lines[-1])
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_norm_gate.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
