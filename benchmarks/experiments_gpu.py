"""Run the paper's synthetic experiments as parallel jobs on one GPU, each within a wall-clock budget.

    python benchmarks/experiments_gpu.py --out runs/gpu --budget 300            # the default grid on CUDA
    python benchmarks/experiments_gpu.py --out /tmp/smoke --device cpu --smoke  # a few tiny steps, CPU

The small models of these experiments leave an H200 mostly idle (the step time is kernel launches and Python),
so the jobs run side by side as subprocesses of `flashxlstm experiment ...`, one CPU thread each. Every job
gets the same budget: it measures its own step and evaluation time, scales its schedule (steps, warm-up,
evaluation interval) down to what fits (at most --steps), stops early if it still runs over, and always ends
with an evaluation and DIR/<job>/results.json ("stopped_early" says how it ended). A job that hangs is killed
at budget + grace; its results.partial.json is then used. At the end DIR/summary.md holds the table (task,
model, steps done of requested, train and test accuracy, step time, wall time), the command, the machine and
the versions, and DIR/summary.json the same as data.

Before the jobs start, a preflight records which kernels "auto" picks on CUDA (Triton), counts their calls, and
checks the gradients of one step of xlstm[0:1] / xlstm[1:0] with them against the torch backends ("fused"
sLSTM, "chunkwise" mLSTM); a kernel that fails or does not match is replaced by its torch backend in every
job (said in the summary).

Default grid (the official parity recipe, NX-AI/xlstm experiments/parity_xlstm*.yaml: width 64, 2 blocks,
1 head, batch 256, lr 1e-3, 10 % warm-up, cosine to 1e-6, weight decay 0.1 on the model's decay groups, no
clipping, train lengths 3..40, test 40..256 on 8192 sequences) for xlstm[0:1], [1:1], [1:0], transformer,
lstm; MQAR at context 256 with 16 pairs (width 128, batch 256, lr 1e-3, 10 % warm-up) for xlstm[1:0],
transformer, lstm at --mqar-vocab (default 256), plus xlstm[1:0] at Zoology's 8192 when --mqar-zoology.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine_info import cpu_model  # noqa: E402  (the sibling helper, beside this script)

PARITY_MODELS = ["xlstm[0:1]", "xlstm[1:1]", "xlstm[1:0]", "transformer", "lstm"]
MQAR_MODELS = ["xlstm[1:0]", "transformer", "lstm"]


def slug(model: str) -> str:
    return model.replace("[", "").replace("]", "").replace(":", "")


def jobs(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(name, argv of `flashxlstm experiment ...`) for every job of the grid."""
    common = ["--steps", str(args.steps), "--seed", str(args.seed), "--device", args.device, "--threads", "1",
              "--time-budget", str(args.budget), "--mlstm-backend", args.mlstm_backend,
              "--slstm-backend", args.slstm_backend, "--amp", args.amp]
    if args.smoke:
        parity = ["--batch-size", "8", "--test-size", "16", "--embedding-dim", "16", "--eval-batch-size", "16",
                  "--curriculum", "0"]
        mqar = ["--batch-size", "4", "--test-size", "8", "--embedding-dim", "16", "--context-length", "64",
                "--num-kv-pairs", "4", "--eval-batch-size", "8"]
    else:
        parity = ["--batch-size", "256", "--test-size", "8192", "--eval-batch-size", "1024", "--embedding-dim", "64",
                  "--num-heads", "1", "--curriculum", "0"]  # the official recipe: no length curriculum
        mqar = ["--batch-size", "256", "--test-size", "2048", "--eval-batch-size", "512", "--embedding-dim", "128",
                "--num-heads", "1", "--context-length", "256", "--num-kv-pairs", "16"]
    recipe = ["--lr", "1e-3", "--warmup-steps", str(args.steps // 10), "--min-lr-factor", "1e-3",
              "--weight-decay", "0.1", "--grad-clip", "0", "--eval-every", str(max(args.steps // 20, 1))]
    out = []
    for model in args.parity_models:
        out.append((f"parity_{slug(model)}", ["formal-language", "--task", "parity", "--model", model,
                                              *common, *recipe, *parity]))
    for model in args.mqar_models:
        out.append((f"mqar_v{args.mqar_vocab}_{slug(model)}",
                    ["mqar", "--model", model, "--vocab-size", str(args.mqar_vocab), *common, *recipe, *mqar]))
    if args.mqar_zoology and not args.smoke:
        out.append(("mqar_v8192_xlstm10", ["mqar", "--model", "xlstm[1:0]", "--vocab-size", "8192",
                                           *common, *recipe, *mqar]))
    return out


def preflight(device: str) -> dict:
    """Which kernels "auto" picks on `device`, and whether a Triton training step matches the torch backends."""
    import torch

    import flashxlstm.ops.mlstm_cell as mlstm_ops
    import flashxlstm.ops.slstm_cell as slstm_ops
    from flashxlstm.tasks.zoo import ModelSize, build_model

    from flashxlstm.ops.choose import choose_backend

    info: dict = {"device": device, "torch": torch.__version__}
    for kind, ops, fallback in (("slstm", slstm_ops, "fused"), ("mlstm", mlstm_ops, "chunkwise")):
        info[f"{kind}_auto"] = choose_backend(kind, "auto", ops.BACKENDS, fallback=fallback, device=torch.device(device),
                                              dtype=torch.float32)
    if device.startswith("cuda"):
        import triton

        info.update(triton=triton.__version__, gpu=torch.cuda.get_device_name(0))
    calls: dict[str, int] = {}

    def counted(table: dict, kind: str, name: str) -> None:
        fn = table[name]

        def wrapper(*a, **k):
            calls[f"{kind}:{name}"] = calls.get(f"{kind}:{name}", 0) + 1
            return fn(*a, **k)
        table[name] = wrapper

    for kind, table in (("slstm", slstm_ops.BACKENDS), ("mlstm", mlstm_ops.BACKENDS)):
        for name in list(table):
            counted(table, kind, name)
    x = torch.randint(1, 3, (8, 39), device=device)
    t0 = time.perf_counter()
    checks = (("slstm", "xlstm[0:1]", "fused", 64), ("mlstm", "xlstm[1:0]", "chunkwise", 64),
              ("mlstm", "xlstm[1:0]", "chunkwise", 128))  # the parity and the MQAR widths
    ok = {"slstm": True, "mlstm": True}
    for kind, model_name, torch_backend, dim in checks:
        grads = {}
        try:
            for backend in ("auto", torch_backend):
                torch.manual_seed(0)
                size = ModelSize(dim, 2, 1, **{f"{kind}_backend": backend})
                model = build_model(model_name, 3, size).to(device)
                with torch.no_grad():  # make every weight matter, the zero-initialised recurrent matrix too
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 0.05)
                model(x).float().logsumexp(-1).mean().backward()
                grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
            diffs = {n: float((grads["auto"][n] - g).abs().max() / g.abs().max().clamp_min(1e-12))
                     for n, g in grads[torch_backend].items()}
            info[f"{kind}_D{dim}_max_rel_grad_diff_auto_vs_{torch_backend}"] = max(diffs.values())
            ok[kind] &= max(diffs.values()) < 1e-2  # a broken kernel is O(1) off; TF32 dots ~1e-3
        except Exception as e:  # a broken kernel must not take the whole grid down
            info[f"{kind}_D{dim}_error"] = f"{type(e).__name__}: {e}"[:500]
            ok[kind] = False
        if not ok[kind]:
            info[f"{kind}_fallback"] = torch_backend
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    info["preflight_s"] = time.perf_counter() - t0
    info["kernel_calls"] = calls
    return info


def pack(out: Path, archive: str | None) -> None:
    """Write --out as one .tar.gz (the device returns few files): atomically, so a kill leaves the last one."""
    if not archive:
        return
    tmp = archive + ".tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(out, arcname=out.name)
    os.replace(tmp, archive)


def run_jobs(jobs: list[tuple[str, list[str], Path]], *, parallel: int, limit_s: float, env: dict, start: float,
             out: Path, archive: str | None) -> dict[str, str]:
    """Run every (name, command, log file) as a subprocess, at most `parallel` at once, and kill one that still
    runs `limit_s` after it started. Returns {name: "ok" | "exit N" | "killed"}. `out` is packed to `archive`
    every minute and after every finished job, so a device call that is cut off still returns a trace."""
    pending, running, status = list(jobs), [], {}
    last_pack = time.perf_counter()
    while pending or running:
        while pending and len(running) < parallel:
            name, cmd, log_path = pending.pop(0)
            log = open(log_path, "w")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT),
                            time.perf_counter(), log))
        time.sleep(1.0)
        if time.perf_counter() - last_pack > 60:
            pack(out, archive)
            last_pack = time.perf_counter()
        for item in list(running):
            name, proc, t0, log = item
            rc = proc.poll()
            if rc is None and time.perf_counter() - t0 > limit_s:
                proc.kill()
                rc = proc.wait()
                status[name] = "killed"
            if rc is not None:
                status.setdefault(name, "ok" if rc == 0 else f"exit {rc}")
                log.close()
                running.remove(item)
                print(f"[{time.perf_counter() - start:.0f} s] {name}: {status[name]}", flush=True)
                pack(out, archive)
    return status


