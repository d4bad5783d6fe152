"""The sLSTM Triton kernels' rounding points, emulated in float64 on the CPU: which rounding costs accuracy.

    python benchmarks/slstm_rounding_emulation.py [--heads 4x256] [--B 16] [--T 32] [--seeds 2] [--h-only]

The kernels compute everything in fp32 except the two recurrent products, whose fp32 operand is rounded to
the dot dtype (bf16 here): h in the forward (raw = x + b + R h), the gate gradients draw in the backward
(dh = R^T draw). This runs the stabilized recurrence in float64 with only those operands rounded, in four
ways: exact (the reference), both rounded once, h rounded once and draw split into hi + lo bf16 parts, both
split (what the kernels do with gradients), and prints the relative norm error of h and every gradient
against the exact run. bf16 inputs (x, R, b) as in the GPU check; R is exact in bf16. --h-only puts the loss
on h alone (no final-state terms): the final m, c, n are what the stabilizer's max makes piecewise.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

BF16 = torch.bfloat16
NAMES = ("h", "dx", "dR", "db", "dc0", "dn0", "dm0", "dh0")
MODES = {"exact": ("exact", "exact"), "h, draw rounded": ("round", "round"),
         "h rounded, draw split": ("round", "split"), "h, draw split": ("split", "split")}


def operand(v: torch.Tensor, how: str) -> torch.Tensor:
    """v as a dot operand: exact, rounded to bf16, or split into bf16 hi + lo (summed in float64)."""
    if how == "exact":
        return v
    hi = v.to(BF16).double()
    return hi if how == "round" else hi + (v - hi).to(BF16).double()


class Product(torch.autograd.Function):
    """R h with h as the forward's dot operand; the backward's dh uses draw as its dot operand, dR the
    exact float64 draw and h (the kernels' dR is an fp32 product of the saved fp32 tensors)."""

    @staticmethod
    def forward(ctx, h, R, fw, bw):
        ctx.save_for_backward(h, R)
        ctx.bw = bw
        return torch.einsum("ghjp,bhp->bghj", R, operand(h, fw))

    @staticmethod
    def backward(ctx, g):
        h, R = ctx.saved_tensors
        dh = torch.einsum("ghjp,bghj->bhp", R, operand(g, ctx.bw))
        return dh, torch.einsum("bghj,bhp->ghjp", g, h), None, None


def run(x, R, b, state, fw, bw):
    c, n, m, h = state
    hs = []
    for t in range(x.shape[1]):
        ri, rf, rz, ro = (x[:, t] + b + Product.apply(h, R, fw, bw)).unbind(1)
        a = F.logsigmoid(rf) + torch.where(n == 0, torch.full_like(m, float("-inf")), m)
        m = torch.maximum(ri, a)
        ig, fg = torch.exp(ri - m), torch.exp(a - m)
        c = fg * c + ig * torch.tanh(rz)
        n = fg * n + ig
        h = torch.sigmoid(ro) * c / n
        hs.append(h)
    return torch.stack(hs, 1), (c, n, m, h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", default="4x256")
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--h-only", action="store_true")
    args = ap.parse_args()
    NH, DH = (int(v) for v in args.heads.split("x"))
    B, T = args.B, args.T
    worst: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, T, 4, NH, DH, generator=g) * 2
        R = torch.randn(4, NH, DH, DH, generator=g) / DH**0.5
        b = torch.randn(4, NH, DH, generator=g)
        st = [torch.randn(B, NH, DH, generator=g), torch.rand(B, NH, DH, generator=g) + 0.5,
              torch.randn(B, NH, DH, generator=g), torch.randn(B, NH, DH, generator=g).tanh()]
        inputs = [(t.to(BF16) if j < 3 else t).double() for j, t in enumerate([x, R, b, *st])]
        w = [torch.randn(B, T, NH, DH, generator=g, dtype=torch.float64)]
        w += [torch.randn(B, NH, DH, generator=g, dtype=torch.float64) * (0.0 if args.h_only else 1.0)
              for _ in range(4)]
        results = {}
        for name, (fw, bw) in MODES.items():
            ys = [t.clone().requires_grad_(True) for t in inputs]
            h, fin = run(ys[0], ys[1], ys[2], ys[3:], fw, bw)
            loss = sum((o * v).sum() for o, v in zip((h, *fin), w))
            results[name] = [h.detach(), *torch.autograd.grad(loss, ys)]
        ref = results.pop("exact")
        for name, res in results.items():
            errs = [((a - r).norm() / r.norm()).item() for a, r in zip(res, ref)]
            worst[name] = [max(p, q) for p, q in zip(worst.get(name, errs), errs)]
            print(f"seed {seed} {name:22s} " + " ".join(f"{k}={v:.1e}" for k, v in zip(NAMES, errs)), flush=True)
    print(f"worst over {args.seeds} seeds ({NH}x{DH}, B {B}, T {T}{', loss on h only' if args.h_only else ''}):")
    for name, errs in worst.items():
        print(f"  {name:22s} " + " ".join(f"{k}={v:.1e}" for k, v in zip(NAMES, errs)))


if __name__ == "__main__":
    main()
