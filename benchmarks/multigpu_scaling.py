"""Multi-GPU training on one host: weak scaling of FSDP2 and DDP, peak memory per GPU, and a resume across
world sizes, all through `torchrun -m flashxlstm train` (the path a user takes).

One command per device kind; it runs every world size up to --gpus:

    python benchmarks/multigpu_scaling.py --gpus 8 --data DATA_DIR --out OUT

- Weak scaling: every rank keeps --rows-per-gpu rows of --seq-len tokens per step (the global batch grows with
  the world size); tokens/s per GPU is the median over the log windows after the first (which holds the
  compile), divided by the world size. Efficiency = per-GPU tokens/s at W GPUs / at 1 GPU.
- Memory: the largest `max_memory_allocated_gb` rank 0 reports (FSDP2 shards parameters, gradients and
  optimiser state, so it must fall with W; DDP keeps a full replica).
- Resume: an uninterrupted FSDP2 run at --gpus ranks, and a run stopped after a checkpoint at --gpus ranks
  and resumed at --gpus / 2; the next --resume-steps losses are compared. bf16 autocast makes the sum
  order of a different world size change the losses by rounding only; the bound is --resume-tol (absolute,
  in nats).

On a machine without GPUs (`--device cpu`) the same runs use gloo with a tiny model: that is how the script
is tested. Writes OUT/multigpu_scaling.md and .json; each torchrun's output under OUT/runs/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path


def world_sizes(gpus: int) -> list[int]:
    sizes, w = [], 1
    while w <= gpus:
        sizes.append(w)
        w *= 2
    if sizes[-1] != gpus:
        sizes.append(gpus)
    return sizes


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def train_command(args, world: int, out: Path, parallel: str, steps: int, extra: list[str], *,
                  log_every: int | None = None, save_every: int = 10 ** 6) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
           "-m", "flashxlstm", "train", "--data", args.data, "--model", args.model, "--out", str(out),
           "--seq-len", str(args.seq_len), "--batch-size", str(args.rows_per_gpu * world),
           "--steps", str(steps), "--warmup-steps", "2", "--log-every", str(log_every or args.log_every),
           "--eval-every", str(10 ** 6), "--save-every", str(save_every), "--eval-windows", "1",
           "--no-progress", "--parallel", parallel, "--seed", "0"]
    if args.device == "cuda":
        cmd += ["--amp", "bf16"]
    else:
        cmd += ["--device", "cpu"]
    if args.compile:
        cmd += ["--compile"]
    return cmd + extra


def run(cmd: list[str], log: Path, timeout: float) -> tuple[int, float]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if "NCCL_NVLS_ENABLE" not in env:
        env["NCCL_NVLS_ENABLE"] = "0"  # NVLink multicast stays off on the lent machines
    t = time.perf_counter()
    with open(log, "w") as f:
        f.write(shlex.join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=max(timeout, 1)).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.perf_counter() - t


def throughput(rows: list[dict], world: int) -> dict:
    timed = [r for r in rows if "tokens_per_s" in r]
    steady = timed[1:] or timed  # the first window holds compilation and warm-up
    if not steady:
        return {}
    tok_s = statistics.median(r["tokens_per_s"] for r in steady)
    mem = max((r["max_memory_allocated_gb"] for r in timed if "max_memory_allocated_gb" in r), default=None)
    return {"tokens_per_s": tok_s, "tokens_per_s_per_gpu": tok_s / world, "peak_memory_gb_rank0": mem,
            "windows": len(steady), "mfu": steady[-1].get("mfu")}


def scaling(args, root: Path, deadline: float) -> list[dict]:
    rows = []
    for parallel in args.parallel.split(","):
        for world in world_sizes(args.gpus):
            out = root / f"{parallel}-w{world}"
            if time.time() > deadline - 10:
                rows.append({"parallel": parallel, "world": world, "status": "not run (time box)"})
                continue
            cmd = train_command(args, world, out, parallel, args.steps, ["--overwrite"])
            rc, wall = run(cmd, root / f"{parallel}-w{world}.log", min(args.run_timeout, deadline - time.time()))
            row = {"parallel": parallel, "world": world, "rc": rc, "wall_s": round(wall, 1),
                   "status": "ok" if rc == 0 else f"failed rc={rc} (see runs/{parallel}-w{world}.log)",
                   **throughput(metrics(out), world)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    for parallel in args.parallel.split(","):
        base = next((r for r in rows if r["parallel"] == parallel and r["world"] == 1 and "tokens_per_s" in r), None)
        for r in rows:
            if r["parallel"] == parallel and base and "tokens_per_s_per_gpu" in r:
                r["efficiency"] = r["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"]
                if r["peak_memory_gb_rank0"] and base["peak_memory_gb_rank0"]:  # CUDA only
                    r["memory_vs_1gpu"] = r["peak_memory_gb_rank0"] / base["peak_memory_gb_rank0"]
    return rows


def resume_check(args, root: Path, deadline: float) -> dict:
    n, half = args.gpus, max(args.gpus // 2, 1)
    k, total = args.resume_at, args.resume_at + args.resume_steps
    # a checkpoint at step k: --save-every k and --stop-after-step k; the uninterrupted run saves too (same work)
    ref_out, cut_out = root / f"resume-ref-w{n}", root / f"resume-cut-w{n}-to-w{half}"
    result = {"from_world": n, "to_world": half, "stopped_at": k, "compared_steps": args.resume_steps,
              "tolerance": args.resume_tol}
    for out, extra, world, name in ((ref_out, ["--overwrite"], n, "uninterrupted"),
                                    (cut_out, ["--overwrite", "--stop-after-step", str(k)], n, "stopped"),
                                    (cut_out, ["--resume"], half, "resumed")):
        if time.time() > deadline - 10:
            return {**result, "status": f"not run (time box before the {name} run)"}
        if name == "resumed":  # only what may change on a resume; the saved run keeps its global batch
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
                   "-m", "flashxlstm", "train", "--data", args.data, "--out", str(out), "--resume",
                   "--parallel", "fsdp", "--no-progress"]
        else:
            cmd = train_command(args, world, out, "fsdp", total, extra, log_every=1, save_every=k)
        rc, _ = run(cmd, root / f"resume-{name}.log", min(args.run_timeout, deadline - time.time()))
        if rc != 0:
            return {**result, "status": f"{name} run failed rc={rc} (see runs/resume-{name}.log)"}
    ref = {r["step"]: r["loss"] for r in metrics(ref_out) if "loss" in r}
    got = {r["step"]: r["loss"] for r in metrics(cut_out) if "loss" in r}
    steps = list(range(k + 1, total + 1))
    missing = [s for s in steps if s not in ref or s not in got]
    if missing:
        return {**result, "status": f"losses missing at steps {missing[:5]}"}
    diffs = [abs(ref[s] - got[s]) for s in steps]
    return {**result, "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs),
            "status": "ok" if max(diffs) <= args.resume_tol else "above the bound",
            "losses_uninterrupted": [ref[s] for s in steps], "losses_resumed": [got[s] for s in steps]}


def machine(device: str) -> dict:
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node(),
            "cpu": platform.processor() or platform.machine()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return info


def table(args, rows: list[dict], resume: dict, info: dict, command: str) -> str:
    lines = ["# Multi-GPU training: weak scaling, memory per GPU, resume across world sizes", "",
             f"Command: `{command}`  ", f"Machine: {json.dumps(info)}  ",
             f"Model {args.model}, {args.rows_per_gpu} x {args.seq_len} tokens per GPU per step, "
             f"{args.steps} steps, compile {args.compile}, {'bf16 autocast' if args.device == 'cuda' else 'fp32 (cpu)'}",
             "", "| parallel | GPUs | tokens/s | tokens/s per GPU | efficiency vs 1 GPU | peak GB rank 0 | "
             "memory vs 1 GPU | MFU | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda key, spec: format(r[key], spec) if r.get(key) is not None else "-"  # noqa: E731
        lines.append(f"| {r['parallel']} | {r['world']} | {f('tokens_per_s', ',.0f')} | "
                     f"{f('tokens_per_s_per_gpu', ',.0f')} | {f('efficiency', '.3f')} | "
                     f"{f('peak_memory_gb_rank0', '.2f')} | {f('memory_vs_1gpu', '.3f')} | {f('mfu', '.3f')} | "
                     f"{r['status']} |")
    lines += ["", f"Resume: FSDP2 stopped after step {resume.get('stopped_at')} at {resume.get('from_world')} "
              f"ranks, resumed at {resume.get('to_world')}; next {resume.get('compared_steps')} losses vs the "
              f"uninterrupted run: max |diff| {resume.get('max_abs_diff', '-')}, bound {resume.get('tolerance')} "
              f"-> {resume.get('status')}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, required=True, help="ranks of the largest run (the kind's GPU count)")
    p.add_argument("--data", required=True, help="token shards from `flashxlstm prepare`")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="large-1.3b", help="preset or config file")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--rows-per-gpu", type=int, default=1)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--log-every", type=int, default=3)
    p.add_argument("--parallel", default="fsdp,ddp")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--resume-at", type=int, default=10)
    p.add_argument("--resume-steps", type=int, default=20)
    p.add_argument("--resume-tol", type=float, default=0.02, help="max |loss diff| in nats after the resume")
    p.add_argument("--skip-resume", action="store_true")
    p.add_argument("--run-timeout", type=float, default=300.0, help="seconds per torchrun")
    p.add_argument("--budget-s", type=float, default=570.0, help="no run starts after this")
    args = p.parse_args(argv)
    if args.gpus < 1:
        p.error(f"--gpus must be at least 1, got {args.gpus}")
    if args.device == "cuda":
        import torch
        have = torch.cuda.device_count()
        if have < args.gpus:
            p.error(f"--gpus {args.gpus} but this machine has {have} CUDA device(s)")
    unknown = set(args.parallel.split(",")) - {"fsdp", "ddp"}
    if unknown:
        p.error(f"--parallel takes fsdp and/or ddp, got {sorted(unknown)}")
    deadline = time.time() + args.budget_s
    out = Path(args.out)
    root = out / "runs"
    root.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/multigpu_scaling.py", *(argv if argv is not None else sys.argv[1:])])
    info = machine(args.device)
    rows = scaling(args, root, deadline)
    resume = {"status": "skipped"} if args.skip_resume or args.gpus < 2 else resume_check(args, root, deadline)
    (out / "multigpu_scaling.json").write_text(json.dumps({"command": command, "machine": info, "rows": rows,
                                                           "resume": resume}, indent=1))
    text = table(args, rows, resume, info, command)
    (out / "multigpu_scaling.md").write_text(text)
    print(text)
    return 0 if all(r.get("rc") == 0 for r in rows) and resume.get("status") in ("ok", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
