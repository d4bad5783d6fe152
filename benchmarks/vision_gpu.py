"""The vision accuracy run in one hard-capped command: ViL and the parameter-matched ViT trained in lockstep
(equal steps on the same batches, tasks/vision_pair.py) on Fashion-MNIST, evaluated on the test split.

    PYTHONPATH=$PWD/src python3 benchmarks/vision_gpu.py --out $OUT/vision --data-dir .gpu/vision/fashion-mnist --total-s 460
    PYTHONPATH=$PWD/src python benchmarks/vision_gpu.py --out /tmp/v --dataset digits --tiny    # CPU check

`--total-s` is the wall budget of the whole command: the training loop's time box (`time_budget_s`) is what
is left after start-up, less `--reserve-s` for data loading, the final evaluation and the record; `--steps`
caps the steps (the schedule follows whichever cap is nearer). OUT/results.json is rewritten at every
evaluation (`--eval-every` steps), so a kill keeps the numbers so far; OUT/results.md gets the table, the exact
command, the machine and the versions at the end. The images/s comparison is benchmarks/bench_vision.py.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

T0 = time.perf_counter()

import torch  # noqa: E402

from flashxlstm.tasks.vision_augment import AugmentConfig  # noqa: E402
from flashxlstm.tasks.vision_pair import PairConfig, pick_backend, summary_table, time_backends, train_pair  # noqa: E402


def run_probe(argv: list[str], a: argparse.Namespace, log) -> dict | None:
    """time_backends in a child process under `--probe-s`; None when it fails or runs out of time."""
    path = Path(a.out) / "backend_probe.json"
    Path(a.out).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, *argv, "--probe-json", str(path)]
    try:
        proc = subprocess.run(cmd, timeout=a.probe_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        log(f"backend probe: no answer within {a.probe_s:.0f} s")
        return None
    if proc.returncode != 0 or not path.is_file():
        log(f"backend probe failed (exit {proc.returncode}): {proc.stderr[-500:]}")
        return None
    return json.loads(path.read_text())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    p.add_argument("--total-s", type=float, default=460.0, help="wall budget of the whole command")
    p.add_argument("--reserve-s", type=float, default=25.0, help="kept for data loading, the final evaluation "
                   "and the record")
    p.add_argument("--steps", type=int, default=1_000_000, help="step cap (default: the time box alone)")
    p.add_argument("--eval-every", type=int, default=600, help="steps between evaluations")
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", default="bf16", choices=["none", "bf16"])
    p.add_argument("--no-graph", action="store_true")
    p.add_argument("--compile", default=None, help="torch.compile backend for the blocks (default: none)")
    p.add_argument("--backend", default="chunkwise", help="mLSTM kernel of the ViL; 'fastest': time chunkwise "
                   "and triton first in a child process (a crash there costs only the probe), train with the "
                   "faster one whose logits agree with chunkwise's")
    p.add_argument("--probe-s", type=float, default=45.0, help="time box of the backend probe")
    p.add_argument("--probe-json", default=None, help=argparse.SUPPRESS)  # the probe's child process
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.999, help="negative: no EMA")
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--num-heads", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=None, help="the ViL's mLSTM chunk (default: the whole "
                   "sequence up to 64 tokens, tasks/vision.py default_chunk_size)")
    p.add_argument("--train-eval-size", type=int, default=5000, help="clean training images evaluated at every "
                   "evaluation (the fit)")
    p.add_argument("--pad", type=int, default=2, help="augmentation: random-crop padding")
    p.add_argument("--hflip", type=float, default=0.5)
    p.add_argument("--erase", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="CPU check: small models, few steps")
    a = p.parse_args(argv)
    budget = lambda: max(a.total_s - (time.perf_counter() - T0) - a.reserve_s, 1.0)
    cfg = PairConfig(dataset=a.dataset, data_dir=a.data_dir, device=a.device, amp=a.amp, graph=not a.no_graph,
                     compile=a.compile, seed=a.seed, batch_size=a.batch_size, patch_size=a.patch_size, dim=a.dim,
                     depth=a.depth, num_heads=a.num_heads, backend=a.backend, chunk_size=a.chunk_size, lr=a.lr,
                     weight_decay=a.weight_decay, label_smoothing=a.label_smoothing,
                     ema_decay=None if a.ema_decay < 0 else a.ema_decay, warmup_steps=a.warmup_steps,
                     steps=a.steps, eval_every=a.eval_every, train_eval_size=a.train_eval_size,
                     augment=AugmentConfig(pad=a.pad, hflip=a.hflip, erase=a.erase), time_budget_s=budget())
    if a.tiny:
        cfg.device, cfg.amp, cfg.batch_size, cfg.dim, cfg.depth, cfg.num_heads = "cpu", "none", 32, 32, 2, 2
        cfg.eval_batch_size, cfg.steps, cfg.time_budget_s, cfg.eval_every = 100, 6, 60.0, 3
        cfg.warmup_steps, cfg.train_eval_size, cfg.time_every = 2, 200, 2
    torch.set_num_threads(2) if a.tiny else None
    log = lambda s: print(f"[{time.perf_counter() - T0:6.1f} s] {s}", flush=True)
    if a.probe_json:  # the child: time the backends, write them, exit
        Path(a.probe_json).write_text(json.dumps(time_backends(cfg)))
        return 0
    probe = None
    if cfg.backend == "fastest":
        probe = run_probe(argv, a, log)
        cfg.backend = pick_backend(probe) if probe else "chunkwise"
        log(f"backend probe: {probe}; training with {cfg.backend}")
        if not a.tiny:
            cfg.time_budget_s = budget()
    cfg.extra["backend_probe"] = probe
    res = train_pair(a.out, cfg, log=log)
    head = [f"Command: `python3 benchmarks/vision_gpu.py {shlex.join(argv)}`", "",
            f"Machine: {res['device_name']}; torch {torch.__version__}; python {platform.python_version()}; "
            f"wall {time.perf_counter() - T0:.0f} s of a {a.total_s:.0f} s cap", ""]
    text = "\n".join(head) + summary_table(res)
    (Path(a.out) / "results.md").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
