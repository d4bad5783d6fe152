"""mLSTM kernels on one GPU: check ours against float64 everywhere it must run, then time ours and the peers.

    python benchmarks/bench_mlstm.py [--out DIR] [--budget-s S] [--check-budget-s S] [--workers N]
                                     [--shapes 0,4] [--skip-checks] [--sweep] [--profile]
    python benchmarks/bench_mlstm.py --checks-only small [--out DIR] [--check-budget-s S] [--crash-budget-s S]

Checks (in --workers child processes at once, since Triton's compilation of the many launch settings, not
the GPU, takes their time; the kernels they compile land in Triton's disk cache for the timings): the
Triton backend against the float64 torch chunkwise form, forward and gradients of q, k, v, i, f (the first
two heads of batch 0), on
- every timed shape x fp32 / bf16 / fp16 x chunk_size 32, 64, 128, 256 (fp32 <= 1e-3, 16-bit <= 1e-2);
- chunk_size 32..256 x the three dtypes at (1, 2, 256, 64, 128), which ran out of shared memory in fp32 at
  chunk 128 before launch plans;
- packed documents (cu_seqlens) with initial states, against float64 and against each document alone:
  short documents, and long ones whose backward time windows end inside documents;
- the decode step; torch.compile of a function calling the op (compiled == eager);
- "no crash anywhere": chunk_size 16..256 x the three dtypes x head dims up to 512, forward and backward,
  with and without cu_seqlens: every combination runs (no error, no NaN) or raises ValueError.
The compilations the timings need (peers, --sweep variants) run after the checks, in their own budget
(--warm-budget-s), so they never take time from the checks. `--checks-only small` runs only the
(1, 2, 256, 64, 128) grid and then as much of the no-crash sweep as --crash-budget-s allows, with no peers
and no timings (`--checks-only all`: every check, no timings). With BENCH_MLSTM_DEVICE=cpu and
TRITON_INTERPRET=1 the checks run on the CPU interpreter (only to test the script).
Timings (bf16, medians of triton.testing.do_bench, all in this run, after the checks): forward and
forward+backward of ours, TFLA xl_chunk (mlstm_kernels 2.0.6, chunk 128) and FLA chunk_simple_gla (fla-core,
contiguous (B, T, H, D) inputs), peak activation memory of one forward+backward. --sweep also times launch
variants of ours (Variant.cp overrides, window lengths); --profile prints the GPU time per kernel of one
forward and one forward+backward. Writes bench_mlstm.md / .json to --out after every step, so a run cut
short still leaves its partial tables.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import json
import multiprocessing as mp
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

DEV = os.environ.get("BENCH_MLSTM_DEVICE", "cuda")  # "cpu" (with TRITON_INTERPRET=1) only to test the script
SMALL_SHAPE = (1, 2, 256, 64, 128)  # fp32 at chunk 128 ran out of shared memory here before launch plans
SHAPES = [(8, 8, 8192, 256, 512), (8, 16, 8192, 128, 256), (8, 16, 4096, 128, 128), (4, 16, 16384, 128, 128),
          (1, 8, 8192, 256, 512)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHUNKS = (32, 64, 128, 256)
LOG: list[str] = []
ROWS: list[dict] = []
# forward launch variants for --sweep (launch_plan keys; the defaults are the first row)
SWEEP_FW = [(), (("stages_o", 2),), (("BV_o", 64), ("warps_o", 4)), (("BK_o", 128),), (("warps_o", 4),),
            (("maxnreg_s", None),), (("warps_s", 8),), (("BV_s", 128), ("warps_s", 8)), (("stages_s", 2),),
            (("L", 32),), (("desc", True),), (("maxnreg_o", None),)]
SWEEP_WINDOWS = [2048, 4096, 8192]


def say(msg: str) -> None:
    print(msg, flush=True)
    LOG.append(msg)


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


# ---------------------------------------------------------------- checks (each runs in a child process)
def check_against_f64(shape, dt, chunk=64, heads=2, label="", cp=()):
    """Ours on the full shape; the float64 chunkwise form on the first `heads` heads of batch 0."""
    import flashxlstm.ops.mlstm_cell as M
    from flashxlstm.ops.mlstm_cell.triton.function import Variant, mlstm_variant
    dtype, tol = DTYPES[dt], (1e-3 if dt == "fp32" else 1e-2)
    ins = [t.requires_grad_(True) for t in inputs(*shape, dtype=dtype)]
    h, (C, n, m) = mlstm_variant(*ins, chunk_size=chunk, variant=Variant(cp=tuple(cp)))
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
    return ok, (f"check {label} {shape} {dt} chunk {chunk}: worst {worst:.2e} (tol {tol:g}) nan={nan} "
                f"{'OK' if ok else 'FAIL'}  " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))


def check_varlen(lens, dt, NH=4, DQK=128, DV=128, chunk=64, cp=()):
    """Packed documents with initial states: against the float64 chunkwise form (per document) with the same
    cu_seqlens, and against each document run alone through the op, forward and every gradient. cp: launch
    plan overrides for the packed call."""
    import functools

    import flashxlstm.ops.mlstm_cell as M
    from flashxlstm.ops.mlstm_cell.triton.function import Variant, mlstm_variant
    dtype, tol = DTYPES[dt], (1e-3 if dt == "fp32" else 1e-2)
    S = sum(lens)
    ins = [t.requires_grad_(True) for t in inputs(1, NH, S, DQK, DV, dtype, seed=3)]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=DEV)
    st = [(torch.randn(len(lens), NH, *s, device=DEV) * 0.1).requires_grad_(True) for s in ((DQK, DV), (DQK,), ())]
    packed = functools.partial(mlstm_variant, variant=Variant(cp=tuple(cp)))
    h, (C, n, m) = packed(*ins, state=tuple(st), cu_seqlens=cu, chunk_size=chunk)
    wh = torch.randn_like(h, dtype=torch.float32).to(dtype).float()
    wC = torch.randn_like(C)
    ((h.float() * wh).sum() + (C * wC).sum()).backward()
    rins = [t.detach().double().requires_grad_(True) for t in ins]
    rst = [s.detach().double().requires_grad_(True) for s in st]
    hr, (Cr, nr, mr) = M.mlstm(*rins, state=tuple(rst), backend="chunkwise", cu_seqlens=cu, chunk_size=128)
    ((hr * wh.double()).sum() + (Cr * wC.double()).sum()).backward()
    errs = {"h": rel(h, hr), "C": rel(C, Cr), "m": rel(m, mr)}
    errs.update({"d" + nm: rel(a.grad, b.grad) for nm, a, b in zip(("q", "k", "v", "i", "f", "C0", "n0", "m0"),
                                                                  ins + st, rins + rst)})
    alone = []
    for d, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        one = [t.detach()[:, :, a:b].clone().requires_grad_(True) for t in ins]
        hd, (Cd, nd, md) = M.mlstm(*one, state=tuple(s.detach()[d:d + 1] for s in st), backend="triton",
                                   chunk_size=chunk)
        ((hd.float() * wh[:, :, a:b]).sum() + (Cd * wC[d:d + 1]).sum()).backward()
        alone += [rel(h[:, :, a:b], hd), rel(C[d:d + 1], Cd)] + [rel(x.grad[:, :, a:b], y.grad) for x, y in zip(ins, one)]
    nan = any(bool(torch.isnan(t).any()) for t in [h, C] + [x.grad for x in ins])
    worst = max(errs.values())
    ok = not nan and worst <= tol and max(alone) <= tol
    return ok, (f"check varlen {dt} docs {lens} chunk {chunk} {dict(cp)}: vs float64 worst {worst:.2e}, vs each document alone "
                f"{max(alone):.2e} (tol {tol:g}) nan={nan} {'OK' if ok else 'FAIL'}  "
                + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))


def check_step():
    import flashxlstm.ops.mlstm_cell as M
    ok, out = True, []
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
        out.append(f"check step B={B}: worst rel err {e:.2e} {'OK' if e <= 1e-2 else 'FAIL'}")
    return ok, "\n".join(out)


def check_compile():
    """torch.compile around the op: same values and gradients as eager."""
    import flashxlstm.ops.mlstm_cell as M
    ins = inputs(2, 4, 512, 64, 128, dtype=torch.bfloat16)

    def loss(q, k, v, i, f):
        h, (C, n, m) = M.mlstm(q * 2, k, v, i, f, backend="triton")
        return h.float().sin().sum() + C.sum()

    outs, lines = [], []
    for label, fn in (("eager", loss), ("compiled", torch.compile(loss)),
                      ("fullgraph", torch.compile(loss, fullgraph=True))):
        try:
            xs = [t.clone().requires_grad_(True) for t in ins]
            out = fn(*xs)
            out.backward()
            outs.append((label, [out.detach()] + [x.grad for x in xs]))
        except Exception as e:
            lines.append(f"check compile {label}: FAIL {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    ok = len(outs) == 3
    for label, vals in outs[1:]:
        e = max(rel(a, b) for a, b in zip(vals, outs[0][1]))
        ok &= e <= 1e-3
        lines.append(f"check compile {label} vs eager: worst rel diff {e:.1e} {'OK' if e <= 1e-3 else 'FAIL'}")
    return ok, "\n".join(lines)


NO_CRASH_HEADS = [(16, 16), (64, 128), (96, 192), (128, 256), (256, 512), (512, 512)]


def check_no_crash(budget_s, heads):
    """Every chunk_size x dtype for head dims `heads`: forward + backward run without error or NaN, or raise
    ValueError (one job per head dims, so that their compilations run in parallel). When the budget runs out the
    job stops and says how far it got ("budget spent"): the rest is not run, which the summary reports apart
    from failures."""
    import flashxlstm.ops.mlstm_cell as M
    deadline = time.time() + budget_s
    ok, ran, refused, lines = True, 0, 0, []
    for (DQK, DV), dt, chunk in itertools.product([heads], ("fp32", "bf16", "fp16"), (16, 32, 64, 128, 256)):
        for varlen in (False, True):
            if time.time() > deadline:
                lines.append(f"no-crash {heads}: budget spent at {dt} chunk {chunk} varlen={varlen} ({ran} ran, "
                             f"{refused} refused, {'no failure' if ok else 'FAIL'} so far; the rest not run)")
                return ok, "\n".join(lines)
            S = 200
            ins = [t.requires_grad_(True) for t in inputs(1, 2, S, DQK, DV, dtype=DTYPES[dt])]
            cu = torch.tensor([0, 77, S], dtype=torch.int32, device=DEV) if varlen else None
            try:
                h, (C, n, m) = M.mlstm(*ins, backend="triton", chunk_size=chunk, cu_seqlens=cu)
                (h.float().sum() + C.sum()).backward()
                bad = [nm for nm, t in zip(("h", "C") + tuple("qkvif"), (h, C) + tuple(x.grad for x in ins))
                       if not torch.isfinite(t).all()]
                ran += 1
                if bad:
                    ok = False
                    lines.append(f"no-crash {DQK}x{DV} {dt} chunk {chunk} varlen={varlen}: non-finite {bad} FAIL")
            except ValueError as e:
                refused += 1
                lines.append(f"no-crash {DQK}x{DV} {dt} chunk {chunk} varlen={varlen}: ValueError {str(e)[:200]}")
            except Exception as e:
                ok = False
                lines.append(f"no-crash {DQK}x{DV} {dt} chunk {chunk} varlen={varlen}: FAIL {type(e).__name__}: "
                             f"{str(e)[:300]}")
    lines.append(f"no-crash {heads}: all {ran + refused} combinations: {ran} ran, {refused} refused with ValueError, "
                 f"{'OK' if ok else 'FAIL'}")
    return ok, "\n".join(lines)


def warm_peers(shape):
    """Compile the peers' kernels for `shape` into Triton's disk cache (not a check: never fails the run)."""
    t0 = time.time()
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
        xl = get_mlstm_kernel("chunkwise--triton_xl_chunk")
        ins = [t.requires_grad_(True) for t in inputs(*shape)]
        xl(*ins, chunk_size=128)[0].float().sum().backward()
        from fla.ops.simple_gla import chunk_simple_gla
        with torch.no_grad():
            chunk_simple_gla(*fla_inputs(*shape))
        return True, f"warm peers {shape}: {time.time() - t0:.0f} s"
    except Exception as e:
        return True, f"warm peers {shape}: {type(e).__name__}: {str(e)[:200]}"


def warm_ours(shape, cp):
    """Compile a launch variant of ours for `shape` (forward) into Triton's disk cache."""
    from flashxlstm.ops.mlstm_cell.triton.function import Variant, mlstm_variant
    t0 = time.time()
    with torch.no_grad():
        mlstm_variant(*inputs(*shape), variant=Variant(cp=tuple(cp)))
    return True, f"warm ours {cp} {shape}: {time.time() - t0:.0f} s"


