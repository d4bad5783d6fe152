"""mLSTM kernels on one GPU: check ours against float64 everywhere it must run, then time ours and the peers.

    python benchmarks/bench_mlstm.py [--out DIR] [--budget-s S] [--skip-checks] [--shapes 0,1]

Checks (before any timing; a failed check is reported and the timings are marked): the Triton backend against
the float64 torch chunkwise form, forward and gradients of q, k, v, i, f, on
- every timed shape (bf16, the first two heads of batch 0; relative error <= 1e-2);
- chunk_size 32, 64, 128, 256 x fp32 / bf16 / fp16 at (1, 2, 256, 64, 128) (the shape that ran out of shared
  memory in fp32 at chunk 128 before launch plans) and at the 7B heads (1, 2, 512, 256, 512)
  (fp32 <= 1e-3, 16-bit <= 1e-2);
- "no crash anywhere": chunk_size 16..256 x fp32 / bf16 / fp16 x head dims up to 512, forward and backward,
  without and with packed documents (cu_seqlens): every combination runs (no error, no NaN) or raises
  ValueError;
- torch.compile of a function calling the op (compiled == eager, values and gradients);
- packed documents (cu_seqlens) against each document alone, and the decode step.
Timings (bf16, medians of triton.testing.do_bench, all in this run): forward and forward+backward of ours,
TFLA xl_chunk (mlstm_kernels 2.0.6, chunk 128) and FLA chunk_simple_gla (fla-core 0.6.0, contiguous
(B, T, H, D) inputs), peak activation memory of one forward+backward. Writes bench_mlstm.md / .json to --out.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

import flashxlstm.ops.mlstm_cell as M
from flashxlstm.ops.mlstm_cell.triton.function import Variant, mlstm_variant

DEV = "cuda"
SHAPES = [(8, 8, 8192, 256, 512), (8, 16, 8192, 128, 256), (8, 16, 4096, 128, 128), (4, 16, 16384, 128, 128),
          (1, 8, 8192, 256, 512)]
LOG: list[str] = []
ROWS: list[dict] = []
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def say(msg: str) -> None:
    print(msg, flush=True)
    LOG.append(msg)


def bench(fn, rep=100) -> float:
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(B, NH, T, DQK, DV, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    q = torch.randn(B, NH, T, DQK, device=DEV, generator=g).to(dtype)
    k = (torch.randn(B, NH, T, DQK, device=DEV, generator=g) / DQK**0.5).to(dtype)
    v = torch.randn(B, NH, T, DV, device=DEV, generator=g).to(dtype)
    i = torch.randn(B, NH, T, device=DEV, generator=g)
    f = 3.0 + torch.randn(B, NH, T, device=DEV, generator=g)
    return [q, k, v, i, f]


# ---------------------------------------------------------------- checks
def check_against_f64(shape, dtype, tol, chunk=64, heads=2, label="", variant=Variant()):
    """Ours on the full shape; the float64 chunkwise form on the first `heads` heads of batch 0."""
    ins = [t.requires_grad_(True) for t in inputs(*shape, dtype=dtype)]
    h, (C, n, m) = mlstm_variant(*ins, chunk_size=chunk, variant=variant)
    ref_ins = [t[:1, :heads].detach().double().requires_grad_(True) for t in ins]
    hr, (Cr, nr, mr) = M.mlstm(*ref_ins, backend="chunkwise", chunk_size=128)
    errs = {"h": rel(h[:1, :heads], hr), "C": rel(C[:1, :heads], Cr), "n": rel(n[:1, :heads], nr)}
    w = torch.randn_like(hr).to(dtype).double()  # representable in the input dtype: both sides see one dh
    wfull = torch.zeros_like(h, dtype=torch.float32)
    wfull[:1, :heads] = w.float()
    (h.float() * wfull).sum().backward()
    (hr * w).sum().backward()
    nan = bool(torch.isnan(h).any() or torch.isnan(C).any())
    for name, a, b in zip("qkvif", ins, ref_ins):
        nan |= bool(torch.isnan(a.grad).any())
        errs["d" + name] = rel(a.grad[:1, :heads], b.grad)
    worst = max(errs.values())
    ok = not nan and worst <= tol
    say(f"check {label} {shape} {str(dtype)[6:]} chunk {chunk}: worst {worst:.2e} (tol {tol:g}) nan={nan} "
        f"{'OK' if ok else 'FAIL'}  " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    return ok


def check_chunks_and_dtypes():
    ok = True
    for shape in [(1, 2, 256, 64, 128), (1, 2, 512, 256, 512)]:
        for chunk, dt in itertools.product((32, 64, 128, 256), ("fp32", "bf16", "fp16")):
            try:
                ok &= check_against_f64(shape, DTYPES[dt], 1e-3 if dt == "fp32" else 1e-2, chunk=chunk, label="chunk")
            except Exception as e:
                ok = False
                say(f"check chunk {shape} {dt} chunk {chunk}: FAIL {type(e).__name__}: {str(e)[:300]}")
    return ok


def check_no_crash(deadline):
    """Every chunk_size x dtype x head dims: forward + backward run without error or NaN, or raise ValueError."""
    ok, ran, refused = True, 0, 0
    heads = [(16, 16), (64, 128), (96, 192), (128, 256), (256, 512), (512, 512)]
    for (DQK, DV), dt, chunk in itertools.product(heads, ("fp32", "bf16", "fp16"), (16, 32, 64, 128, 256)):
        for varlen in (False, True):
            if time.time() > deadline:
                say(f"no-crash sweep: budget spent at {DQK}x{DV} {dt} chunk {chunk}")
                return ok
            S = 200
            ins = [t.requires_grad_(True) for t in inputs(1, 2, S, DQK, DV, dtype=DTYPES[dt])]
            cu = torch.tensor([0, 77, S], dtype=torch.int32, device=DEV) if varlen else None
            try:
                h, (C, n, m) = mlstm_variant(*ins, chunk_size=chunk, cu_seqlens=cu)
                (h.float().sum() + C.sum()).backward()
                bad = [nm for nm, t in zip(("h", "C") + tuple("qkvif"), (h, C) + tuple(x.grad for x in ins))
                       if not torch.isfinite(t).all()]
                ran += 1
                if bad:
                    ok = False
                    say(f"no-crash {DQK}x{DV} {dt} chunk {chunk} varlen={varlen}: non-finite {bad} FAIL")
            except ValueError as e:
                refused += 1
                say(f"no-crash {DQK}x{DV} {dt} chunk {chunk} varlen={varlen}: ValueError {str(e)[:200]}")
            except Exception as e:
                ok = False
                say(f"no-crash {DQK}x{DV} {dt} chunk {chunk} varlen={varlen}: FAIL {type(e).__name__}: {str(e)[:300]}")
    say(f"no-crash sweep: {ran} combinations ran, {refused} refused with ValueError, {'OK' if ok else 'FAIL'}")
    return ok


def check_compile():
    """torch.compile around the op: same values and gradients as eager (the op graph-breaks or is traced)."""
    ins = inputs(2, 4, 512, 64, 128, dtype=torch.bfloat16)

    def loss(q, k, v, i, f):
        h, (C, n, m) = M.mlstm(q * 2, k, v, i, f, backend="triton")
        return h.float().sin().sum() + C.sum()

    outs = []
    for label, fn in (("eager", loss), ("compiled", torch.compile(loss)),
                      ("fullgraph", torch.compile(loss, fullgraph=True))):
        try:
            xs = [t.clone().requires_grad_(True) for t in ins]
            out = fn(*xs)
            out.backward()
            outs.append((label, [out.detach()] + [x.grad for x in xs]))
        except Exception as e:
            say(f"check compile {label}: FAIL {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    ok = True
    for label, vals in outs[1:]:
        e = max(rel(a, b) for a, b in zip(vals, outs[0][1]))
        ok &= e <= 1e-3
        say(f"check compile {label} vs eager: worst rel diff {e:.1e} {'OK' if e <= 1e-3 else 'FAIL'}")
    return ok and len(outs) >= 2


def check_varlen():
    lens = [1000, 37, 2500, 463]
    S, NH, DQK, DV = sum(lens), 4, 128, 128
    ins = [t.requires_grad_(True) for t in inputs(1, NH, S, DQK, DV, torch.bfloat16)]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=DEV)
    st = tuple(torch.randn(len(lens), NH, *s, device=DEV) * 0.1 for s in ((DQK, DV), (DQK,), ()))
    h, (C, n, m) = M.mlstm(*ins, state=st, backend="triton", cu_seqlens=cu)
    h.float().square().sum().backward()
    errs = []
    for d, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        one = [t.detach()[:, :, a:b].clone().requires_grad_(True) for t in ins]
        hd, (Cd, nd, md) = mlstm_variant(*one, state=tuple(s[d:d + 1] for s in st))
        hd.float().square().sum().backward()
        errs += [rel(h[:, :, a:b], hd), rel(C[d:d + 1], Cd), rel(m[d:d + 1], md)]
        errs += [rel(x.grad[:, :, a:b], y.grad) for x, y in zip(ins, one)]
    ok = max(errs) <= 1e-2
    say(f"check varlen docs {lens}: worst rel err vs each document alone {max(errs):.2e} {'OK' if ok else 'FAIL'}")
    return ok


def check_step():
    ok = True
    for B in (1, 64):
        NH, DQK, DV = 8, 256, 512
        q, k = (torch.randn(B, NH, DQK, device=DEV, dtype=torch.bfloat16) for _ in range(2))
        v = torch.randn(B, NH, DV, device=DEV, dtype=torch.bfloat16)
        i, f = torch.randn(B, NH, device=DEV), torch.randn(B, NH, device=DEV) + 3
        st = (torch.randn(B, NH, DQK, DV, device=DEV), torch.randn(B, NH, DQK, device=DEV), torch.randn(B, NH, device=DEV))
        h, (C, n, m) = M.mlstm_step(q, k, v, i, f, state=st, backend="triton")
        hr, (Cr, nr, mr) = M.mlstm_step(*(t.double() for t in (q, k, v, i, f)), state=tuple(s.double() for s in st),
                                        backend="torch")
        e = max(rel(h, hr), rel(C, Cr), rel(n, nr), rel(m, mr))
        ok &= e <= 1e-2
        say(f"check step B={B}: worst rel err {e:.2e} {'OK' if e <= 1e-2 else 'FAIL'}")
    return ok


# ---------------------------------------------------------------- timings
def peak_activation(go):
    torch.cuda.synchronize()
    go()  # grads allocated once, like the timed loop
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    go()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def time_seq(name, fn, shape, make_inputs=inputs, backward=True):
    try:
        ins = make_inputs(*shape)
        with torch.no_grad():
            ms = bench(lambda: fn(*ins))
        ROWS.append(dict(kernel=name, shape=shape, mode="fw", ms=ms))
        say(f"{name:24s} {str(shape):26s} fw   {ms:8.3f} ms")
    except Exception as e:  # a peer that fails is reported, not fatal
        say(f"FAIL {name} {shape} fw: {type(e).__name__}: {str(e)[:300]}")
    if not backward:
        return
    try:
        ins = [t.requires_grad_(True) for t in make_inputs(*shape)]

        def go():
            out = fn(*ins)
            out = out[0] if isinstance(out, tuple) else out
            out.backward(torch.ones_like(out))
        mem = peak_activation(go)
        ms = bench(go)
        ROWS.append(dict(kernel=name, shape=shape, mode="fwbw", ms=ms, mem_gb=mem))
        say(f"{name:24s} {str(shape):26s} fwbw {ms:8.3f} ms  peak act {mem:.2f} GB")
    except Exception as e:
        say(f"FAIL {name} {shape} fwbw: {type(e).__name__}: {str(e)[:300]}")
    torch.cuda.empty_cache()


def fla_inputs(B, NH, T, DQK, DV):
    q = torch.randn(B, T, NH, DQK, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(B, T, NH, DQK, device=DEV, dtype=torch.bfloat16) / DQK**0.5
    v = torch.randn(B, T, NH, DV, device=DEV, dtype=torch.bfloat16)
    g = F.logsigmoid(3 + torch.randn(B, T, NH, device=DEV))
    return [q, k, v, g]


# ---------------------------------------------------------------- report
def versions():
    from importlib.metadata import version
    out = {"gpu": torch.cuda.get_device_name(), "python": platform.python_version(), "torch": torch.__version__,
           "triton": triton.__version__, "commit": os.environ.get("FLASHXLSTM_COMMIT", "unknown")}
    for dist in ("mlstm-kernels", "fla-core"):
        try:
            out[dist] = version(dist)
        except Exception:
            out[dist] = "missing"
    return out


def write_report(out_dir, info, checks_ok):
    def ms(kernel, shape, mode):
        return next((r for r in ROWS if r["kernel"] == kernel and r["shape"] == shape and r["mode"] == mode), None)

    lines = ["# mLSTM kernels on one GPU (benchmarks/bench_mlstm.py)", "",
             f"Command: `{' '.join(['python'] + sys.argv)}`  ",
             f"Commit {info['commit']}; {info['gpu']}; " + ", ".join(f"{k} {v}" for k, v in info.items()
                                                                 if k not in ("gpu", "commit")) + "  ",
             "bf16 inputs, fp32 gates, medians of triton.testing.do_bench, all in one run. Ratios: ours / peer time "
             "(below 1: ours faster). Peak act: peak memory of one forward+backward above the inputs and their grads. "
             f"Checks before the timings: {'all passed' if checks_ok else 'SOME FAILED (see the log)'}.", "",
             "| shape (B, NH, T, DQK, DV) | fw ours ms | fw TFLA | fw FLA | fw / TFLA | fw / FLA | fwbw ours | "
             "fwbw TFLA | fwbw FLA | fwbw / TFLA | act GB ours / TFLA |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = {"fw / TFLA": [], "fw / FLA": [], "fwbw / TFLA": []}
    for shape in dict.fromkeys(r["shape"] for r in ROWS):
        get = {(k, mo): ms(k, shape, mo) for k in ("ours", "TFLA xl_chunk", "FLA chunk_simple_gla")
               for mo in ("fw", "fwbw")}
        t = lambda k, mo: get[(k, mo)]["ms"] if get[(k, mo)] else None
        f = lambda x: "" if x is None else f"{x:.3f}"
        r = lambda a, b: None if a is None or b is None else a / b
        fr = lambda x: "" if x is None else f"{x:.2f}"
        a, b, c = r(t("ours", "fw"), t("TFLA xl_chunk", "fw")), r(t("ours", "fw"), t("FLA chunk_simple_gla", "fw")), \
            r(t("ours", "fwbw"), t("TFLA xl_chunk", "fwbw"))
        for key, val in zip(ratios, (a, b, c)):
            if val is not None:
                ratios[key].append((val, shape))
        mem = lambda k: get[(k, "fwbw")]["mem_gb"] if get[(k, "fwbw")] else None
        lines.append(f"| {shape} | {f(t('ours', 'fw'))} | {f(t('TFLA xl_chunk', 'fw'))} | "
                     f"{f(t('FLA chunk_simple_gla', 'fw'))} | {fr(a)} | {fr(b)} | {f(t('ours', 'fwbw'))} | "
                     f"{f(t('TFLA xl_chunk', 'fwbw'))} | {f(t('FLA chunk_simple_gla', 'fwbw'))} | {fr(c)} | "
                     f"{fr(mem('ours'))} / {fr(mem('TFLA xl_chunk'))} |")
    lines.append("")
    for key, vals in ratios.items():
        if vals:
            best, worst = min(vals), max(vals)
            lines.append(f"- {key}: best {best[0]:.2f} at {best[1]}, worst {worst[0]:.2f} at {worst[1]}")
    lines += ["", "Log:", "", "```"] + LOG + ["```", ""]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench_mlstm.md"), "w") as fh:
        fh.write("\n".join(lines))
    with open(os.path.join(out_dir, "bench_mlstm.json"), "w") as fh:
        json.dump(dict(info=info, checks_ok=checks_ok, rows=ROWS, log=LOG), fh, indent=1, default=str)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip what would start after this many seconds")
    ap.add_argument("--crash-budget-s", type=float, default=240, help="seconds for the no-crash sweep")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--shapes", default=None, help="indices into the shape list to time, e.g. 0,4")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_mlstm.py needs a CUDA GPU")
    t0 = time.time()
    deadline = t0 + args.budget_s
    info = versions()
    say(str(info))
    shapes = SHAPES if not args.shapes else [SHAPES[int(j)] for j in args.shapes.split(",")]
    ok = True
    if not args.skip_checks:
        for shape in shapes:
            ok &= check_against_f64(shape, torch.bfloat16, 1e-2, label="timed")
        ok &= check_chunks_and_dtypes()
        ok &= check_varlen()
        ok &= check_step()
        ok &= check_compile()
        ok &= check_no_crash(min(deadline, time.time() + args.crash_budget_s))
        say(f"checks {'PASSED' if ok else 'FAILED'} in {time.time() - t0:.0f} s")
    write_report(args.out, info, ok)
    from mlstm_kernels.torch import get_mlstm_kernel
    xl = get_mlstm_kernel("chunkwise--triton_xl_chunk")
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError as e:
        chunk_simple_gla = None
        say(f"FAIL fla import: {e}")
    for shape in shapes:
        if time.time() > deadline:
            say(f"budget spent: {shape} not timed")
            continue
        time_seq("ours", lambda q, k, v, i, f: M.mlstm(q, k, v, i, f, backend="triton")[0], shape)
        time_seq("TFLA xl_chunk", lambda q, k, v, i, f: xl(q, k, v, i, f, chunk_size=128), shape)
        if chunk_simple_gla is not None:
            time_seq("FLA chunk_simple_gla", lambda q, k, v, g: chunk_simple_gla(q, k, v, g)[0], shape,
                     make_inputs=fla_inputs)
        write_report(args.out, info, ok)
    say(f"done in {time.time() - t0:.0f} s")
    write_report(args.out, info, ok)


if __name__ == "__main__":
    main()
