"""The paper's Figure 4 on one GPU: every formal-language task x xLSTM[0:1], [1:0], [1:1], Transformer, LSTM,
several seeds per cell; a table and a heatmap of the median test scaled accuracy.

    python benchmarks/figure4_gpu.py --out runs/figure4 --seeds 0 1 2 --budget 45 --pack figure4.tar.gz
    python benchmarks/figure4_gpu.py --out /tmp/f4 --device cpu --smoke          # the plumbing, on a CPU
    python benchmarks/figure4_gpu.py --out runs/figure4 --summarize-only         # table + heatmap again

One process per (model, seed) runs `flashxlstm experiment suite --models M --seed S` over every task at the
CLI's formal-language defaults (the recipe of docs/experiments.md), each task fitted to --budget seconds
(`--time-budget`: the run measures its step and evaluation time, scales its schedule to fit, stops early if
it still runs over, and always ends with an evaluation). The processes share the GPU side by side (the models
are small: the step time is kernel launches and Python, one CPU core each). A process that hangs is killed at
(budget + grace) x tasks; its runs' results.partial.json are then used. DIR/summary.md holds the median table,
median [min, max] and seeds solved per cell, the command, the machine and the versions; DIR/heatmap.png the
medians (drawn where matplotlib is installed; --summarize-only draws it later).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from experiments_gpu import machine, pack, preflight, run_jobs, setup_line, slug  # noqa: E402  (the sibling script)

MODELS = ["xlstm[0:1]", "xlstm[1:0]", "xlstm[1:1]", "transformer", "lstm"]


def read_runs(out: Path, tasks: list[str]) -> list[dict]:
    """Every finished (results.json) or cut-off (results.partial.json: its last evaluation) run under out."""
    runs = []
    for path in sorted(out.glob("*_seed*/*/*/results*.json")):
        if path.name == "results.partial.json" and (path.parent / "results.json").exists():
            continue
        r = json.loads(path.read_text())
        if r.get("task") not in tasks or not r.get("history"):
            continue
        if path.name == "results.partial.json":
            last, rnd = r["history"][-1], r["random_accuracy"]
            r = {**r, "steps": last["step"], "wall_time_s": last.get("elapsed_s"), "cut_off": True,
                 "test_scaled_accuracy": (last["test_len_accuracy"] - rnd) / (1 - rnd),
                 "train_scaled_accuracy": (last["train_len_accuracy"] - rnd) / (1 - rnd)}
        runs.append(r)
    return runs


def main() -> int:
    from flashxlstm.tasks.formal_languages import TASKS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--tasks", nargs="+", default=sorted(TASKS))
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per task run, training + evaluation")
    ap.add_argument("--grace", type=float, default=20.0, help="seconds per task past the budget before a kill")
    ap.add_argument("--cpus", default=None, help="taskset CPU list for the jobs (default: all)")
    ap.add_argument("--extra", default="", help="extra `experiment suite` arguments for every job")
    ap.add_argument("--smoke", action="store_true", help="tiny models and data (a CPU check of the plumbing)")
    ap.add_argument("--no-preflight", action="store_true")
    ap.add_argument("--pack", default=None, help="also write --out as this .tar.gz every minute and at the end")
    ap.add_argument("--summarize-only", action="store_true", help="rebuild summary.md and heatmap.png from --out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from flashxlstm.tasks.experiments import grid_markdown, grid_summary

    start = time.perf_counter()
    if args.summarize_only:
        prev = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        info, command = prev.get("preflight", {}), prev.get("command", "(cut off before its summary)")
        jobs_status, wall = prev.get("jobs", {}), prev.get("wall_time_s", float("nan"))
    else:
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        info = {} if args.no_preflight else preflight(args.device)
        print("preflight:", json.dumps(info), flush=True)
        backends = {k: info.get(f"{k}_fallback", "auto") for k in ("mlstm", "slstm")}
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        small = (["--batch-size", "8", "--test-size", "8", "--embedding-dim", "16", "--steps", "6"]
                 if args.smoke else [])
        commands = []
        for model in args.models:
            for seed in args.seeds:
                name = f"{slug(model)}_seed{seed}"
                argv = ["experiment", "suite", "--models", model, "--tasks", *args.tasks, "--seed", str(seed),
                        "--device", args.device, "--threads", "1", "--time-budget", str(args.budget),
                        "--mlstm-backend", backends["mlstm"], "--slstm-backend", backends["slstm"], "--quiet",
                        *small, *shlex.split(args.extra), "--out", str(out / name)]
                cmd = [sys.executable, "-m", "flashxlstm.cli.main", *argv]
                if args.cpus:
                    cmd = ["taskset", "-c", args.cpus, *cmd]
                (out / f"{name}.cmd").write_text("flashxlstm " + " ".join(shlex.quote(a) for a in argv) + "\n")
                commands.append((name, cmd, out / f"{name}.log"))
        limit = (args.budget + args.grace) * len(args.tasks) + 30  # a process runs every task, one after the other
        jobs_status = run_jobs(commands, parallel=len(commands), limit_s=limit, env=env, start=start, out=out,
                               archive=args.pack)
        wall = time.perf_counter() - start
    runs = read_runs(out, args.tasks)
    summary = grid_summary(runs, args.tasks, args.models)
    cut = sum(bool(r.get("cut_off")) for r in runs)
    steps = sorted(r["steps"] for r in runs)
    header = (f"Figure 4 grid: {len(args.tasks)} tasks x {len(args.models)} models x seeds {args.seeds}, "
              f"{len(runs)} runs, {len(jobs_status)} processes side by side ({args.device}) on {setup_line(info)}; "
              f"{args.budget:.0f} s per run; wall {wall:.0f} s.\n\n"
              f"Command: `{command}`\n\nEvery run: the formal-language CLI defaults (docs/experiments.md) fitted to "
              f"the budget; steps done per run: min {steps[0] if steps else '-'}, median "
              f"{steps[len(steps) // 2] if steps else '-'}, max {steps[-1] if steps else '-'}; {cut} run(s) cut off "
              f"(last evaluation used). Jobs: {json.dumps(jobs_status)}. Train lengths 3..40, test 40..256, scaled "
              "accuracy (0 chance, 1 perfect).")
    (out / "summary.md").write_text(header + "\n\n" + grid_markdown(summary))
    (out / "summary.json").write_text(json.dumps({
        "command": command, "preflight": info, "jobs": jobs_status, "wall_time_s": wall, **summary,
        "runs": [{k: r.get(k) for k in ("task", "model", "seed", "test_scaled_accuracy", "train_scaled_accuracy",
                                        "steps", "wall_time_s", "step_time_ms", "stopped_early", "cut_off")}
                 for r in runs]}, indent=2) + "\n")
    try:
        from flashxlstm.tasks.plots import heatmap

        heatmap(args.models, args.tasks, summary["median"], out / "heatmap.png",
                f"Test scaled accuracy, median of {len(args.seeds)} seeds ({args.budget:.0f} s per run, "
                f"{machine(info)})")
    except ImportError as e:
        print(f"no heatmap ({e}); rerun with --summarize-only where matplotlib is installed")
    if args.pack:
        pack(out, args.pack)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