def _job(name, args):
    """Run one check in a child process; (ok, text). Exceptions are failures, reported with their message."""
    try:
        return globals()[name](*args)
    except Exception as e:
        return False, f"check {name}{args}: FAIL {type(e).__name__}: {str(e)[:400]}"
    finally:  # a check that broke the CUDA context must not take the whole pool down with it
        try:
            torch.cuda.empty_cache()
        except Exception:
            pass


def warm_jobs(shapes, sweep_shapes=()):
    """The compilations the timings will need (peers, sweep variants): not checks, they never fail the run."""
    jobs = [("warm_peers", (shape,)) for shape in shapes]
    return jobs + [("warm_ours", (shape, cp)) for shape in sweep_shapes for cp in SWEEP_FW[1:]]


def small_jobs(only: str | None = None):
    """The (1, 2, 256, 64, 128) grid: chunk 32..256 x fp32 / bf16 / fp16 (only: "fp32:128,fp32:256" picks cases)."""
    pick = None if not only else {tuple(c.split(":")) for c in only.split(",")}
    return [("check_against_f64", (SMALL_SHAPE, dt, chunk, 2, "small")) for dt in DTYPES for chunk in CHUNKS
            if pick is None or (dt, str(chunk)) in pick]


def check_jobs(shapes, crash_budget_s):
    """Every check of the full run: the small grid first (cheap, and it must never be left out), the no-crash
    sweep (long jobs with their own budget, started early), then the decode step, compile, packed documents and
    the timed shapes."""
    jobs = small_jobs() + [("check_no_crash", (crash_budget_s, heads)) for heads in NO_CRASH_HEADS]
    jobs += [("check_compile", ()), ("check_step", ())]
    jobs += [("check_varlen", (lens, dt)) for lens in ([1000, 37, 2500, 463], [5000, 3, 3189, 1]) for dt in ("bf16", "fp32")]
    for shape in shapes:  # bf16 at the default chunk first: these are the timed settings
        jobs.append(("check_against_f64", (shape, "bf16", 64, 2, "timed")))
    for shape, dt, chunk in itertools.product(shapes, DTYPES, CHUNKS):
        if not (dt == "bf16" and chunk == 64):
            jobs.append(("check_against_f64", (shape, dt, chunk, 2, "chunk")))
    return jobs


