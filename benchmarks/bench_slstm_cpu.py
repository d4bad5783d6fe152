"""sLSTM on CPU: our fused loop ("fused" backend) vs the official xlstm sLSTMLayer "vanilla" backend.

Layer level, same weights: the official layer's own projections, conv and group norm, with only the cell
swapped for `flashxlstm.ops.slstm`. Outputs are checked equal first; then forward (no grad) and forward +
backward are timed alternately (median of repeats). Writes benchmarks/results/slstm_cpu.md.

    python benchmarks/bench_slstm_cpu.py [--B 8 --T 256 --D 256 --NH 4 --repeats 5 --threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from flashxlstm.ops import slstm
from machine_info import cpu_model


def official_layer(D: int, NH: int, seed: int = 0):
    from xlstm.blocks.slstm.layer import sLSTMLayer, sLSTMLayerConfig

    torch.manual_seed(seed)
    cfg = sLSTMLayerConfig(embedding_dim=D, num_heads=NH, backend="vanilla", conv1d_kernel_size=4,
                           dtype="float32", recurrent_weight_init="standard")
    return sLSTMLayer(cfg)


def ours_forward(layer, x: torch.Tensor, backend: str = "fused") -> torch.Tensor:
    """The official layer's computation with the cell replaced by our op (same parameters, views only)."""
    cfg = layer.config
    B, S, D = x.shape
    NH, DH = cfg.num_heads, D // cfg.num_heads
    x_conv = layer.conv_act_fn(layer.conv1d(x))
    gates = torch.cat([layer.fgate(x_conv), layer.igate(x_conv), layer.zgate(x), layer.ogate(x)], dim=-1)
    cell = layer.slstm_cell  # vanilla internal layouts: R (NH, 4*DH, DH), bias (4*NH*DH) ordered (gate, head, dim)
    R = cell._recurrent_kernel_.view(NH, 4, DH, DH).transpose(0, 1)
    b = cell._bias_.view(4, NH, DH)
    h, _ = slstm(gates.view(B, S, 4, NH, DH), R, b, backend=backend)
    return layer.group_norm(h.transpose(1, 2)).transpose(1, 2).reshape(B, S, D)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def measure(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--D", type=int, default=256)
    ap.add_argument("--NH", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "slstm_cpu.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import xlstm

    layer = official_layer(args.D, args.NH)
    x = torch.randn(args.B, args.T, args.D)
    with torch.no_grad():
        ref = layer(x)
        ours = ours_forward(layer, x)
    err = rel_err(ours, ref)
    print(f"relative difference of the layer outputs: {err:.2e}")
    assert err < 1e-5, "outputs differ; not timing"

    def fwbw(fn):
        def run():
            layer.zero_grad(set_to_none=True)
            fn().square().mean().backward()
        return run

    def fw(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    # op level: the official vanilla cell vs our op on the same gate pre-activations
    NH, DH = args.NH, args.D // args.NH
    cell = layer.slstm_cell
    gates = torch.randn(args.B, args.T, 4 * args.D)
    R = cell._recurrent_kernel_.view(NH, 4, DH, DH).transpose(0, 1)
    b = cell._bias_.view(4, NH, DH)
    gq = gates.clone().requires_grad_(True)  # its .grad accumulates over repeats: the same cost on both sides
    with torch.no_grad():
        op_err = rel_err(slstm(gates.view(args.B, args.T, 4, NH, DH), R, b, backend="fused")[0].transpose(1, 2), cell(gates)[0])
    print(f"relative difference of the cell outputs: {op_err:.2e}")
    assert op_err < 1e-5, "cell outputs differ; not timing"
    cell_ours = lambda g: slstm(g.view(args.B, args.T, 4, NH, DH), R, b, backend="fused")[0]
    cases = {
        ("layer forward", "official"): fw(lambda: layer(x)),
        ("layer forward", "ours"): fw(lambda: ours_forward(layer, x)),
        ("layer forward+backward", "official"): fwbw(lambda: layer(x)),
        ("layer forward+backward", "ours"): fwbw(lambda: ours_forward(layer, x)),
        ("op forward", "official"): fw(lambda: cell(gates)),
        ("op forward", "ours"): fw(lambda: cell_ours(gates)),
        ("op forward+backward", "official"): fwbw(lambda: cell(gq)[0]),
        ("op forward+backward", "ours"): fwbw(lambda: cell_ours(gq)),
    }
    for fn in cases.values():  # warm-up
        fn()
    samples = {key: [] for key in cases}
    for _ in range(args.repeats):  # alternate, so load changes hit both sides alike
        for key, fn in cases.items():
            samples[key].append(measure(fn))
    med = {key: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v)) for key, v in samples.items()}
    passes = ("layer forward", "layer forward+backward", "op forward", "op forward+backward")
    rows = [(p, med[(p, "official")], med[(p, "ours")]) for p in passes]

    shape = f"B={args.B} T={args.T} D={args.D} NH={args.NH} (DH={args.D // args.NH}), float32, {args.threads} threads"
    lines = [
        "# sLSTM on CPU: flashxlstm \"cpu\" backend vs official xlstm sLSTMLayer \"vanilla\"",
        "",
        f"Same weights ({shape}); layer outputs agree to {err:.1e}, cell outputs to {op_err:.1e} relative. "
        f"{args.repeats} repeats.",
        "Layer: the official sLSTMLayer (conv, headwise gate projections, group norm) vs the same module with only the",
        "cell replaced by our op, so both rows include the same official projection code. Op: the official vanilla",
        "sLSTMCell vs `slstm(..., backend=\"cpu\")` on the same gate pre-activations.",
        "",
        "Times are medians over alternating repeats; CPU time is the process's CPU seconds (robust to other",
        "load on the machine), wall time is what a user waits.",
        "",
        "| pass | official vanilla CPU ms | flashxlstm cpu CPU ms | speed-up (CPU time) | official wall ms | flashxlstm wall ms | speed-up (wall) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (aw, ac), (bw, bc) in rows:
        lines.append(f"| {name} | {ac * 1e3:.1f} | {bc * 1e3:.1f} | {ac / bc:.1f}x | {aw * 1e3:.1f} | {bw * 1e3:.1f} | {aw / bw:.1f}x |")
    lines += [
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores (shared with other jobs; load average {os.getloadavg()[0]:.1f}); "
        f"Python {platform.python_version()}, torch {torch.__version__}, xlstm {getattr(xlstm, '__version__', '2.0.6')}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
