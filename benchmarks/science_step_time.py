"""Training-step time of the three science models at a small width (by default on CPU): is the NeurIPS
xLSTM[7:1] step in proportion to the others, and where does its time go?

The models keep the shapes of the 125M presets, scaled down by default: the same width for all, the 7B family
with `--blocks` blocks, xLSTM[7:1] with twice as many (as large-125m's 12 to xlstm71-125m's 24; the last of every
8 is an sLSTM block), the transformers Llama sized like the 7B-family model (`--width 768 --blocks 12 --heads 4
--vocab 16384` are the 125M presets themselves). Each is timed over `--steps` full optimiser steps (forward,
backward, AdamW) after `--warmup` untimed ones, on windows (no document reset) and on packed documents
(cu_seqlens: the recurrent state resets at every document start; the Llama ignores them). For xLSTM[7:1] the
forward + backward of its mLSTM and sLSTM blocks are also timed one block at a time. On CPU the clock is the
process's CPU time on one thread (other load on the machine does not count); on CUDA it is wall time between
synchronisations under bf16 autocast, and `--profile` adds the CUDA kernels of one xLSTM[7:1] step by time.

    python benchmarks/science_step_time.py --out benchmarks/results/science_step_time.md
    python benchmarks/science_step_time.py --device cuda --width 768 --blocks 12 --heads 4 --vocab 16384 \
        --batch-size 32 --seq-len 512 --doc-len 2200 --profile --out step_time_h200.md
"""
from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def specs(width: int, blocks: int, heads: int) -> dict:
    return {"xlstm71": {"preset": "xlstm71-125m", "embedding_dim": width, "num_blocks": 2 * blocks,
                        "slstm_at": "xLSTM[7:1]", "mlstm_num_heads": heads, "slstm_num_heads": heads},
            "large": {"preset": "large-125m", "embedding_dim": width, "num_blocks": blocks, "num_heads": heads}}


def batch(args, vocab: int):
    """(inputs, targets, cu_seqlens): random tokens; documents of lengths drawn around --doc-len."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch_size, args.seq_len + 1), generator=g)
    cu, pos = [0], 0
    total = args.batch_size * args.seq_len
    while pos < total:
        row_end = (pos // args.seq_len + 1) * args.seq_len
        pos = min(row_end, pos + int(torch.randint(1, 2 * args.doc_len, (1,), generator=g)))
        cu.append(pos)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), torch.tensor(cu)


class Clock:
    """CPU: the process's CPU time; CUDA: wall time after a synchronisation."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()


def amp(device: torch.device):
    from flashxlstm.training.engine import autocast

    return autocast(device, "bf16" if device.type == "cuda" else "none")


def one_step(module, opt, inputs, targets, cu, device) -> None:
    with amp(device):
        s, c, _ = module(inputs, targets, cu)
    (s / c).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def time_steps(module, params, inputs, targets, cu, args, device) -> float:
    clock = Clock(device)
    opt = torch.optim.AdamW(params, lr=1e-4)
    for k in range(args.warmup + args.steps):
        if k == args.warmup:
            t0 = clock()
        one_step(module, opt, inputs, targets, cu, device)
    return (clock() - t0) / args.steps


def time_blocks(model, inputs, args, device) -> dict[str, float]:
    """Mean fw + bw seconds of one block of each kind, on the embedded inputs (no document reset)."""
    clock = Clock(device)
    x = model.token_embedding(inputs).detach().requires_grad_()
    out: dict[str, list[float]] = {}
    for blk in model.stack.blocks:
        kind = type(blk).__name__
        for k in range(args.warmup + args.steps):
            if k == args.warmup:
                t0 = clock()
            with amp(device):
                y = blk(x)
            y = y[0] if isinstance(y, tuple) else y
            y.float().square().mean().backward()
        out.setdefault(kind, []).append((clock() - t0) / args.steps)
    return {k: sum(v) / len(v) for k, v in out.items()} | {f"{k} count": len(v) for k, v in out.items()}


