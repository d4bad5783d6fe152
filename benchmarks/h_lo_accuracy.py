"""Gradient accuracy of the mLSTM Triton op with and without h's rounding residual (Variant.keep_h_lo), 16-bit.

    TRITON_INTERPRET=1 python benchmarks/h_lo_accuracy.py --shapes 128x32x64,256x128x256 --seeds 5

Runs the kernels under Triton's CPU interpreter (bf16 dots widened to fp32 as in tests/_mlstm_h_lo_cases.py,
since the interpreter multiplies bf16 tiles as raw bits) on fresh random inputs, B = 1, NH = 2, 64-step chunks, a
random initial state, the exp input gate, gates either ordinary (i ~ 2 N(0,1), f ~ 2 N(0,1) + 2), within the
model's soft cap (uniform in [-15, 15]) or extreme (uniform in [-30, 30], steps 3..8 masked), and prints per
(dtype, gates, keep_h_lo) the worst relative error (norm of the difference over the norm of the float64
reference, the step-by-step recurrence) of each gradient over the seeds and shapes. Same inputs each way.
With --layer the loss instead goes through the per-head LayerNorm x sigmoid(o), as in mLSTMLargeLayer, from a
zero state (tests/_mlstm_h_lo_cases.py layer_case), and the gradients of q, k, v, i, f, o are compared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1 (the kernels run on the CPU)"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
import triton  # noqa: E402

import _mlstm_h_lo_cases as hlo  # noqa: E402
import _mlstm_triton_cases as cases  # noqa: E402
from flashxlstm.ops.mlstm_cell.triton import function as tfn  # noqa: E402

GRADS = ("dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0")
GATES = {"ordinary": dict(gate_range=None, masked=()), "soft-cap 15": dict(gate_range=15.0, masked=()),
         "extreme 30": dict(gate_range=30.0, masked=((3, 9),))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="128x32x64", help="S x DQK x DV, comma-separated")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--layer", action="store_true", help="the loss through the per-head LayerNorm and output gate "
                                                         "(tests/_mlstm_h_lo_cases.py layer_case), from a zero "
                                                         "state, as in training")
    args = p.parse_args()
    if args.layer:
        return layer_main(args)
    rows = []
    cases.emit = lambda case, errors, tol, nan=False, **kw: rows.append(errors)
    worst: dict = {}
    for shape in args.shapes.split(","):
        S, DQK, DV = map(int, shape.split("x"))
        for dtype in (torch.bfloat16, torch.float16):
            for gates, kw in GATES.items():
                for seed in range(args.seeds):
                    for keep in (True, False):
                        with hlo.bf16_dots():
                            cases._sequence_case("sweep", 1, 2, S, DQK, DV, gate="exp", init="random", cu=None,
                                                 chunk=64, dtype=dtype, tol=0, seed=100 + seed,
                                                 variant=tfn.Variant(keep_h_lo=keep), **kw)
                        key = (str(dtype).split(".")[1], gates, keep)
                        acc = worst.setdefault(key, {})
                        for g in GRADS:
                            acc[g] = max(acc.get(g, 0.0), rows[-1][g])
                        print(json.dumps(dict(shape=shape, dtype=key[0], gates=gates, seed=seed, keep_h_lo=keep,
                                              **{g: rows[-1][g] for g in GRADS})), file=sys.stderr, flush=True)
    print(f"command: TRITON_INTERPRET=1 python {' '.join(sys.argv)}")
    print(f"machine: CPU ({platform.machine()}), Triton {triton.__version__} interpreter, torch {torch.__version__}")
    print()
    print("| dtype | gates | keep_h_lo | " + " | ".join(GRADS) + " |")
    print("|---|---|---|" + "---|" * len(GRADS))
    for (dt, gates, keep), acc in worst.items():
        print(f"| {dt} | {gates} | {keep} | " + " | ".join(f"{acc[g]:.1e}" for g in GRADS) + " |")


def layer_main(args) -> None:
    worst: dict = {}
    for shape in args.shapes.split(","):
        S, DQK, DV = map(int, shape.split("x"))
        for dtype in (torch.bfloat16, torch.float16):
            for gates, kw in GATES.items():
                for seed in range(args.seeds):
                    for keep in (True, False):
                        errs = hlo.layer_case(S, DQK, DV, dtype, 100 + seed, keep, **kw)
                        key = (str(dtype).split(".")[1], gates, keep)
                        acc = worst.setdefault(key, {})
                        for name in hlo.LAYER_GRADS:
                            acc[name] = max(acc.get(name, 0.0), errs[name])
                        print(json.dumps(dict(shape=shape, dtype=key[0], gates=gates, seed=seed, keep_h_lo=keep,
                                              **errs)), file=sys.stderr, flush=True)
    print(f"command: TRITON_INTERPRET=1 python {' '.join(sys.argv)}")
    print(f"machine: CPU ({platform.machine()}), Triton {triton.__version__} interpreter, torch {torch.__version__}")
    print()
    print("The loss through the per-head LayerNorm x sigmoid(o) (the layer's use of h), zero initial state.")
    print()
    print("| dtype | gates | keep_h_lo | " + " | ".join(hlo.LAYER_GRADS) + " |")
    print("|---|---|---|" + "---|" * len(hlo.LAYER_GRADS))
    for (dt, gates, keep), acc in worst.items():
        print(f"| {dt} | {gates} | {keep} | " + " | ".join(f"{acc[g]:.1e}" for g in hlo.LAYER_GRADS) + " |")


if __name__ == "__main__":
    main()
