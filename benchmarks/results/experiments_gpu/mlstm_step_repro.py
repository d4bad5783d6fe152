"""Repro for the slow MQAR xLSTM[1:0] step on the H200 (~600 ms with 9 jobs sharing the GPU; Transformer 78 ms).

    python benchmarks/results/experiments_gpu/mlstm_step_repro.py            # on the GPU
    python benchmarks/results/experiments_gpu/mlstm_step_repro.py --small    # CPU plumbing check

Times forward + backward of `flashxlstm.ops.mlstm` at the MQAR model's shapes (B 256, 1 head, T 256,
head dims 256, float32 and bf16) for the Triton and the torch chunkwise backends, then one training step of
the whole MQAR model (width 128, 2 mLSTM blocks, vocab 256) per backend.
"""
import argparse
import time

import torch

from flashxlstm.ops import mlstm
from flashxlstm.tasks.zoo import ModelSize, build_model


def timed(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    B, T, D = (4, 64, 32) if args.small else (256, 256, 256)
    backends = ["triton", "chunkwise"] if dev == "cuda" else ["chunkwise"]
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(B, 1, T, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
        i, f = (torch.randn(B, 1, T, device=dev, requires_grad=True) for _ in range(2))
        for b in backends:
            ms = timed(lambda: mlstm(q, k, v, i, f, backend=b)[0].float().sum().backward(), 5)
            print(f"mlstm fwd+bwd {b:9s} {str(dtype):15s} (B {B}, NH 1, T {T}, D {D}): {ms:8.2f} ms", flush=True)
    x = torch.randint(0, 256, (B, T), device=dev)
    for b in backends:
        model = build_model("xlstm[1:0]", 256, ModelSize(128 if not args.small else 32, 2, 1, mlstm_backend=b)).to(dev)
        ms = timed(lambda: model(x).float().logsumexp(-1).mean().backward(), 5)
        print(f"MQAR xlstm[1:0] fwd+bwd, mLSTM {b}: {ms:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
