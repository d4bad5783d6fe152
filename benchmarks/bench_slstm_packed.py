"""Packed documents through the sLSTM Triton kernels on one GPU: checks against float64, then timings.

    python benchmarks/bench_slstm_packed.py [--out DIR] [--budget-s S] [--T 8192] [--rows 16]

Checks (bf16 and fp32; heads 4 x 192, 1 x 768 and 8 x 64, i.e. a head split over programs that meet at a
barrier every step, and whole heads): documents of mixed lengths (one of a single step) packed with
`cu_seqlens`, each from its own random initial state, in one launch forward and one backward, against the
float64 recurrence run on each document alone: h, every final state and every gradient (x, R, b and the
four initial states). Tolerances: TOL below.
Timings (bf16 gates, do_bench medians, op level `flashxlstm.ops.slstm(backend="triton")`, forward and
forward+backward), for T tokens of documents of mixed lengths (about 128 tokens on average):
- packed into one row (1, T) with cu_seqlens: one pass of T sequential steps;
- the same documents in `--rows` rows of T / rows steps, every row starting a document (cu_seqlens over the
  flattened rows): one pass of T / rows steps with the rows side by side;
- each document alone, one call per document (what a per-document loop costs);
- the same tokens as `--rows` independent sequences without resets (the recurrence's batched speed).
Writes bench_slstm_packed.md / .json to --out after every part.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

DEV = os.environ.get("BENCH_SLSTM_DEVICE", "cuda")  # "cpu" (with TRITON_INTERPRET=1): the checks only, to test
LOG: list[str] = []
# Relative norm error vs float64 on the same rounded inputs. bf16: h, dx and dR come back in bf16, one
# rounding to nearest (at most 2^-8 relative per element, so in norm); the kernel's own error is fp32-level
# (its recurrent products take h and the gate gradients as hi + lo bf16 pairs: a float64 emulation of its
# rounding points gives ~1e-6), allowed the fp32 tolerance on top.
TOL = {torch.bfloat16: 2.0**-8 + 1e-4, torch.float32: 1e-4}
ROWS: list[dict] = []


def say(msg: str) -> None:
    print(msg, flush=True)
    LOG.append(msg)


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def lengths(total: int, n: int, gen: torch.Generator) -> list[int]:
    """n document lengths >= 1 summing to total, mixed sizes, one of them a single step."""
    cuts = sorted(torch.randperm(total - 1, generator=gen)[: n - 1].add(1).tolist())
    lens = [b - a for a, b in zip([0, *cuts], [*cuts, total])]
    if 1 not in lens and n > 2:
        j = max(range(n), key=lambda k: lens[k])
        lens[j] -= 1
        lens.insert(1, 1)
    return lens


def row_lengths(rows: int, per_row: int, gen: torch.Generator) -> list[int]:
    """Documents filling `rows` rows of per_row steps exactly (every row starts a document)."""
    out = []
    for _ in range(rows):
        out += lengths(per_row, max(2, per_row // 128), gen)
    return out


def offsets(lens, device) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=device, dtype=torch.int32)


def check(NH: int, DH: int, dtype: torch.dtype, lens: list[int], rows: int = 1) -> tuple[bool, str]:
    from flashxlstm.ops import slstm, slstm_reference

    dev = DEV
    g = torch.Generator(device=dev).manual_seed(NH * 1000 + DH)
    S, N = sum(lens), len(lens)
    x = torch.randn(rows, S // rows, 4, NH, DH, device=dev, generator=g) * 2
    R = torch.randn(4, NH, DH, DH, device=dev, generator=g) / DH**0.5
    b = torch.randn(4, NH, DH, device=dev, generator=g)
    st = [torch.randn(N, NH, DH, device=dev, generator=g), torch.rand(N, NH, DH, device=dev, generator=g) + 0.5,
          torch.randn(N, NH, DH, device=dev, generator=g), torch.randn(N, NH, DH, device=dev, generator=g).tanh()]
    cu = offsets(lens, dev)
    xs = [t.to(dtype) if j < 3 else t for j, t in enumerate([x, R, b, *st])]
    xs = [t.detach().requires_grad_(True) for t in xs]
    name = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    t0 = time.time()  # progress lines with times: a first call's time is mostly Triton compiling the kernels
    h, fin = slstm(xs[0], xs[1], xs[2], state=tuple(xs[3:]), backend="triton", cu_seqlens=cu)
    if dev == "cuda":
        torch.cuda.synchronize()
    say(f"  {NH}x{DH} {name} rows {rows}: forward returned after {time.time() - t0:.1f} s")
    w = [torch.randn(t.shape, device=dev, generator=g, dtype=torch.float64) for t in (h, *fin)]
    loss = lambda outs: sum((o.double() * v).sum() for o, v in zip(outs, w))
    t0 = time.time()
    grads = torch.autograd.grad(loss([h, *fin]), xs)
    if dev == "cuda":
        torch.cuda.synchronize()
    say(f"  {NH}x{DH} {name} rows {rows}: backward returned after {time.time() - t0:.1f} s")
    ys = [t.detach().double().requires_grad_(True) for t in xs]
    flat = ys[0].reshape(1, S, 4, NH, DH)
    pieces = []
    for d, (a, e) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        hd, sd = slstm_reference(flat[:, a:e], ys[1], ys[2], state=tuple(s[d : d + 1] for s in ys[3:]))
        pieces.append([hd, *sd])
    ref = [torch.cat([p[0] for p in pieces], 1).reshape(h.shape)]
    ref += [torch.cat(parts) for parts in zip(*[p[1:] for p in pieces])]
    grads_ref = torch.autograd.grad(loss(ref), ys)
    errs = {n: rel(a, c) for n, a, c in zip(("h", "c", "n", "m", "h_last"), [h, *fin], ref)}
    errs.update({n: rel(a, c) for n, a, c in zip(("dx", "dR", "db", "dc0", "dn0", "dm0", "dh0"), grads, grads_ref)})
    tol = TOL[dtype]
    finite = all(bool(torch.isfinite(t).all()) for t in (h, *fin, *grads))
    ok = finite and max(errs.values()) <= tol
    return ok, (f"check {NH}x{DH} {name} rows {rows} docs {len(lens)} (T {S}): worst {max(errs.values()):.2e} "
                f"(tol {tol:g}) finite={finite} {'OK' if ok else 'FAIL'}  "
                + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))


def bench(fn) -> float:
    from triton.testing import do_bench
    return do_bench(fn, warmup=5, rep=50, return_mode="median")


def timings(NH: int, DH: int, T: int, rows: int, deadline: float) -> None:
    from flashxlstm.ops import slstm

    dev = "cuda"
    g = torch.Generator().manual_seed(1)
    lens = row_lengths(rows, T // rows, g)
    x = (torch.randn(1, T, 4, NH, DH, device=dev) * 2).bfloat16()
    R = (torch.randn(4, NH, DH, DH, device=dev) / DH**0.5).bfloat16()
    b = torch.randn(4, NH, DH, device=dev)
    cu = offsets(lens, dev)
    cases = {
        f"packed, one row (1 x {T})": lambda x, R, b: slstm(x, R, b, backend="triton", cu_seqlens=cu)[0],
        f"packed, {rows} rows ({rows} x {T // rows})": lambda x, R, b: slstm(
            x.view(rows, T // rows, 4, NH, DH), R, b, backend="triton", cu_seqlens=cu)[0],
        f"each document alone ({len(lens)} calls)": lambda x, R, b: [
            slstm(x[:, a:e], R, b, backend="triton")[0] for a, e in zip(cu.tolist(), cu.tolist()[1:])],
        f"{rows} sequences, no resets ({rows} x {T // rows})": lambda x, R, b: slstm(
            x.view(rows, T // rows, 4, NH, DH), R, b, backend="triton")[0],
    }
    for name, fn in cases.items():
        if time.time() > deadline:
            say(f"budget spent: {name} not timed")
            continue
        try:
            with torch.no_grad():
                fw = bench(lambda: fn(x, R, b))
            xs = [t.detach().requires_grad_(True) for t in (x, R, b)]

            def go():
                out = fn(*xs)
                out = torch.cat([o.flatten() for o in out]) if isinstance(out, list) else out
                out.float().sum().backward()
            fb = bench(go) if time.time() < deadline else float("nan")
            ROWS.append(dict(heads=f"{NH}x{DH}", T=T, case=name, fw_ms=fw, fwbw_ms=fb, docs=len(lens)))
            say(f"{NH}x{DH} T {T} {name:40s} fw {fw:9.3f} ms  fwbw {fb:9.3f} ms")
        except Exception as e:
            say(f"FAIL {NH}x{DH} {name}: {type(e).__name__}: {str(e)[:300]}")


def write(out: str, info: dict, checks: str) -> None:
    lines = ["# sLSTM Triton kernels with packed documents (benchmarks/bench_slstm_packed.py)", "",
             f"Command: `{' '.join(['python'] + sys.argv)}`  ",
             ", ".join(f"{k} {v}" for k, v in info.items()) + "  ", f"Checks: {checks}", "",
             "| heads | T | case | documents | fw ms | fwbw ms |", "|---|---|---|---|---|---|"]
    for r in ROWS:
        lines.append(f"| {r['heads']} | {r['T']} | {r['case']} | {r['docs']} | {r['fw_ms']:.3f} | {r['fwbw_ms']:.3f} |")
    lines += ["", "Log:", "", "```", *LOG, "```", ""]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench_slstm_packed.md"), "w") as fh:
        fh.write("\n".join(lines))
    with open(os.path.join(out, "bench_slstm_packed.json"), "w") as fh:
        json.dump(dict(info=info, checks=checks, rows=ROWS, log=LOG), fh, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--budget-s", type=float, default=150)
    ap.add_argument("--T", type=int, default=8192)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--heads", default="4x192,1x768,8x64")
    ap.add_argument("--dtypes", default="bf16,fp32", help="dtypes of the checks")
    ap.add_argument("--check-T", type=int, default=97, help="steps of the one-row check (the rows check: 4 x 40)")
    ap.add_argument("--skip-timings", action="store_true", help="checks only (e.g. several runs side by side)")
    args = ap.parse_args()
    if DEV == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_slstm_packed.py needs a CUDA GPU")
    import triton
    t0 = time.time()
    deadline = t0 + args.budget_s
    info = {"gpu": torch.cuda.get_device_name() if DEV == "cuda" else DEV, "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "commit": os.environ.get("FLASHXLSTM_COMMIT", "unknown")}
    say(str(info))
    heads = [tuple(int(v) for v in h.split("x")) for h in args.heads.split(",")]
    good, ran = True, 0
    g = torch.Generator().manual_seed(0)
    for NH, DH in heads:
        for dtype in [{"bf16": torch.bfloat16, "fp32": torch.float32}[d] for d in args.dtypes.split(",")]:
            for rows, lens in ((1, lengths(args.check_T, 5, g)), (4, row_lengths(4, 40, g))):
                if time.time() > deadline:
                    break
                try:
                    ok, text = check(NH, DH, dtype, lens, rows)
                except Exception as e:
                    ok, text = False, f"check {NH}x{DH} {dtype} rows {rows}: FAIL {type(e).__name__}: {str(e)[:300]}"
                good &= ok
                ran += 1
                say(text)
    checks = f"{ran} ran, {'all passed' if good else 'SOME FAILED'} ({time.time() - t0:.0f} s)"
    say(f"checks: {checks}")
    write(args.out, info, checks)
    for NH, DH in heads[:2] if DEV == "cuda" and not args.skip_timings else []:
        timings(NH, DH, args.T, args.rows, deadline)
        write(args.out, info, checks)
    say(f"done in {time.time() - t0:.0f} s")
    write(args.out, info, checks)


if __name__ == "__main__":
    main()
