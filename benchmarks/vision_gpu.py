"""The vision GPU run in one hard-capped command: ViL on Fashion-MNIST, the parameter-matched ViT with the same
recipe and the same wall budget, then bench_vision.py images/s of both at 196 and 1024 tokens per image.

    PYTHONPATH=$PWD/src python3 benchmarks/vision_gpu.py --out $OUT/vision --data-dir .gpu/vision/fashion-mnist
    PYTHONPATH=$PWD/src python benchmarks/vision_gpu.py --out /tmp/v --data-dir DIR --tiny   # CPU check

Each part runs in its own process under its own time box, all inside `--total-s` of wall time (data loading,
kernel compilation and start-up included); OUT/results.md and OUT/summary.json are rewritten after every part,
so a part that runs out of time still leaves the earlier ones. The recipe (AdamW, bf16 autocast, linear
warm-up then cosine, batch 1024, 49 tokens per image, crop/flip/erasing augmentation) is the same for both
models; the training loop fits the number of steps to `--train-s` (tasks/harness.py), so each model gets the
same wall-clock training budget.
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

ROOT = Path(__file__).resolve().parent.parent


def train_command(model: str, a: argparse.Namespace, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "flashxlstm.cli.main", "experiment", "vision", "--model", model,
           "--dataset", a.dataset, "--out", str(out / model), "--amp", a.amp, "--device", a.device,
           "--batch-size", str(a.batch_size), "--eval-batch-size", str(a.eval_batch_size), "--lr", str(a.lr),
           "--weight-decay", "0.05", "--grad-clip", "1.0", "--steps", str(a.steps), "--warmup-steps", str(a.steps // 20),
           "--eval-every", str(max(a.steps // 10, 1)), "--patch-size", str(a.patch_size), "--dim", str(a.dim),
           "--depth", str(a.depth), "--num-heads", str(a.num_heads), "--time-budget", str(a.train_s)]
    if a.data_dir:
        cmd += ["--data-dir", a.data_dir]
    if model == "vil":
        cmd += ["--backend", a.backend]
    if a.tiny:
        cmd += ["--threads", "2"]
    return cmd


def bench_command(a: argparse.Namespace) -> list[str]:
    if a.tiny:
        return [sys.executable, str(ROOT / "benchmarks/bench_vision.py"), "--device", a.device, "--dim", "32",
                "--depth", "2", "--num-heads", "2", "--tokens", "16", "64", "--batch-size", "4", "--iters", "2"]
    return [sys.executable, str(ROOT / "benchmarks/bench_vision.py"), "--device", a.device, "--amp", a.amp,
            "--tokens", "196", "1024", "--batch-size", str(a.bench_batch_size), "--iters", "5"]


def run_part(name: str, cmd: list[str], timeout: float, log_path: Path, parts: dict) -> None:
    t0 = time.perf_counter()
    if timeout < 5:
        parts[name] = {"status": "skipped: no time left", "command": shlex.join(cmd)}
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    with open(log_path, "w") as log:  # streamed, so a killed part still leaves its output
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = f"killed at its time box ({timeout:.0f} s)"
    parts[name] = {"status": status, "wall_s": round(time.perf_counter() - t0, 1), "time_box_s": round(timeout, 1),
                   "command": shlex.join(cmd), "log": log_path.name}


def _row(res: dict) -> str:
    h = res["history"]
    return (f"| {res['model']} | {res['num_parameters']:,} | {res['tokens_per_image']} | {res.get('backend') or '-'} | "
            f"{res['steps_done']} x {res['batch_size']} | {res['test_accuracy']:.4f} | {res['best_test_accuracy']:.4f} | "
            f"{res['train_images_per_s']:.0f} | {res['eval_images_per_s']:.0f} | {res['train_time_s']:.1f} | "
            f"{res['total_wall_s']:.1f} | {len(h)} |")


def write_summary(out: Path, a: argparse.Namespace, parts: dict, argv: list[str]) -> None:
    results = {m: json.loads((out / m / "results.json").read_text())
               for m in ("vil", "vit") if (out / m / "results.json").is_file()}
    lines = [f"# Vision GPU run: ViL vs parameter-matched ViT on {a.dataset}", "",
             f"Command: `python3 benchmarks/vision_gpu.py {shlex.join(argv)}`", ""]
    if results:
        r0 = next(iter(results.values()))
        lines += [f"Machine: {r0['device_name']}; torch {r0['torch']}; python {platform.python_version()}", "",
                  "| model | params | tokens | mLSTM backend | steps x batch | test acc (final) | best eval acc | "
                  "train img/s | eval img/s | train s | part wall s | evals |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [_row(r) for r in results.values()]
        if len(results) == 2:
            lines += ["", f"ViL / ViT test accuracy: {results['vil']['test_accuracy']:.4f} / "
                          f"{results['vit']['test_accuracy']:.4f}; train images/s ratio "
                          f"{results['vil']['train_images_per_s'] / results['vit']['train_images_per_s']:.2f}"]
        if "vil" in results and results["vil"].get("backend_probe_step_ms"):
            lines += ["", "ViL backend probe (ms per training step): " + ", ".join(
                f"{k} {v:.1f}" for k, v in results["vil"]["backend_probe_step_ms"].items())]
    bench = out / "bench.log"
    if bench.is_file():
        lines += ["", "## bench_vision.py (images/s; ratio = ViL / ViT, same run)", "", bench.read_text().strip()]
    lines += ["", "## Parts", ""] + [f"- {k}: {v['status']} ({v.get('wall_s', 0)} s of a {v.get('time_box_s', 0)} s box): "
                                     f"`{v['command']}`" for k, v in parts.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"parts": parts, "results": {
        m: {k: r[k] for k in ("test_accuracy", "best_test_accuracy", "num_parameters", "tokens_per_image",
                              "steps_done", "train_images_per_s", "eval_images_per_s", "backend")}
        for m, r in results.items()}}, indent=1))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    p.add_argument("--total-s", type=float, default=148.0, help="hard wall cap of the whole command")
    p.add_argument("--train-s", type=float, default=40.0, help="training + evaluation budget of each model")
    p.add_argument("--vil-box-s", type=float, default=78.0, help="time box of the ViL part (start-up, data, "
                   "backend probe, training, final evaluation)")
    p.add_argument("--vit-box-s", type=float, default=56.0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", default="bf16", choices=["none", "bf16"])
    p.add_argument("--backend", default="fastest")
    p.add_argument("--steps", type=int, default=20000, help="requested steps; the budget shrinks them")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--eval-batch-size", type=int, default=2500)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--num-heads", type=int, default=3)
    p.add_argument("--bench-batch-size", type=int, default=32)
    p.add_argument("--tiny", action="store_true", help="CPU check: small model, few steps, tiny bench")
    a = p.parse_args(argv)
    if a.tiny:
        a.device, a.amp, a.steps, a.batch_size, a.dim, a.depth, a.num_heads = "cpu", "none", 20, 32, 32, 2, 2
        a.eval_batch_size = 1000
    start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    parts: dict = {}

    def left(box: float) -> float:
        return min(box, a.total_s - (time.perf_counter() - start) - 2.0)

    for model, box in (("vil", a.vil_box_s), ("vit", a.vit_box_s)):
        run_part(model, train_command(model, a, out), left(box), out / f"{model}.log", parts)
        write_summary(out, a, parts, argv)
    run_part("bench", bench_command(a), left(a.total_s), out / "bench.log", parts)
    write_summary(out, a, parts, argv)
    print((out / "results.md").read_text())
    return 0 if all(v["status"] == "ok" for v in parts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
