"""Images/s of ViL and its parameter-matched ViT at several tokens per image (linear vs quadratic cost).

    python benchmarks/bench_vision.py --device cuda --amp bf16 --tokens 196 1024
    python benchmarks/bench_vision.py --device cpu --dim 32 --depth 2 --tokens 16 64 --batch-size 8 --iters 2

Tokens per image T come from square images of side sqrt(T) * patch (patch 16: 196 tokens = 224 px, 1024 tokens
= 512 px). Both models see the same images; the table gives inference and training images/s and the ViL/ViT
ratio measured in the same run, plus the exact command, machine and versions.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from flashxlstm.models.vision import ViL, ViLConfig, ViT, ViTConfig, matched_vit, num_parameters


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(model, images, labels, *, train: bool, iters: int, amp: str, device: str) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
    cast = (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)) if amp == "bf16" else nullcontext

    def once():
        if train:
            with cast():
                loss = F.cross_entropy(model(images).float(), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), cast():
                model(images)

    model.train(train)
    for _ in range(2):  # warm-up: kernel compilation, allocation
        once()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        once()
    _sync(device)
    return iters * images.shape[0] / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[196, 1024], help="tokens per image (perfect squares)")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--dim", type=int, default=192, help="width (default 192, ViL-T / DeiT-T)")
    p.add_argument("--depth", type=int, default=24, help="ViL blocks (default 24, ViL-T); the ViT is matched")
    p.add_argument("--num-heads", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--backend", default="auto", help="mLSTM kernel of the ViL")
    a = p.parse_args(argv)
    machine = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {machine}; torch {torch.__version__}; python {platform.python_version()}")
    print("| tokens | image px | ViL params | ViT params (depth) | ViL infer img/s | ViT infer img/s | ratio |"
          " ViL train img/s | ViT train img/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for t in a.tokens:
        side = math.isqrt(t)
        if side * side != t:
            raise ValueError(f"--tokens must be perfect squares, got {t}")
        px = side * a.patch_size
        vil = ViL(ViLConfig(image_size=px, patch_size=a.patch_size, in_channels=3, num_classes=1000, dim=a.dim,
                            depth=a.depth, num_heads=a.num_heads, backend=a.backend)).to(a.device)
        vit = ViT(matched_vit(ViTConfig(image_size=px, patch_size=a.patch_size, in_channels=3, num_classes=1000,
                                        dim=a.dim, num_heads=a.num_heads), num_parameters(vil))).to(a.device)
        x = torch.randn(a.batch_size, 3, px, px, device=a.device)
        y = torch.randint(0, 1000, (a.batch_size,), device=a.device)
        r = {(n, tr): throughput(m, x, y, train=tr, iters=a.iters, amp=a.amp, device=a.device)
             for n, m in (("vil", vil), ("vit", vit)) for tr in (False, True)}
        print(f"| {t} | {px} | {num_parameters(vil)} | {num_parameters(vit)} ({vit.cfg.depth}) | "
              f"{r['vil', False]:.0f} | {r['vit', False]:.0f} | {r['vil', False] / r['vit', False]:.2f} | "
              f"{r['vil', True]:.0f} | {r['vit', True]:.0f} | {r['vil', True] / r['vit', True]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