def run_checks(jobs, workers, budget_s, on_result):
    """Run the check jobs in `workers` spawned processes; stop waiting after budget_s (what did not finish is
    reported as not run, and counts as a failure)."""
    ok, pending = True, {}
    ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    for name, args in jobs:
        pending[ex.submit(_job, name, args)] = (name, args)
    deadline = time.time() + budget_s
    try:
        for fut in cf.as_completed(pending, timeout=max(1.0, deadline - time.time())):
            good, text = fut.result()
            ok &= good
            for line in text.splitlines():
                say(line)
            on_result()
    except cf.TimeoutError:
        left = [pending[f] for f in pending if not f.done()]
        say(f"check budget of {budget_s:.0f} s spent: {len(left)} checks not run: {left[:6]}...")
        ok = False
    for p in list(getattr(ex, "_processes", {}).values()):  # stop workers still compiling
        p.terminate()
    ex.shutdown(wait=False, cancel_futures=True)
    return ok


def summary(passed: bool) -> str:
    """One line: did every check that ran pass, and what was not run (a budget spent)."""
    import re
    fails = [ln for ln in LOG if "FAIL" in ln and "no failure" not in ln]
    not_run = [int(m.group(1)) for ln in LOG if (m := re.match(r"check budget of .* spent: (\d+) checks not run", ln))]
    partial = [ln for ln in LOG if ln.startswith("no-crash") and "budget spent" in ln]
    if fails or (not passed and not not_run):
        head = f"checks: SOME FAILED ({len(fails)} lines with FAIL in the log)"
    elif not_run or partial:
        head = "checks: all that ran passed"
    else:
        return "checks: all passed"
    if not_run:
        head += f"; {not_run[0]} checks not run (check budget spent)"
    if partial:
        head += f"; no-crash sweep partial in {len(partial)} of {len(NO_CRASH_HEADS)} head-dim jobs (crash budget spent)"
    return head


