"""Parity at the CLI defaults over many seeds, each run a `flashxlstm experiment formal-language` process pinned
to its own CPU cores, side by side; a table of scaled test accuracy and wall time per seed.

    python benchmarks/parity_seeds_cpu.py --out runs/parity_seeds --seeds 100 101 102 103 31337 \\
        --mlstm-seeds 100 101 --cores-per-run 1 --first-core 0

Every run uses the CLI's own defaults (nothing but --task, --model, --seed, --threads, --device cpu, --out):
the claim is about what a user gets from `flashxlstm experiment formal-language --task parity --model
"xlstm[0:1]" --seed S --out D`. Each process is pinned with `taskset` to --cores-per-run cores of its own and
runs that many torch threads, so a run sees a machine of that many cores (memory bandwidth and caches are
shared). The wall time is the whole process, Python start and evaluation included. DIR/summary.md holds the
table, the command, the CPU model and the versions; DIR/summary.json the same as data.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from machine_info import cpu_model  # noqa: E402  (the sibling helper, beside this script)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--task", default="parity")
    ap.add_argument("--model", default="xlstm[0:1]")
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds of --model")
    ap.add_argument("--mlstm-seeds", type=int, nargs="*", default=[], help="seeds of xlstm[1:0] (the control)")
    ap.add_argument("--cores-per-run", type=int, default=2)
    ap.add_argument("--first-core", type=int, default=0, help="runs take cores from here on, in order")
    ap.add_argument("--extra", default="", help="extra CLI arguments for every run (default none: the defaults)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from flashxlstm.tasks.experiments import SOLVED, seed_summary

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(args.cores_per_run), "PYTHONUNBUFFERED": "1"}
    runs = [(args.model, s) for s in args.seeds] + [("xlstm[1:0]", s) for s in args.mlstm_seeds]
    procs = []
    for k, (model, seed) in enumerate(runs):
        first = args.first_core + k * args.cores_per_run
        cores = f"{first}-{first + args.cores_per_run - 1}"
        run_dir = out / f"{model.replace('[', '').replace(']', '').replace(':', '')}_seed{seed}"
        cli = ["experiment", "formal-language", "--task", args.task, "--model", model, "--seed", str(seed),
               "--threads", str(args.cores_per_run), "--device", "cpu", "--quiet", *shlex.split(args.extra),
               "--out", str(run_dir)]
        cmd = ["taskset", "-c", cores, sys.executable, "-m", "flashxlstm.cli.main", *cli]
        log = open(out / f"{run_dir.name}.log", "w")
        procs.append((model, seed, cores, cli, run_dir, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                                         env=env, cwd=ROOT), time.perf_counter(), log))
    finished: dict[int, tuple[int, float]] = {}  # polled, so each process gets its own end time
    while len(finished) < len(procs):
        for k, (*_, proc, t0, log) in enumerate(procs):
            if k not in finished and proc.poll() is not None:
                finished[k] = (proc.returncode, time.perf_counter() - t0)
                log.close()
        time.sleep(0.5)
    rows = []
    for k, (model, seed, cores, cli, run_dir, proc, t0, log) in enumerate(procs):
        rc, wall = finished[k]
        r = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
        rows.append({"model": model, "seed": seed, "cores": cores, "rc": rc, "process_wall_s": wall,
                     "command": "flashxlstm " + " ".join(shlex.quote(c) for c in cli),
                     **{k: r.get(k) for k in ("test_scaled_accuracy", "train_scaled_accuracy", "steps",
                                              "wall_time_s", "step_time_ms", "torch_threads")}})
        print(f"{model} seed {seed}: rc {rc}, test scaled {r.get('test_scaled_accuracy')}, {wall:.0f} s", flush=True)
    header = (f"{args.task} at the CLI defaults, {len(runs)} runs side by side, each pinned to "
              f"{args.cores_per_run} core(s) of {cpu_model()} ({os.cpu_count()} cores) with "
              f"{args.cores_per_run} torch thread(s); torch {torch.__version__}, Python {platform.python_version()}."
              f"\n\nCommand: `python {' '.join(shlex.quote(a) for a in sys.argv)}`; each run: `flashxlstm experiment "
              f"formal-language --task {args.task} --model M --seed S --threads {args.cores_per_run} --device cpu "
              f"--quiet{' ' + args.extra if args.extra else ''} --out D`")
    lines = [header, "", "| model | seed | test scaled (40..256) | train scaled (3..40) | steps | step ms | "
             "run wall s | process wall s |", "|---|---|---|---|---|---|---|---|"]
    f = lambda v, spec: "-" if v is None else format(v, spec)
    for d in rows:
        lines.append(f"| {d['model']} | {d['seed']} | {f(d['test_scaled_accuracy'], '.3f')} | "
                     f"{f(d['train_scaled_accuracy'], '.3f')} | {d['steps']} | {f(d['step_time_ms'], '.1f')} | "
                     f"{f(d['wall_time_s'], '.0f')} | {d['process_wall_s']:.0f} |")
    aggregates = {}
    for model in dict.fromkeys(m for m, _ in runs):
        done = [{"seed": d["seed"], "test_scaled_accuracy": d["test_scaled_accuracy"], "steps": d["steps"],
                 "wall_time_s": d["process_wall_s"]} for d in rows if d["model"] == model
                and d["test_scaled_accuracy"] is not None]
        if done:
            s = seed_summary(done, "test_scaled_accuracy")
            aggregates[model] = s
            lines.append(f"\n{model}: {s['num_seeds']} seeds, median {s['median']:.3f}, min {s['min']:.3f}, "
                         f"max {s['max']:.3f}, solved (>= {SOLVED}) {round(s['fraction_solved'] * s['num_seeds'])}"
                         f"/{s['num_seeds']}; slowest process {max(d['wall_time_s'] for d in done):.0f} s")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"header": header, "cpu": cpu_model(), "rows": rows,
                                                  "aggregates": aggregates}, indent=2) + "\n")
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
