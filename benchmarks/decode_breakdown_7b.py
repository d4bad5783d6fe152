"""Where the xLSTM-7B decode step spends its time: GPU time per kernel kind, against the CUDA-graph step.

Random bf16 weights of the 7B shape (weight_mode fused), a 128-token prompt (the state has the same size
after any prompt), then for each batch size: the graph-captured step time, and torch.profiler's GPU time of
each kernel over eager steps, grouped as matmul (cuBLAS/CUTLASS), matvec (the Triton one-row kernel), mLSTM
layer step (Triton), fused glue (Triton) and other (embedding, soft cap, casts). Also which layouts the
first-use timing picked (layer step per batch size, matrix-vector kernel vs cuBLAS per weight shape). Graph step minus the kernel sum is time between kernels.

    python benchmarks/decode_breakdown_7b.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--batches", default="1,64")
    args = parser.parse_args()
    from flashxlstm import xLSTMLarge, xLSTMLargeConfig
    from flashxlstm.generation.cuda_graph import CUDAGraphStep
    from flashxlstm.ops.fused import linear as linear_mod
    from flashxlstm.ops.fused import layer_step as step_mod

    torch.manual_seed(0)
    with torch.device("meta"):
        model = xLSTMLarge(xLSTMLargeConfig(weight_mode="fused"))
    model = model.to(torch.bfloat16).to_empty(device="cuda")
    model.init_weights()
    model.eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = []
    for B in [int(b) for b in args.batches.split(",")]:
        with torch.no_grad():
            ids = torch.randint(0, 50304, (B, 128), device="cuda")
            out = model(ids, logits_to_keep=1)
            logits, state = out.logits, out.state
            tok = logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(3):
                model(tok, state)
            runner = CUDAGraphStep(model, tok, state)
            for _ in range(10):
                runner.step(tok)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(50):
                runner.step(tok)
            torch.cuda.synchronize()
            graph_ms = (time.perf_counter() - t0) / 50 * 1e3
            del runner
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    model(tok, state)
                torch.cuda.synchronize()
        groups: dict[str, float] = {}
        counts: dict[str, int] = {}
        is_kernel = lambda e: "CUDA" in str(getattr(e, "device_type", ""))
        kernels = [e for e in prof.key_averages() if is_kernel(e)]
        for ev in kernels:
            name = ev.key
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            low = name.lower()
            g = ("mlstm layer step" if "mlstm_layer_step_kernel" in name or "mlstm_step_kernel" in name else
                 "fused glue" if any(s in name for s in ("add_rms_norm", "head_norm_gate", "silu_mul")) else
                 "matvec (Triton)" if "gemv_kernel" in name else
                 "matmul" if any(s in low for s in ("gemm", "gemv", "cutlass", "sm90", "xmma", "splitk", "cublas")) else
                 "other")
            groups[g] = groups.get(g, 0.0) + t / 5 / 1e3  # ms per step
            counts[g] = counts.get(g, 0) + ev.count // 5
        row = dict(B=B, graph_step_ms=round(graph_ms, 3), tok_s=round(B / graph_ms * 1e3),
                   kernels_ms={k: round(v, 3) for k, v in groups.items()}, launches=counts,
                   kernel_sum_ms=round(sum(groups.values()), 3),
                   weight_GB_s_in_matmuls=round(weights / 1e9 / ((groups.get("matmul", 0) + groups.get("matvec (Triton)", 0)) / 1e3 or 1e9)),
                   state_GB=round(sum(t.numel() * 4 for s in state for t in s) / 1e9, 2))
        print(json.dumps(row), flush=True)
        top = sorted(kernels, key=lambda e: -(getattr(e, "device_time_total", 0) or 0))[:12]
        for e in top:
            print(f"   {(getattr(e, 'device_time_total', 0) or 0) / 5 / 1e3:8.3f} ms  x{e.count // 5:4d}  {e.key[:90]}")
        row["top_kernels"] = [(round((getattr(e, "device_time_total", 0) or 0) / 5 / 1e3, 4), e.count // 5, e.key[:120])
                              for e in top]
        rows.append(row)
        picks = dict(layer_step={str(k): v for k, v in step_mod.TUNER.choices.items()},
                     matvec={str(k): v for k, v in linear_mod.TUNER.choices.items()})
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "decode_breakdown_7b.json"), "w") as f:  # after each batch size
            json.dump(dict(rows=rows, picks=picks, device=torch.cuda.get_device_name(), torch=torch.__version__), f,
                      indent=1)
    print("picked:", json.dumps(picks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
