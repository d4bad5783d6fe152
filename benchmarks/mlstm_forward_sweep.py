"""Chunk-parallel mLSTM forward only: launch variants, each pass alone, and the peers' forward, per shape.

    python benchmarks/mlstm_forward_sweep.py [--out DIR] [--shapes 0,1,2,3] [--budget-s S] [--no-check]

A short GPU call for forward work (issue 4): for each shape of bench_mlstm.py's list, ours with the
library defaults against float64 (forward only, first 2 heads), TFLA xl_chunk's and FLA
chunk_simple_gla's forward and ours (whole, states pass alone, output pass alone); then, once per head
dims, `mlstm_kernels.cp_sweep`'s launch variants (the same times, h and final state against the walk's). No
forward+backward table (bench_mlstm.py makes that one). Writes mlstm_kernels.md / .json to --out.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("mlstm_bench", os.path.join(HERE, "bench_mlstm.py"))
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)  # drops this folder from sys.path, so `mlstm_kernels` is the peer package


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--shapes", default="0,1,2,3", help="indices into mlstm_kernels.SHAPES")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip what would start after this many seconds")
    ap.add_argument("--no-check", action="store_true", help="skip the float64 forward checks")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("mlstm_forward_sweep.py needs a CUDA GPU")
    mk.DEFAULTS.update(tokens=mk.tfn.SEGMENT["tokens"], forward=mk.tfn.FORWARD["variant"],
                       backward=mk.tfn.BACKWARD["variant"])
    t0 = time.time()
    deadline = t0 + args.budget_s
    info = mk.versions()
    mk.say(str(info))
    mk.say(f"cp config default (DQK 256, DV 512): {mk.tfn._cp_config(256, 512, 64)}")
    bw, tf = mk.ceilings()
    shapes = [mk.SHAPES[int(j)] for j in args.shapes.split(",")]
    for shape in shapes:  # first the defaults and the peers on every shape
        if not args.no_check and time.time() < deadline:
            mk.check_against_f64(*shape, torch.bfloat16, 1e-2, grad=False, label="timed fw")
        mk.cp_sweep([shape], deadline, peers=True, variants=[{}])
        mk.write_report(args.out, info, bw, tf)  # partial results survive a timeout
    seen = set()
    for shape in shapes:  # then the launch variants, once per head dims
        if shape[3:] in seen:
            continue
        seen.add(shape[3:])
        BK = mk.triton.next_power_of_2(shape[3])
        mk.cp_sweep([shape], deadline, variants=[v for v in mk.SWEEP_CP[BK] if v])
        mk.write_report(args.out, info, bw, tf)
    mk.say(f"done in {time.time() - t0:.0f} s")
    mk.write_report(args.out, info, bw, tf)


if __name__ == "__main__":
    main()