def kernel_profile(module, params, inputs, targets, device, top: int = 20) -> list[str]:
    """The CUDA kernels of one full step by total time (a markdown table)."""
    from torch.profiler import ProfilerActivity, profile

    opt = torch.optim.AdamW(params, lr=1e-4)
    one_step(module, opt, inputs, targets, None, device)
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        one_step(module, opt, inputs, targets, None, device)
        torch.cuda.synchronize(device)
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    lines = [f"CUDA kernels of one xLSTM[7:1] step (windows): {total / 1e3:.1f} ms of device time in all", "",
             "| kernel | calls | ms | share |", "|---|---|---|---|"]
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        lines.append(f"| `{e.key[:90]}` | {e.count} | {e.self_device_time_total / 1e3:.2f} | "
                     f"{e.self_device_time_total / max(total, 1):.1%} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--blocks", type=int, default=4, help="7B-family blocks (xLSTM[7:1] gets twice as many)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--doc-len", type=int, default=300, help="mean document length of the packed batch")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (kernel compilation)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true", help="CUDA: the kernels of one xLSTM[7:1] step")
    p.add_argument("--no-packed", action="store_true", help="time the windows feed only")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    from bench_train import build_llama, llama_config
    from science_lm import causality_check, llama_loss

    from flashxlstm.training.lm_loss import CausalLMLoss
    from flashxlstm.training.presets import build_model, resolve_model

    inputs, targets, cu = (t.to(device) for t in batch(args, args.vocab))
    rows, blocks = [], {}
    built = {}
    for name, spec in specs(args.width, args.blocks, args.heads).items():
        torch.manual_seed(0)
        family, fields = resolve_model(spec, args.vocab)
        built[name] = build_model(family, fields).to(device)
    cfg = llama_config(args.width, sum(p.numel() for p in built["large"].parameters()), args.vocab)
    built["llama"] = build_llama(cfg, device, ac=False)
    profile_lines = []
    for name, model in built.items():
        module = llama_loss(model) if name == "llama" else CausalLMLoss(model)
        params = list(model.parameters())
        cc = causality_check(module, args.vocab, args.seq_len, device, "bf16" if device.type == "cuda" else "none")
        print(f"{name}: causal check, max change before / after t: {cc['prefix_max_diff']:.1e} / "
              f"{cc['suffix_max_diff']:.1e}", flush=True)
        t_win = time_steps(module, params, inputs, targets, None, args, device)
        t_pack = (time_steps(module, params, inputs, targets, cu, args, device)
                  if name != "llama" and not args.no_packed else None)
        print(f"{name}: {t_win * 1e3:.1f} ms / step (windows)"
              + ("" if t_pack is None else f", {t_pack * 1e3:.1f} ms (packed)"), flush=True)
        depth = cfg.num_hidden_layers if name == "llama" else len(getattr(model, "stack", None).blocks
                                                                   if hasattr(model, "stack") else model.backbone.blocks)
        rows.append((name, depth, sum(q.numel() for q in params), t_win, t_pack, cc))
        if name == "xlstm71":
            blocks = time_blocks(model, inputs, args, device)
            if args.profile and device.type == "cuda":
                profile_lines = kernel_profile(module, params, inputs, targets, device)
    tokens = args.batch_size * args.seq_len
    ref = {r[0]: r[3] for r in rows}["llama"]
    where = (f"{torch.cuda.get_device_name(device)}, bf16 autocast, wall time" if device.type == "cuda" else
             f"{platform.processor() or platform.machine()}, {args.threads} thread(s), CPU time")
    clock = "ms" if device.type == "cuda" else "CPU ms"
    lines = [f"command: python benchmarks/science_step_time.py {' '.join(sys.argv[1:])}",
             f"machine: {where}; torch "
             f"{torch.__version__}, transformers {importlib.metadata.version('transformers')}, python "
             f"{platform.python_version()}",
             f"width {args.width}, {args.batch_size} x {args.seq_len} tokens per step, vocab {args.vocab}; packed: "
             f"{len(cu) - 1} documents in the batch (cu_seqlens, mean length about {args.doc_len}, cut at rows)", "",
             f"| model | blocks | parameters | {clock} / step, windows | steps/s | tokens/s | x Llama's time | "
             f"{clock} / step, packed | causal check: max change before / after t |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, depth, n, t_win, t_pack, cc in rows:
        lines.append(f"| {name} | {depth} | {n:,} | {t_win * 1e3:.0f} | {1 / t_win:.2f} | {tokens / t_win:,.0f} | "
                     f"{t_win / ref:.2f} | {'-' if t_pack is None else f'{t_pack * 1e3:.0f}'} | "
                     f"{cc['prefix_max_diff']:.1e} / {cc['suffix_max_diff']:.1e} |")
    lines += ["", "xLSTM[7:1], one block at a time (forward + backward, windows):", ""]
    for kind in ("mLSTMBlock", "sLSTMBlock"):
        if kind in blocks:
            lines.append(f"- {kind}: {blocks[kind] * 1e3:.0f} ms each, {blocks[f'{kind} count']} of them "
                         f"({blocks[kind] * blocks[f'{kind} count'] * 1e3:.0f} ms)")
    if profile_lines:
        lines += [""] + profile_lines
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("# Training-step time of the science models at a small width\n\n" + "\n".join(lines)
                                  + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
