"""sLSTM on the GPU: our Triton kernels vs the official xlstm "cuda" and "vanilla" backends and flashrnn.

One run, made to fit a short device lease:
  0. starts, in parallel child processes, everything that only compiles: the official CUDA layer of each
     shape (nvcc, 20-30 s each), and per (shape, launch configuration) our kernels, each child checking the
     configuration's bf16 forward and backward (the default configuration: fp32 too) against the float64
     reference at --check-T steps, tolerances TOL below (outputs,
     final state and every gradient; the Triton cache they fill serves the timings below);
  1. per shape: times every candidate configuration at op level (fw, fwbw) and keeps the fastest (fw + fwbw),
     then times, with it:
       layer level: the official sLSTMLayer (bf16, no conv, as in anchors.md) with backend "cuda" and "vanilla",
                    and the same layer with only the cell replaced by our kernels (same parameters);
       op level:    our kernels, the official CUDA cell on the same gate inputs, flashrnn triton_fused.
Times are triton.testing.do_bench medians (vanilla: median of --vanilla-reps wall-clock runs). Writes a
markdown table and JSON rows into --out after every shape (a watchdog writes them if the run hangs).

    python benchmarks/bench_slstm.py [--B 16 --T 1024 --shapes 1x768,4x256,8x64,16x64 --out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from flashxlstm.ops import slstm_reference
from flashxlstm.ops.slstm_cell.triton import plan, slstm_triton

ROWS: list[dict] = []
CHOSEN: dict[str, str] = {}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Check tolerances (relative norm error vs float64 on the same rounded inputs). bf16: the tensors returned
# in bf16 (dx, dR) carry one rounding to nearest, at most 2^-8 relative per element and so in norm; the
# kernel's own error is fp32-level (its recurrent products take h and the gate gradients as hi + lo bf16
# pairs; a float64 emulation of its rounding points gives ~1e-6), allowed the fp32 check's 1e-4 on top.
# The forward without gradients (one bf16 product per step) perturbs each step's raw by at most 2^-8 of its
# recurrent part, within the same bound on the emulated and measured cases.
TOL = {"bf16": 2.0**-8 + 1e-4, "fp32": 1e-4}

# Launch configurations tried per head dim (keywords of flashxlstm.ops.slstm_cell.triton.plan); "default" = plan's
# own choice, which is what `slstm(..., backend="triton")` uses.
CANDIDATES = {
    "large": {  # DH >= 512: 768 -> R pieces of 512 + 256 rows
        "default": {},
        "resident BJ16 8 warps": dict(resident=True, block_j=16, num_warps=8),
        "streamed BJ32": dict(resident=False, block_j=32),
    },
    "mid": {  # 128 < DH < 512
        "default": {},
        "resident BJ16": dict(resident=True, block_j=16),
        "streamed BJ32": dict(resident=False, block_j=32),
    },
    "small": {  # DH <= 128
        "default": {},
        "resident BJ64 (whole head, no grid barrier)": dict(resident=True, block_j=64),
        "resident BJ64, h in registers (forward)": dict(resident=True, block_j=64, registers=True),
    },
}


def candidates(DH: int) -> dict[str, dict]:
    return CANDIDATES["large" if DH >= 512 else "mid" if DH > 128 else "small"]


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


def _zero(B, NH, DH, dev):
    return tuple(torch.zeros(B, NH, DH, device=dev) for _ in range(4))


def official_layer(B, NH, DH, backend, dev):
    from xlstm import sLSTMLayer, sLSTMLayerConfig

    torch.manual_seed(0)
    cfg = sLSTMLayerConfig(embedding_dim=NH * DH, num_heads=NH, conv1d_kernel_size=0, backend=backend,
                           batch_size=B, recurrent_weight_init="standard")
    return sLSTMLayer(cfg).to(dev).to(torch.bfloat16)


# ---- child processes (compile in parallel) ----

def check_bf16(B, NH, DH, T, tune, dev="cuda", forget_gate="sigmoid", dtype=torch.bfloat16) -> dict:
    """`dtype` inputs (x, R) through our kernels with `tune` vs the float64 reference on the same (rounded)
    values: outputs, final state, every gradient, and the forward without gradients."""
    g = torch.Generator(device=dev).manual_seed(NH * 1000 + DH)
    x = (torch.randn(B, T, 4, NH, DH, device=dev, generator=g) * 2).to(dtype)
    R = (torch.randn(4, NH, DH, DH, device=dev, generator=g) / DH**0.5).to(dtype)
    b = torch.randn(4, NH, DH, device=dev, generator=g)
    st = (torch.randn(B, NH, DH, device=dev, generator=g), torch.rand(B, NH, DH, device=dev, generator=g) + 0.5,
          torch.randn(B, NH, DH, device=dev, generator=g), torch.randn(B, NH, DH, device=dev, generator=g).tanh())
    w = torch.randn(B, T, NH, DH, device=dev, generator=g, dtype=torch.float64)

    def run(f, cast):
        ins = [cast(t).detach().requires_grad_(True) for t in (x, R, b, *st)]
        h, s = f(ins)
        loss = (h.double() * w).sum() + sum(v.double().sum() for v in s)
        return [h, *s], torch.autograd.grad(loss, ins)

    out, grads = run(lambda t: slstm_triton(t[0], t[1], t[2], tuple(t[3:]), forget_gate=forget_gate, tune=tune),
                     lambda t: t)
    out_r, grads_r = run(lambda t: slstm_reference(t[0], t[1], t[2], state=tuple(t[3:]), forget_gate=forget_gate),
                         lambda t: t.double())
    with torch.no_grad():  # the inference kernels (no saved tensors) too
        h_inf, _ = slstm_triton(x, R, b, st, forget_gate=forget_gate, tune=tune)
    names = ["h", "c", "n", "m", "h_T", "dx", "dR", "db", "dc0", "dn0", "dm0", "dh0"]
    errs = dict(zip(names, (rel(a, c) for a, c in zip(out + list(grads), out_r + list(grads_r)))))
    errs["h (no grad)"] = rel(h_inf, out_r[0])
    finite = all(bool(torch.isfinite(t).all()) for t in out + list(grads))
    return dict(errs=errs, finite=finite, plan=plan(B, NH, DH, torch.device(dev), **tune))


def child(args):
    NH, DH = (int(v) for v in args.shape.split("x"))
    t0 = time.time()
    if args.child == "official":
        official_layer(args.B, NH, DH, "cuda", "cuda")
        res = dict(seconds=time.time() - t0)
    elif args.child == "flashrnn":  # fills the Triton cache for the timed calls
        from flashrnn import flashrnn

        g = torch.randn(args.B, args.T, 4, NH, DH, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        R = (torch.randn(4, NH, DH, DH, device="cuda") / DH**0.5).to(torch.bfloat16).requires_grad_(True)
        b = torch.randn(4, NH, DH, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        flashrnn(g, R, b, function="slstm", backend="triton_fused", dtype="bfloat16")[0].float().sum().backward()
        torch.cuda.synchronize()
        res = dict(seconds=time.time() - t0)
    else:
        tune = json.loads(args.tune)
        res = check_bf16(args.B, NH, DH, args.check_T, tune, dtype=DTYPES[args.check_dtype])
        res["seconds"] = time.time() - t0
    print("RESULT" + json.dumps(res, default=str), flush=True)


def spawn(kind, shape, args, tune=None, dtype="bf16"):
    cmd = [sys.executable, __file__, "--child", kind, "--shape", shape, "--B", str(args.B), "--T", str(args.T),
           "--check-T", str(args.check_T), "--check-dtype", dtype]
    if tune is not None:
        cmd += ["--tune", json.dumps(tune)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(proc, timeout) -> dict:
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        return dict(error="timed out")
    line = next((l for l in out.splitlines() if l.startswith("RESULT")), None)
    return json.loads(line[6:]) if line else dict(error=err.strip().splitlines()[-1][-300:] if err.strip() else "no output")


# ---- the timed part ----

def our_layer(layer, R, b, tune):
    """The official layer with the cell replaced by our kernels (same projections and group norm)."""
    NH = layer.config.num_heads

    def fwd(x):
        B, S, D = x.shape
        gates = torch.cat([layer.fgate(x), layer.igate(x), layer.zgate(x), layer.ogate(x)], dim=-1)
        h, _ = slstm_triton(gates.view(B, S, 4, NH, D // NH), R, b, _zero(B, NH, D // NH, x.device), tune=tune)
        h = h.to(x.dtype)
        return layer.group_norm(h.transpose(1, 2)).transpose(1, 2).reshape(B, S, D)
    return fwd


def run_shape(B, T, NH, DH, dev, args, builder):
    shape = f"{NH}x{DH}"
    # op-level sweep over the candidate configurations that passed their check
    gates = torch.randn(B, T, 4, NH, DH, device=dev, dtype=torch.bfloat16)
    R0 = torch.randn(4, NH, DH, DH, device=dev) / DH**0.5
    b0 = torch.randn(4, NH, DH, device=dev)
    gq = gates.clone().requires_grad_(True)
    best = None
    for name, tune in candidates(DH).items():
        if not CHECKED.get((shape, name), False):
            continue
        p = plan(B, NH, DH, torch.device(dev), **tune)
        desc = f"BJ={p['BJ']} NJ={p['NJ']} R {'resident' if p['R_RESIDENT'] else 'streamed'} warps={p['num_warps']}"
        try:
            z = _zero(B, NH, DH, dev)
            with torch.no_grad():
                ms_fw = bench(lambda: slstm_triton(gates, R0, b0, z, tune=tune)[0])
            Rq, bq = R0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
            ms_fb = bench(fwbw(lambda: slstm_triton(gq, Rq, bq, z, tune=tune)[0], [gq, Rq, bq]))
            record("sweep", f"triton {name}", shape, "fw/bw", f"{ms_fw:.3f} / {ms_fb:.3f} ms", desc)
            if best is None or ms_fw + ms_fb < best[0]:
                best = (ms_fw + ms_fb, name, tune, desc)
        except Exception as e:
            record("sweep", f"triton {name}", shape, "fw/bw", "FAIL", repr(e)[:200].replace("\n", " "))
    if best is None:
        record("sweep", "triton", shape, "fw/bw", "FAIL", "no configuration passed its check")
        return
    _, name, tune, desc = best
    CHOSEN[shape] = f"{name} ({desc})"
    record("choice", f"triton {name}", shape, "-", "info", desc)

    # layers: ours (best config), official cuda (built by the child process) and vanilla
    x = torch.randn(B, T, NH * DH, device=dev, dtype=torch.bfloat16)
    layers = {}
    res = collect(builder, args.deadline - time.time()) if builder is not None else dict(error="not started")
    for backend in ("cuda", "vanilla"):
        if backend == "cuda" and "error" in res:
            record("build", "official cuda", shape, "init", "FAIL", res["error"])
            continue
        try:
            t0 = time.time()
            layers[backend] = official_layer(B, NH, DH, backend, dev)
            note = f"(compiled in a child process in {res['seconds']:.1f} s)" if backend == "cuda" else ""
            record("build", f"official {backend}", shape, "init", f"{time.time() - t0:.1f} s", note)
        except Exception as e:
            record("build", f"official {backend}", shape, "init", "FAIL", repr(e)[-300:].replace("\n", " "))
    ref_layer = layers.get("cuda") or layers.get("vanilla")
    cell = ref_layer.slstm_cell
    R = cell.recurrent_kernel[...].permute(2, 0, 3, 1).contiguous().requires_grad_(True)  # (4, NH, DH, DH)
    b = cell.bias[...].permute(1, 0, 2).contiguous().requires_grad_(True)
    ours = our_layer(ref_layer, R, b, tune)
    with torch.no_grad():
        y_ours = ours(x)
        for lname, layer in layers.items():
            record("check", f"layer vs official {lname}", shape, "fw", "info",
                   f"rel diff of bf16 layer outputs {rel(y_ours, layer(x)):.1e}")
        h, _ = slstm_triton(gates, R, b, _zero(B, NH, DH, dev), tune=tune)
        h_ref, _ = slstm_reference(gates, R, b)
    record("check", "triton bf16 vs fp64 ref", shape, "fw", "info", f"rel err {rel(h, h_ref):.1e} (T={T})")

    xg = x.clone().requires_grad_(True)
    params = [xg, R, b] + list(ref_layer.parameters())
    with torch.no_grad():
        record("layer", "flashxlstm triton", shape, "fw", bench(lambda: ours(x)))
    record("layer", "flashxlstm triton", shape, "fwbw", bench(fwbw(lambda: ours(xg), params)))
    for lname, layer in layers.items():
        lp = [xg] + list(layer.parameters())
        if lname == "vanilla":
            with torch.no_grad():
                record("layer", "official vanilla", shape, "fw", wall(lambda: layer(x), n=args.vanilla_reps))
            record("layer", "official vanilla", shape, "fwbw", wall(fwbw(lambda: layer(xg), lp), n=args.vanilla_reps))
        else:
            with torch.no_grad():
                record("layer", f"official {lname}", shape, "fw", bench(lambda: layer(x)))
            record("layer", f"official {lname}", shape, "fwbw", bench(fwbw(lambda: layer(xg), lp)))

    # op level: the same gate inputs and weights for every implementation
    z = _zero(B, NH, DH, dev)
    with torch.no_grad():
        record("op", "flashxlstm triton", shape, "fw", bench(lambda: slstm_triton(gates, R, b, z, tune=tune)[0]))
    record("op", "flashxlstm triton", shape, "fwbw", bench(fwbw(lambda: slstm_triton(gq, R, b, z, tune=tune)[0], [gq, R, b])))
    if "cuda" in layers:
        c = layers["cuda"].slstm_cell
        flat = gates.reshape(B, T, 4 * NH * DH)
        fq = flat.clone().requires_grad_(True)
        with torch.no_grad():
            record("op", "official cuda cell", shape, "fw", bench(lambda: c(flat)[0]))
        record("op", "official cuda cell", shape, "fwbw", bench(fwbw(lambda: c(fq)[0], [fq] + list(c.parameters()))))
    if _flashrnn_runs(DH):
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
    else:
        record("op", "flashrnn triton_fused", shape, "fw", "n/a",
               "not run: it needs a power-of-two head dim and fails at 256 (out of shared memory, measured before)")
    del layers


CHECKED: dict[tuple[str, str], bool] = {}


def _flashrnn_runs(DH: int) -> bool:
    """flashrnn triton_fused needs a power-of-two head dim and ran out of shared memory at 256 (measured)."""
    return DH & (DH - 1) == 0 and DH <= 128


def table(B, T, shapes) -> str:
    get = lambda lvl, impl, shape, mode: next((r["ms"] for r in ROWS if (r["level"], r["impl"], r["shape"], r["mode"]) == (lvl, impl, shape, mode)), None)
    fmt = lambda v: "—" if v is None else (v if isinstance(v, str) else f"{v:.2f}")
    ratio = lambda a, b: "—" if not isinstance(a, float) or not isinstance(b, float) else f"{a / b:.2f}"
    lines = [f"B={B} T={T}, bf16 inputs, fp32 states. ms (do_bench median); ratio = ours / peer (lower is better).", ""]
    lines += ["| level | (NH, DH) | pass | flashxlstm triton | official cuda | ours/cuda | official vanilla | vanilla/ours | flashrnn triton_fused | ours/flashrnn |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for lvl in ("layer", "op"):
        for s in shapes:
            for mode in ("fw", "fwbw"):
                o = get(lvl, "flashxlstm triton", s, mode)
                c = get(lvl, "official cuda" if lvl == "layer" else "official cuda cell", s, mode)
                v = get(lvl, "official vanilla", s, mode)
                f = get(lvl, "flashrnn triton_fused", s, mode) if lvl == "op" else None
                speed = "—" if not isinstance(o, float) or not isinstance(v, float) else f"{v / o:.0f}x"
                lines.append(f"| {lvl} | {s} | {mode} | {fmt(o)} | {fmt(c)} | {ratio(o, c)} | {fmt(v)} | {speed} | {fmt(f)} | {ratio(o, f)} |")
    lines += ["", "Configuration timed per shape (the fastest fw + fwbw of the sweep):", ""]
    lines += [f"- {s}: {CHOSEN.get(s, '—')}" for s in shapes]
    lines += ["", "Checks, sweep and other rows:", ""]
    show = lambda v: v if isinstance(v, str) else f"{v:.3f} ms"
    lines += [f"- {r['level']} {r['impl']} {r['shape']} {r['mode']}: {show(r['ms'])} {r['note']}"
              for r in ROWS if r["level"] in ("check", "build", "sweep", "choice") or isinstance(r["ms"], str)]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--shapes", default="1x768,4x256,8x64,16x64")
    ap.add_argument("--check-T", type=int, default=32)
    ap.add_argument("--check-dtypes", default="bf16,fp32",
                    help="dtypes of the checks (bf16: every candidate configuration; fp32: the default one)")
    ap.add_argument("--vanilla-reps", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=230.0, help="seconds before the run writes what it has and exits")
    ap.add_argument("--out", default=os.environ.get("OUT", str(Path(__file__).parent / "results")))
    ap.add_argument("--child", choices=["official", "check", "flashrnn"], help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--tune", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--check-dtype", default="bf16", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    t_start = time.time()
    args.deadline = t_start + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape_list = args.shapes.split(",")

    def dump():
        import triton
        head = ["# sLSTM kernels on the GPU: flashxlstm Triton vs official xlstm (cuda, vanilla) and flashrnn", "",
                f"Command: `python {' '.join(sys.argv)}`", "",
                f"Machine: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}, "
                f"CUDA {torch.version.cuda}; run took {time.time() - t_start:.0f} s", ""]
        (out / "bench_slstm.md").write_text("\n".join(head) + table(args.B, args.T, shape_list))
        (out / "bench_slstm.json").write_text(json.dumps(dict(rows=ROWS, chosen=CHOSEN), indent=1, default=str))

    def give_up():
        log("BUDGET: out of time, writing what there is")
        dump()
        os._exit(3)

    threading.Timer(args.budget_s, give_up).start()
    dev = "cuda"
    builders = {s: spawn("official", s, args) for s in shape_list}
    dtypes = args.check_dtypes.split(",")
    checks = {(s, name, dt): spawn("check", s, args, tune, dt) for s in shape_list for dt in dtypes
              for name, tune in candidates(int(s.split("x")[1])).items() if dt == "bf16" or name == "default"}
    warm = {s: spawn("flashrnn", s, args) for s in shape_list if _flashrnn_runs(int(s.split("x")[1]))}
    for (s, name, dt), proc in checks.items():
        res = collect(proc, args.deadline - time.time() - 60)
        if "error" in res:
            unfinished = res["error"] == "timed out"  # the budget ran out before the child reported
            record("check", f"triton {dt} {name}", s, "fwbw", "NOT FINISHED" if unfinished else "FAIL",
                   "no result within the checks' share of --budget-s (the last 60 s are kept for the timings)"
                   if unfinished else res["error"])
            continue
        worst = max(res["errs"].values())
        ok = res["finite"] and worst <= TOL[dt]
        if dt == "bf16":  # the timings run bf16: timed unless plainly broken; flagged above the tolerance
            CHECKED[(s, name)] = res["finite"] and worst < 0.2
        errs = ", ".join(f"{k} {v:.1e}" for k, v in res["errs"].items())
        record("check", f"triton {dt} {name}", s, "fwbw", "ok" if ok else "OVER TOL" if worst < 0.2 else "FAIL",
               f"max rel err {worst:.1e} vs float64 (tol {TOL[dt]:.1e}, T={args.check_T}; {errs}); "
               f"compile+check {res['seconds']:.0f} s")
    for s, proc in warm.items():
        res = collect(proc, args.deadline - time.time() - 60)
        record("build", "flashrnn triton_fused", s, "warm", "FAIL" if "error" in res else f"{res['seconds']:.1f} s",
               res.get("error", "first fw + bw call in a child process (compiles)"))
    dump()
    for s in shape_list:
        NH, DH = (int(v) for v in s.split("x"))
        try:
            run_shape(args.B, args.T, NH, DH, dev, args, builders[s])
        except Exception:
            traceback.print_exc()
            record("error", "run_shape", s, "-", "FAIL", traceback.format_exc().splitlines()[-1][:200])
        dump()
        torch.cuda.empty_cache()
    log(table(args.B, args.T, shape_list))
    os._exit(0)


if __name__ == "__main__":
    main()
