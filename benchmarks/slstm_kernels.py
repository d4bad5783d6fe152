"""sLSTM on the GPU: our Triton kernels vs the official xlstm "cuda" and "vanilla" backends and flashrnn.

First checks correctness (our kernels against the float64 reference on the same inputs, outputs, final
state and gradients; the layer outputs against the official CUDA layer), then times, in one run:
  layer level: the official sLSTMLayer (bf16, no conv, as in anchors.md) with backend "cuda" (compiled with
               nvcc inside this script) and "vanilla", and the same layer with only the cell replaced by
               `flashxlstm.ops.slstm` (same parameters);
  op level:    `slstm(x, R, b, backend="triton")`, the official CUDA cell on the same gate inputs, flashrnn.
Times are triton.testing.do_bench medians (vanilla: median of a few wall-clock runs). Writes a markdown table
and JSON rows into --out.

    python benchmarks/slstm_kernels.py [--B 16 --T 1024 --shapes 4x256,1x768,8x64,16x64 --out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from flashxlstm.ops import slstm, slstm_reference
from flashxlstm.ops.slstm.triton import plan, slstm_triton

ROWS: list[dict] = []


def log(*a):
    print(*a, flush=True)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def bench(fn, warmup=25, rep=100):
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def wall(fn, n=3):
    fn()
    ts = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def record(level, impl, shape, mode, ms, note=""):
    ROWS.append(dict(level=level, impl=impl, shape=shape, mode=mode, ms=ms, note=note))
    log(f"{level:6s} {impl:28s} {shape:14s} {mode:5s} {ms if isinstance(ms, str) else f'{ms:9.3f} ms'} {note}")


def fwbw(fn, inputs):
    def run():
        for t in inputs:
            t.grad = None
        fn().float().sum().backward()
    return run


def check_correctness(B, NH, DH, T, dev, forget_gates=("sigmoid", "exp")):
    """fp32 at T steps: outputs, state, gradients vs the float64 reference, for each forget gate asked for.

    Each gate compiles its own fp32 kernels (about a minute per gate at head dim 768 on a cold machine)."""
    g = torch.Generator(device=dev).manual_seed(NH * 1000 + DH)
    for fg in forget_gates:
        x = torch.randn(B, T, 4, NH, DH, device=dev, generator=g) * 2
        R = torch.randn(4, NH, DH, DH, device=dev, generator=g) / DH**0.5
        b = torch.randn(4, NH, DH, device=dev, generator=g)
        st = (torch.randn(B, NH, DH, device=dev, generator=g), torch.rand(B, NH, DH, device=dev, generator=g) + 0.5,
              torch.randn(B, NH, DH, device=dev, generator=g), torch.randn(B, NH, DH, device=dev, generator=g).tanh())
        w = torch.randn(B, T, NH, DH, device=dev, generator=g, dtype=torch.float64)

        def run(f, dt):
            ins = [t.detach().to(dt).requires_grad_(True) for t in (x, R, b, *st)]
            h, s = f(ins)
            loss = (h.double() * w).sum() + sum(v.double().sum() for v in s)
            return [h, *s], torch.autograd.grad(loss, ins)

        out, grads = run(lambda t: slstm(t[0], t[1], t[2], state=tuple(t[3:]), backend="triton", forget_gate=fg), torch.float32)
        out_r, grads_r = run(lambda t: slstm_reference(t[0], t[1], t[2], state=tuple(t[3:]), forget_gate=fg), torch.float64)
        errs = [rel(a, c) for a, c in zip(out + list(grads), out_r + list(grads_r))]
        ok = max(errs) < 1e-4 and all(torch.isfinite(t).all() for t in out + list(grads))
        record("check", f"triton fp32 {fg}", f"{NH}x{DH}", "fwbw", "ok" if ok else "FAIL",
               f"max rel err {max(errs):.1e} over h, c, n, m, h_T, dx, dR, db, dc0, dn0, dm0, dh0 (T={T})")
        if not ok:
            log("errors", errs)


def our_layer(layer, R, b):
    """The official layer with the cell replaced by our op (same projections and group norm)."""
    cfg = layer.config
    NH = cfg.num_heads

    def fwd(x):
        B, S, D = x.shape
        gates = torch.cat([layer.fgate(x), layer.igate(x), layer.zgate(x), layer.ogate(x)], dim=-1)
        h, _ = slstm(gates.view(B, S, 4, NH, D // NH), R, b, backend="triton")
        return layer.group_norm(h.transpose(1, 2)).transpose(1, 2).reshape(B, S, D)
    return fwd


def run_shape(B, T, NH, DH, dev, args):
    from xlstm import sLSTMLayer, sLSTMLayerConfig

    D = NH * DH
    shape = f"{NH}x{DH}"
    x = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16)
    layers = {}
    for backend in ("cuda", "vanilla"):
        try:
            t0 = time.time()
            torch.manual_seed(0)
            cfg = sLSTMLayerConfig(embedding_dim=D, num_heads=NH, conv1d_kernel_size=0, backend=backend,
                                   batch_size=B, recurrent_weight_init="standard")
            layers[backend] = sLSTMLayer(cfg).to(dev).to(torch.bfloat16)
            record("build", f"official {backend}", shape, "init", f"{time.time() - t0:.1f} s")
        except Exception as e:
            record("build", f"official {backend}", shape, "init", "FAIL", repr(e)[-300:].replace("\n", " "))
    ref_layer = layers.get("cuda") or layers.get("vanilla")
    cell = ref_layer.slstm_cell
    R = cell.recurrent_kernel[...].permute(2, 0, 3, 1).contiguous().requires_grad_(True)  # (4, NH, DH, DH)
    b = cell.bias[...].permute(1, 0, 2).contiguous().requires_grad_(True)
    ours = our_layer(ref_layer, R, b)
    with torch.no_grad():
        y_ours = ours(x)
        for name, layer in layers.items():
            y = layer(x)
            record("check", f"layer vs official {name}", shape, "fw", "info",
                   f"rel diff of bf16 layer outputs {rel(y_ours, y):.1e}")
    # op-level correctness on the benchmark's own bf16 inputs
    gates = torch.randn(B, T, 4, NH, DH, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        h, _ = slstm(gates, R, b, backend="triton")
        h_ref, _ = slstm_reference(gates, R, b)
    record("check", "triton bf16 vs fp64 ref", shape, "fw", "info", f"rel err {rel(h, h_ref):.1e} (T={T})")

    xg = x.clone().requires_grad_(True)
    params = [xg, R, b] + list(ref_layer.parameters())
    with torch.no_grad():
        record("layer", "flashxlstm triton", shape, "fw", bench(lambda: ours(x)))
    record("layer", "flashxlstm triton", shape, "fwbw", bench(fwbw(lambda: ours(xg), params)))
    for name, layer in layers.items():
        lp = [xg] + list(layer.parameters())
        if name == "vanilla":
            with torch.no_grad():
                record("layer", "official vanilla", shape, "fw", wall(lambda: layer(x), n=args.vanilla_reps))
            record("layer", "official vanilla", shape, "fwbw", wall(fwbw(lambda: layer(xg), lp), n=args.vanilla_reps))
        else:
            with torch.no_grad():
                record("layer", f"official {name}", shape, "fw", bench(lambda: layer(x)))
            record("layer", f"official {name}", shape, "fwbw", bench(fwbw(lambda: layer(xg), lp)))

    # op level
    gq = gates.clone().requires_grad_(True)
    with torch.no_grad():
        record("op", "flashxlstm triton", shape, "fw", bench(lambda: slstm(gates, R, b, backend="triton")[0]))
    record("op", "flashxlstm triton", shape, "fwbw", bench(fwbw(lambda: slstm(gq, R, b, backend="triton")[0], [gq, R, b])))
    if "cuda" in layers:
        c = layers["cuda"].slstm_cell
        flat = gates.reshape(B, T, 4 * D)
        fq = flat.clone().requires_grad_(True)
        with torch.no_grad():
            record("op", "official cuda cell", shape, "fw", bench(lambda: c(flat)[0]))
        record("op", "official cuda cell", shape, "fwbw", bench(fwbw(lambda: c(fq)[0], [fq] + list(c.parameters()))))
    try:
        from flashrnn import flashrnn

        Rb, bb = R.detach().to(torch.bfloat16), b.detach().to(torch.bfloat16)
        fn = lambda g_, R_, b_: flashrnn(g_, R_, b_, function="slstm", backend="triton_fused", dtype="bfloat16")[0]
        with torch.no_grad():
            record("op", "flashrnn triton_fused", shape, "fw", bench(lambda: fn(gates, Rb, bb)))
        Rq, bq = Rb.clone().requires_grad_(True), bb.clone().requires_grad_(True)
        record("op", "flashrnn triton_fused", shape, "fwbw", bench(fwbw(lambda: fn(gq, Rq, bq), [gq, Rq, bq])))
    except Exception as e:
        record("op", "flashrnn triton_fused", shape, "fw", "FAIL", repr(e)[:200].replace("\n", " "))
    if shape in args.sweep.split(","):
        p = plan(B, NH, DH, torch.device(dev))
        bj = 16
        while bj <= min(64, max(16, 1 << (DH - 1).bit_length())):
            try:
                with torch.no_grad():
                    ms_fw = bench(lambda: slstm_triton(gates, R, b, _zero(B, NH, DH, dev), block_j=bj)[0])
                ms_fb = bench(fwbw(lambda: slstm_triton(gq, R, b, _zero(B, NH, DH, dev), block_j=bj)[0], [gq, R, b]))
                record("sweep", f"triton BJ={bj}{' (auto)' if bj == p['BJ'] else ''}", shape, "fw/bw", f"{ms_fw:.3f} / {ms_fb:.3f} ms")
            except Exception as e:
                record("sweep", f"triton BJ={bj}", shape, "fw/bw", "FAIL", repr(e)[:200])
            bj *= 2
    del layers


def _zero(B, NH, DH, dev):
    return tuple(torch.zeros(B, NH, DH, device=dev) for _ in range(4))


def table(B, T, shapes) -> str:
    get = lambda lvl, impl, shape, mode: next((r["ms"] for r in ROWS if (r["level"], r["impl"], r["shape"], r["mode"]) == (lvl, impl, shape, mode)), None)
    fmt = lambda v: "—" if v is None else (v if isinstance(v, str) else f"{v:.2f}")
    ratio = lambda a, b: "—" if not isinstance(a, float) or not isinstance(b, float) else f"{a / b:.2f}"
    lines = [f"B={B} T={T}, bf16 inputs, fp32 states. ms (do_bench median); ratio = ours / peer (lower is better).", ""]
    lines += ["| level | (NH, DH) | pass | flashxlstm triton | official cuda | ours/cuda | official vanilla | vanilla/ours | flashrnn triton_fused |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for lvl in ("layer", "op"):
        for s in shapes:
            for mode in ("fw", "fwbw"):
                o = get(lvl, "flashxlstm triton", s, mode)
                c = get(lvl, "official cuda" if lvl == "layer" else "official cuda cell", s, mode)
                v = get(lvl, "official vanilla", s, mode)
                f = get(lvl, "flashrnn triton_fused", s, mode) if lvl == "op" else None
                speed = "—" if not isinstance(o, float) or not isinstance(v, float) else f"{v / o:.0f}x"
                lines.append(f"| {lvl} | {s} | {mode} | {fmt(o)} | {fmt(c)} | {ratio(o, c)} | {fmt(v)} | {speed} | {fmt(f)} |")
    lines += ["", "Checks and other rows:", ""]
    show = lambda v: v if isinstance(v, str) else f"{v:.3f} ms"
    lines += [f"- {r['level']} {r['impl']} {r['shape']} {r['mode']}: {show(r['ms'])} {r['note']}"
              for r in ROWS if r["level"] in ("check", "build", "sweep") or isinstance(r["ms"], str)]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--shapes", default="4x256,1x768,8x64,16x64")
    ap.add_argument("--check-T", type=int, default=64)
    ap.add_argument("--check-gates", default="sigmoid,exp",
                    help="forget gates whose fp32 kernels are checked against the float64 reference first")
    ap.add_argument("--vanilla-reps", type=int, default=2)
    ap.add_argument("--sweep", default="", help="shapes (NHxDH,...) to also time with every block size BJ")
    ap.add_argument("--watchdog", type=float, default=560.0, help="seconds before the run gives up (a hung kernel)")
    ap.add_argument("--out", default=os.environ.get("OUT", str(Path(__file__).parent / "results")))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def dump():
        shapes = args.shapes.split(",")
        import triton
        head = ["# sLSTM kernels on the GPU: flashxlstm Triton vs official xlstm (cuda, vanilla) and flashrnn", "",
                f"Command: `python {' '.join(sys.argv)}`", "",
                f"Machine: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}, "
                f"CUDA {torch.version.cuda}", ""]
        (out / "slstm_kernels.md").write_text("\n".join(head) + table(args.B, args.T, shapes))
        (out / "slstm_kernels.json").write_text(json.dumps(ROWS, indent=1))

    def give_up():
        log("WATCHDOG: giving up (hung kernel?)")
        dump()
        os._exit(3)

    threading.Timer(args.watchdog, give_up).start()
    dev = "cuda"
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    for NH, DH in shapes:
        try:
            check_correctness(args.B, NH, DH, args.check_T, dev, tuple(args.check_gates.split(",")))
        except Exception:
            traceback.print_exc()
            record("check", "triton fp32", f"{NH}x{DH}", "fwbw", "FAIL", "exception")
        dump()
    for NH, DH in shapes:
        try:
            run_shape(args.B, args.T, NH, DH, dev, args)
        except Exception:
            traceback.print_exc()
        dump()
        torch.cuda.empty_cache()
    log(table(args.B, args.T, args.shapes.split(",")))
    os._exit(0)


if __name__ == "__main__":
    main()
