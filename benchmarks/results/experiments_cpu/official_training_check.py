"""Train the official xlstm.xLSTMLMModel and our xLSTMLM side by side on the same parity batches.

    python benchmarks/results/experiments_cpu/official_training_check.py [--steps 30] [--batch 32]

Both start from the same weights (the official model's own `reset_parameters()`, copied with `from_official`),
see the same batches (lengths 3..40, our parity generator), and use the official recipe of
NX-AI/xlstm experiments/main.py: AdamW (torch defaults betas=(0.9, 0.999), eps=1e-8), lr 1e-3, weight decay 0.1
on the model's own decay groups (`_create_weight_decay_optim_groups()` / our `param_groups`), the official
warm-up/cosine schedule (here 10 warm-up steps so the lr actually moves), no gradient clipping, fp32 on CPU.
Prints the per-step losses and the largest absolute / relative difference, for the paper's three parity
configs (parity_xlstm01, 11, 10: width 64, 2 blocks, 1 head, context 256, vocab 3).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import xlstm

from flashxlstm import from_official
from flashxlstm.tasks import formal_languages as fl


def official_lr(step: int, warmup: int, decay_until: int, max_lr: float, min_lr: float) -> float:
    """The official LinearWarmupCosineAnnealing value at scheduler step `step` (what optimizer step `step` uses)."""
    if step < warmup:
        return max_lr * step / warmup
    if step > decay_until:
        return min_lr
    if step < decay_until:
        ratio = (step - warmup) / (decay_until - warmup)
        return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (max_lr - min_lr)
    return min_lr


def official_config(slstm_at: list[int]) -> xlstm.xLSTMLMModelConfig:
    return xlstm.xLSTMLMModelConfig(
        mlstm_block=xlstm.mLSTMBlockConfig(mlstm=xlstm.mLSTMLayerConfig(num_heads=1)),
        slstm_block=xlstm.sLSTMBlockConfig(slstm=xlstm.sLSTMLayerConfig(num_heads=1, backend="vanilla"),
                                           feedforward=xlstm.FeedForwardConfig()),
        slstm_at=slstm_at, num_blocks=2, embedding_dim=64, context_length=256, vocab_size=3)


def compare(slstm_at: list[int], steps: int, batch: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    off = xlstm.xLSTMLMModel(official_config(slstm_at))
    off.reset_parameters()
    ours = from_official(off)
    wd_off, nwd_off = off._create_weight_decay_optim_groups()
    ours_groups = ours.param_groups(0.1)
    groups_match = (sum(p.numel() for p in wd_off) == sum(p.numel() for p in ours_groups[0]["params"])
                    and len(wd_off) == len(ours_groups[0]["params"]))
    opt_off = torch.optim.AdamW([{"params": list(wd_off), "weight_decay": 0.1},
                                 {"params": list(nwd_off), "weight_decay": 0.0}], lr=1e-3)
    opt_ours = torch.optim.AdamW(ours_groups, lr=1e-3)
    rng = np.random.default_rng(seed)
    losses = []
    for step in range(steps):
        x, y = fl.sample_batch("parity", rng, batch, 3, 40)
        lr = official_lr(step, 10, steps, 1e-3, 1e-6)
        row = []
        for model, opt, logits_of in ((off, opt_off, lambda m: m(x)), (ours, opt_ours, lambda m: m(x)[0])):
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad()
            loss = F.cross_entropy(logits_of(model).reshape(-1, 3), y.reshape(-1), ignore_index=-1)
            loss.backward()
            opt.step()
            row.append(loss.item())
        losses.append(row)
    after = from_official(off).state_dict()  # the official weights after training, in our layout
    weight_diff = max(float((after[k] - v).abs().max()) for k, v in ours.state_dict().items())
    diff = [abs(a - b) for a, b in losses]
    rel = [abs(a - b) / abs(a) for a, b in losses]
    return {"slstm_at": slstm_at, "steps": steps, "batch": batch, "decay_groups_match": groups_match,
            "num_decay_params": len(wd_off), "losses_official_ours": losses,
            "max_abs_loss_diff": max(diff), "max_rel_loss_diff": max(rel),
            "max_abs_weight_diff_after": weight_diff}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    for name, at in (("xlstm[0:1]", [0, 1]), ("xlstm[1:1]", [1]), ("xlstm[1:0]", [])):
        t0 = time.perf_counter()
        r = compare(at, args.steps, args.batch)
        r["model"], r["seconds"] = name, time.perf_counter() - t0
        results.append(r)
        first, last = r["losses_official_ours"][0], r["losses_official_ours"][-1]
        print(f"{name}: decay groups match {r['decay_groups_match']} ({r['num_decay_params']} tensors); "
              f"loss step 1 {first[0]:.6f} / {first[1]:.6f}, step {args.steps} {last[0]:.6f} / {last[1]:.6f}; "
              f"max |diff| {r['max_abs_loss_diff']:.2e}, max rel {r['max_rel_loss_diff']:.2e}; "
              f"max |weight diff| after {r['max_abs_weight_diff_after']:.2e} ({r['seconds']:.0f} s)",
              flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "torch": torch.__version__, "xlstm": "2.0.6",
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