# ---------------------------------------------------------------- timings
def bench(fn, rep=100) -> float:
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def peak_activation(go):
    torch.cuda.synchronize()
    go()  # grads allocated once, like the timed loop
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    go()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def time_seq(name, fn, shape, make_inputs=inputs, backward=True, forward=True):
    if forward:
        try:
            ins = make_inputs(*shape)
            with torch.no_grad():
                ms = bench(lambda: fn(*ins))
            ROWS.append(dict(kernel=name, shape=shape, mode="fw", ms=ms))
            say(f"{name:28s} {str(shape):26s} fw   {ms:8.3f} ms")
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
        say(f"{name:28s} {str(shape):26s} fwbw {ms:8.3f} ms  peak act {mem:.2f} GB")
    except Exception as e:
        say(f"FAIL {name} {shape} fwbw: {type(e).__name__}: {str(e)[:300]}")
    torch.cuda.empty_cache()


def fla_inputs(B, NH, T, DQK, DV):
    q = torch.randn(B, T, NH, DQK, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(B, T, NH, DQK, device=DEV, dtype=torch.bfloat16) / DQK**0.5
    v = torch.randn(B, T, NH, DV, device=DEV, dtype=torch.bfloat16)
    g = F.logsigmoid(3 + torch.randn(B, T, NH, device=DEV))
    return [q, k, v, g]


def profile(shape):
    """GPU time per kernel of one forward and one forward+backward of ours (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    import flashxlstm.ops.mlstm_cell as M
    ins = [t.requires_grad_(True) for t in inputs(*shape)]
    for mode in ("fw", "fwbw"):
        def go():
            if mode == "fw":
                with torch.no_grad():
                    M.mlstm(*ins, backend="triton")
            else:
                h = M.mlstm(*ins, backend="triton")[0]
                h.backward(torch.ones_like(h))
        go()
        torch.cuda.synchronize()
        with prof(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
            for _ in range(3):
                go()
            torch.cuda.synchronize()
        per = {}
        for ev in p.key_averages():
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if t and ev.key and not ev.key.startswith(("aten::", "autograd", "cuda", "Memcpy", "ProfilerStep")):
                per[ev.key] = (t / 3 / 1000, ev.count // 3)
        total = sum(t for t, _ in per.values())
        say(f"profile {shape} {mode}: GPU kernel time {total:.3f} ms per call")
        for key, (t, c) in sorted(per.items(), key=lambda kv: -kv[1][0])[:12]:
            say(f"    {t:8.3f} ms  x{c:<3d} {key[:90]}")


# ---------------------------------------------------------------- report
def versions():
    import triton
    from importlib.metadata import version
    gpu = torch.cuda.get_device_name() if DEV == "cuda" else f"{DEV} (Triton interpreter: {os.environ.get('TRITON_INTERPRET') == '1'})"
    out = {"gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
           "triton": triton.__version__, "commit": os.environ.get("FLASHXLSTM_COMMIT", "unknown")}
    for dist in ("mlstm-kernels", "fla-core"):
        try:
            out[dist] = version(dist)
        except Exception:
            out[dist] = "missing"
    return out


def write_report(out_dir, info, checks_ok):
    def get(kernel, shape, mode):
        return next((r for r in ROWS if r["kernel"] == kernel and r["shape"] == shape and r["mode"] == mode), None)

    lines = ["# mLSTM kernels on one GPU (benchmarks/bench_mlstm.py)", "",
             f"Command: `{' '.join(['python'] + sys.argv)}`  ",
             f"Commit {info['commit']}; {info['gpu']}; " + ", ".join(f"{k} {v}" for k, v in info.items()
                                                                 if k not in ("gpu", "commit")) + "  ",
             "bf16 inputs, fp32 gates, medians of triton.testing.do_bench, all in one run. Ratios: ours / peer time "
             "(below 1: ours faster). Peak act: peak memory of one forward+backward above the inputs and their grads. "
             f"Checks before the timings: {checks_ok}.", "",
             "| shape (B, NH, T, DQK, DV) | fw ours ms | fw TFLA | fw FLA | fw / TFLA | fw / FLA | fwbw ours | "
             "fwbw TFLA | fwbw / TFLA | act GB ours / TFLA |", "|---|---|---|---|---|---|---|---|---|---|"]
    ratios = {"fw / TFLA": [], "fw / FLA": [], "fwbw / TFLA": [], "act ours / TFLA": []}
    for shape in dict.fromkeys(r["shape"] for r in ROWS if r["kernel"] == "ours"):
        t = lambda k, mo: (get(k, shape, mo) or {}).get("ms")
        mem = lambda k: (get(k, shape, "fwbw") or {}).get("mem_gb")
        f = lambda x: "" if x is None else f"{x:.3f}"
        r = lambda a, b: None if a is None or b is None else a / b
        fr = lambda x: "" if x is None else f"{x:.2f}"
        vals = (r(t("ours", "fw"), t("TFLA xl_chunk", "fw")), r(t("ours", "fw"), t("FLA chunk_simple_gla", "fw")),
                r(t("ours", "fwbw"), t("TFLA xl_chunk", "fwbw")), r(mem("ours"), mem("TFLA xl_chunk")))
        for key, val in zip(ratios, vals):
            if val is not None:
                ratios[key].append((val, shape))
        lines.append(f"| {shape} | {f(t('ours', 'fw'))} | {f(t('TFLA xl_chunk', 'fw'))} | "
                     f"{f(t('FLA chunk_simple_gla', 'fw'))} | {fr(vals[0])} | {fr(vals[1])} | {f(t('ours', 'fwbw'))} | "
                     f"{f(t('TFLA xl_chunk', 'fwbw'))} | {fr(vals[2])} | {fr(mem('ours'))} / {fr(mem('TFLA xl_chunk'))} |")
    lines.append("")
    for key, vals in ratios.items():
        if vals:
            best, worst = min(vals), max(vals)
            lines.append(f"- {key}: best {best[0]:.2f} at {best[1]}, worst {worst[0]:.2f} at {worst[1]}")
    sweep = [r for r in ROWS if r["kernel"].startswith("ours ")]
    if sweep:
        lines += ["", "Launch variants of ours (ms):", "", "| variant | mode | " + " | ".join(
            str(s) for s in dict.fromkeys(r["shape"] for r in sweep)) + " |"]
        shapes = list(dict.fromkeys(r["shape"] for r in sweep))
        lines.append("|---|---|" + "---|" * len(shapes))
        for kern, mode in dict.fromkeys((r["kernel"], r["mode"]) for r in sweep):
            lines.append(f"| {kern} | {mode} | " + " | ".join(
                f"{(get(kern, s, mode) or {}).get('ms', float('nan')):.3f}" for s in shapes) + " |")
    lines += ["", "Log:", "", "```"] + LOG + ["```", ""]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench_mlstm.md"), "w") as fh:
        fh.write("\n".join(lines))
    with open(os.path.join(out_dir, "bench_mlstm.json"), "w") as fh:
        json.dump(dict(info=info, checks_ok=checks_ok, rows=ROWS, log=LOG), fh, indent=1, default=str)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip timings that would start after this many s")
    ap.add_argument("--check-budget-s", type=float, default=240, help="seconds for all checks together")
    ap.add_argument("--crash-budget-s", type=float, default=120, help="seconds for the no-crash sweep")
    ap.add_argument("--workers", type=int, default=12, help="child processes for the checks")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--checks-only", choices=("small", "all"), default=None,
                    help="run checks only (no peers, no warm-ups, no timings): 'small' = the (1, 2, 256, 64, 128) "
                         "grid, then the no-crash sweep within --crash-budget-s; 'all' = every check")
    ap.add_argument("--small", default=None, help="with --checks-only small: only these DTYPE:CHUNK cases, "
                                                   "e.g. fp32:128,fp32:256")
    ap.add_argument("--no-crash-jobs", type=int, default=len(NO_CRASH_HEADS),
                    help="with --checks-only small: how many head-dim jobs of the no-crash sweep to run")
    ap.add_argument("--warm-budget-s", type=float, default=150,
                    help="seconds for compiling the peers and sweep variants, after the checks")
    ap.add_argument("--sweep", action="store_true", help="also time launch variants of ours")
    ap.add_argument("--profile", action="store_true", help="also print GPU time per kernel (shapes 0 and 4)")
    ap.add_argument("--shapes", default=None, help="indices into the shape list to time, e.g. 0,4")
    ap.add_argument("--only-ours", action="store_true", help="time ours alone (no peers)")
    ap.add_argument("--quick", action="store_true",
                    help="in-process: packed-document checks (default and tensor-descriptor loads), then ours alone, "
                         "forward, default and with tensor-descriptor loads")
    ap.add_argument("--fw-only", action="store_true", help="time forwards only")
    args = ap.parse_args()
    if DEV == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_mlstm.py needs a CUDA GPU")
    if DEV != "cuda" and not args.checks_only:
        sys.exit("BENCH_MLSTM_DEVICE=cpu runs only --checks-only (the timings need a GPU)")
    t0 = time.time()
    deadline = t0 + args.budget_s
    info = versions()
    say(str(info))
    shapes = SHAPES if not args.shapes else [SHAPES[int(j)] for j in args.shapes.split(",")]
    ok = "not run"
    if args.checks_only:
        jobs = (small_jobs(args.small)
                + [("check_no_crash", (args.crash_budget_s, h)) for h in NO_CRASH_HEADS[: args.no_crash_jobs]]
                if args.checks_only == "small" else check_jobs(SHAPES, args.crash_budget_s))
        say(f"{len(jobs)} checks in {args.workers} processes, no timings")
        passed = run_checks(jobs, args.workers, args.check_budget_s, lambda: write_report(args.out, info, "running"))
        say(summary(passed))
        say(f"done in {time.time() - t0:.0f} s")
        write_report(args.out, info, summary(passed))
        return
    if args.quick:
        good = True
        for lens in ([1000, 37, 2500, 463], [5000, 3, 3189, 1]):
            for cp in ((), (("desc", True),)):
                passed, text = _job("check_varlen", (lens, "bf16", 4, 128, 128, 64, cp))
                good &= passed
                say(text)
        ok = "all passed (packed documents only)" if good else "SOME FAILED (see the log)"
        write_report(args.out, info, ok)
        from flashxlstm.ops.mlstm_cell.triton.function import Variant, mlstm_variant
        desc = Variant(cp=(("desc", True),))
        for shape in shapes:
            if time.time() > deadline:
                break
            time_seq("ours", lambda q, k, v, i, f: mlstm_variant(q, k, v, i, f)[0], shape, backward=False)
            time_seq("ours desc=True", lambda q, k, v, i, f: mlstm_variant(q, k, v, i, f, variant=desc)[0], shape,
                     backward=False)
            write_report(args.out, info, ok)
        say(f"done in {time.time() - t0:.0f} s")
        return
    sweep_shapes = [SHAPES[j] for j in (0, 3, 4)] if args.sweep else []
    if not args.skip_checks:
        jobs = check_jobs(SHAPES, args.crash_budget_s)
        say(f"{len(jobs)} checks in {args.workers} processes")
        passed = run_checks(jobs, args.workers, args.check_budget_s, lambda: write_report(args.out, info, "running"))
        ok = summary(passed)
        say(f"{ok} ({time.time() - t0:.0f} s)")
        write_report(args.out, info, ok)
    if not args.only_ours:  # compile what the timings need, after the checks (never a failure)
        warm = warm_jobs(shapes, sweep_shapes if not args.skip_checks else [])
        run_checks(warm, args.workers, args.warm_budget_s, lambda: None)
    write_report(args.out, info, ok)

    import flashxlstm.ops.mlstm_cell as M
    from flashxlstm.ops.mlstm_cell.triton.function import Variant, mlstm_variant
    xl = chunk_simple_gla = None
    if not args.only_ours:
        try:
            from mlstm_kernels.torch import get_mlstm_kernel
            xl = get_mlstm_kernel("chunkwise--triton_xl_chunk")
        except ImportError as e:
            say(f"FAIL mlstm_kernels import: {e}")
        try:
            from fla.ops.simple_gla import chunk_simple_gla
        except ImportError as e:
            say(f"FAIL fla import: {e}")
    for shape in shapes:
        if time.time() > deadline:
            say(f"budget spent: {shape} not timed")
            continue
        time_seq("ours", lambda q, k, v, i, f: M.mlstm(q, k, v, i, f, backend="triton")[0], shape,
                 backward=not args.fw_only)
        if xl is not None:
            time_seq("TFLA xl_chunk", lambda q, k, v, i, f: xl(q, k, v, i, f, chunk_size=128), shape,
                     backward=not args.fw_only)
        if chunk_simple_gla is not None:
            time_seq("FLA chunk_simple_gla", lambda q, k, v, g: chunk_simple_gla(q, k, v, g)[0], shape,
                     make_inputs=fla_inputs, backward=False)
        write_report(args.out, info, ok)
    if args.profile:
        for shape in (SHAPES[0], SHAPES[4]):
            if time.time() < deadline:
                profile(shape)
        write_report(args.out, info, ok)
    if args.sweep:
        for shape in [SHAPES[j] for j in (0, 3, 4)]:
            for cp in SWEEP_FW[1:]:
                if time.time() > deadline:
                    break
                name = "ours " + ",".join(f"{k}={v}" for k, v in cp)
                time_seq(name, lambda q, k, v, i, f, cp=cp: mlstm_variant(q, k, v, i, f, variant=Variant(cp=cp))[0],
                         shape, backward=False)
            for win in SWEEP_WINDOWS[1:]:
                if time.time() > deadline:
                    break
                time_seq(f"ours window {win}", lambda q, k, v, i, f, win=win: mlstm_variant(
                    q, k, v, i, f, variant=Variant(window_steps=win))[0], shape, forward=False)
            write_report(args.out, info, ok)
    say(f"done in {time.time() - t0:.0f} s")
    write_report(args.out, info, ok)


if __name__ == "__main__":
    main()