def machine(info: dict) -> str:
    """The GPU of a preflight record, or this machine's CPU."""
    return info.get("gpu", cpu_model())


def setup_line(info: dict) -> str:
    """The machine, versions and kernels of a grid, from its preflight record."""
    kernel = lambda kind: info.get(f"{kind}_fallback", info.get(f"{kind}_auto", "-"))
    return (f"{machine(info)}; torch {info.get('torch', '?')}, triton {info.get('triton', '-')}; "
            f"kernels: sLSTM {kernel('slstm')}, mLSTM {kernel('mlstm')}")


def read_result(run_dir: Path) -> dict | None:
    for name in ("results.json", "results.partial.json"):
        if (run_dir / name).exists():
            return json.loads((run_dir / name).read_text())
    return None


def row(name: str, r: dict | None, status: str) -> dict:
    if r is None:
        return {"job": name, "status": status}
    hist = r.get("history") or [{}]
    last = hist[-1]
    d = {"job": name, "status": status, "task": r.get("task"), "model": r.get("model"),
         "steps": r.get("steps", last.get("step")), "complete": r.get("complete", False),
         "stopped_early": r.get("stopped_early"), "step_time_ms": r.get("step_time_ms"),
         "wall_time_s": r.get("wall_time_s", last.get("elapsed_s")),
         "requested_steps": (r.get("requested_train_config") or r.get("train_config") or {}).get("steps"),
         "planned_steps": (r.get("train_config") or {}).get("steps")}
    if r.get("task") == "mqar":
        d.update(vocab=r["mqar"]["vocab_size"], train_accuracy=last.get("train_batch_accuracy"),
                 test_accuracy=last.get("test_accuracy"))
    else:
        rnd = r.get("random_accuracy", 0.5)
        sc = lambda a: None if a is None else (a - rnd) / (1 - rnd)
        d.update(train_scaled=sc(last.get("train_len_accuracy")), test_scaled=sc(last.get("test_len_accuracy")))
    return d


def fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def summary_md(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| task | model | steps done / fitted plan / asked | ended | train acc | test acc | step ms | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for d in rows:
        if "task" not in d:
            lines.append(f"| {d['job']} | - | - | {d['status']} | - | - | - | - |")
            continue
        ended = d["status"] if d["status"] != "ok" else ("stopped early" if d["stopped_early"] else "finished")
        if d["task"] == "mqar":
            task, tr, te = f"MQAR V={d['vocab']}", fmt(d["train_accuracy"]), fmt(d["test_accuracy"])
        else:
            task, tr, te = d["task"], fmt(d["train_scaled"]) + " (scaled)", fmt(d["test_scaled"]) + " (scaled)"
        lines.append(f"| {task} | {d['model']} | {d['steps']} / {d.get('planned_steps')} / {d['requested_steps']} | "
                     f"{ended} | {tr} | {te} | "
                     f"{fmt(d['step_time_ms'], '.1f')} | {fmt(d['wall_time_s'], '.0f')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds per job, training + evaluation")
    ap.add_argument("--grace", type=float, default=60.0, help="seconds past the budget before a job is killed")
    ap.add_argument("--steps", type=int, default=20000, help="steps asked for (the paper's 20000); fewer if the "
                                                             "budget only fits fewer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=9, help="jobs at once")
    ap.add_argument("--parity-models", nargs="*", default=PARITY_MODELS)
    ap.add_argument("--mqar-models", nargs="*", default=MQAR_MODELS)
    ap.add_argument("--mqar-vocab", type=int, default=256)
    ap.add_argument("--mqar-zoology", action="store_true", help="add xlstm[1:0] on MQAR with vocabulary 8192")
    ap.add_argument("--mlstm-backend", default="auto")
    ap.add_argument("--slstm-backend", default="auto")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    ap.add_argument("--smoke", action="store_true", help="tiny models and data (a CPU check of the plumbing)")
    ap.add_argument("--no-preflight", action="store_true")
    ap.add_argument("--pack", default=None, help="also write --out as this .tar.gz after every finished job")
    ap.add_argument("--summarize-only", action="store_true", help="rebuild summary.md (and PNGs) from --out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = str(ROOT / "src")
    sys.path.insert(0, src)
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    grid = jobs(args)
    status: dict[str, str] = {}
    info: dict = {}
    if args.summarize_only:
        prev = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        info, status = prev.get("preflight", {}), {d["job"]: d["status"] for d in prev.get("rows", [])}
        header_cmd = prev.get("command", "")
        start -= prev.get("wall_time_s", 0.0)  # keep the run's wall time
    else:
        header_cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        if not args.no_preflight:
            try:
                info = preflight(args.device)
            except Exception as e:  # the grid still runs, with the backends asked for
                info = {"preflight_error": f"{type(e).__name__}: {e}"[:500]}
            print("preflight:", json.dumps(info), flush=True)
            for kind in ("mlstm", "slstm"):
                if f"{kind}_fallback" in info and getattr(args, f"{kind}_backend") == "auto":
                    print(f"preflight: the {kind} kernel picked by auto failed or does not match torch; "
                          f"the jobs use {info[f'{kind}_fallback']}", flush=True)
                    setattr(args, f"{kind}_backend", info[f"{kind}_fallback"])
            grid = jobs(args)
        (out / "preflight.json").write_text(json.dumps(info, indent=2) + "\n")
        commands = []
        for name, argv in grid:
            run_dir = out / name
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "flashxlstm.cli.main", "experiment", *argv, "--out", str(run_dir)]
            (run_dir / "command.txt").write_text(" ".join(shlex.quote(c) for c in cmd[1:]) + "\n")
            commands.append((name, cmd, run_dir / "log.txt"))
        status = run_jobs(commands, parallel=args.parallel, limit_s=args.budget + args.grace, env=env, start=start,
                          out=out, archive=args.pack)
    rows = [row(name, read_result(out / name), status.get(name, "missing")) for name, _ in grid
            if (out / name).exists()]
    header = (f"Synthetic experiments, {len(rows)} jobs side by side ({args.device}) on {setup_line(info)}; budget "
              f"{args.budget:.0f} s per job.\n\nCommand: `{header_cmd}`\n\n"
              "Parity: scaled accuracy (0 chance, 1 perfect) on 8192 held-out sequences of lengths 3..40 (train) "
              "and 40..256 (test). MQAR: accuracy on the value positions of held-out sequences (train: last "
              "training batches).")
    (out / "summary.md").write_text(summary_md(rows, header))
    (out / "summary.json").write_text(json.dumps({"command": header_cmd, "preflight": info, "rows": rows,
                                                  "wall_time_s": time.perf_counter() - start}, indent=2) + "\n")
    try:
        from flashxlstm.tasks.experiments import plot_results

        for name, _ in grid:
            if (out / name / "results.json").exists():
                plot_results(out / name)
    except ImportError as e:
        print(f"no learning-curve PNGs ({e}); rerun with --summarize-only where matplotlib is installed")
    pack(out, args.pack)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
