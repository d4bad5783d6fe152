"""Training-step time of the three science models at a small width (by default on CPU): is the NeurIPS
xLSTM[7:1] step in proportion to the others, and where does its time go?

The models keep the shapes of the 125M presets scaled down: the same width for all, the 7B family with
`--blocks` blocks, xLSTM[7:1] with twice as many (as large-125m's 12 to xlstm71-125m's 24; the last of every 8
is an sLSTM block), the transformers Llama sized like the 7B-family model. Each is timed (process CPU time,
one thread, so other load on the machine does not count) over `--steps`
full optimiser steps (forward, backward, AdamW) after one untimed step, on windows (no document reset) and on
packed documents (cu_seqlens: the recurrent state resets at every document start; the Llama ignores them).
For xLSTM[7:1] the forward + backward of its mLSTM and sLSTM blocks are also timed one block at a time.

    python benchmarks/science_step_time.py --out benchmarks/results/science_step_time.md
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


def time_steps(module, params, inputs, targets, cu, steps: int) -> float:
    opt = torch.optim.AdamW(params, lr=1e-4)
    for k in range(steps + 1):
        if k == 1:
            t0 = time.process_time()
        s, c, _ = module(inputs, targets, cu)
        (s / c).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.process_time() - t0) / steps


def time_blocks(model, inputs, steps: int) -> dict[str, float]:
    """Mean fw + bw seconds of one block of each kind, on the embedded inputs (no document reset)."""
    x = model.token_embedding(inputs).detach().requires_grad_()
    out: dict[str, list[float]] = {}
    for blk in model.stack.blocks:
        kind = type(blk).__name__
        for k in range(steps + 1):
            if k == 1:
                t0 = time.process_time()
            y = blk(x)
            y = y[0] if isinstance(y, tuple) else y
            y.float().square().mean().backward()
        out.setdefault(kind, []).append((time.process_time() - t0) / steps)
    return {k: sum(v) / len(v) for k, v in out.items()} | {f"{k} count": len(v) for k, v in out.items()}


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
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from bench_train import build_llama, llama_config
    from science_lm import llama_loss

    from flashxlstm.training.lm_loss import CausalLMLoss
    from flashxlstm.training.presets import build_model, resolve_model

    inputs, targets, cu = batch(args, args.vocab)
    rows, blocks = [], {}
    built = {}
    for name, spec in specs(args.width, args.blocks, args.heads).items():
        torch.manual_seed(0)
        family, fields = resolve_model(spec, args.vocab)
        built[name] = build_model(family, fields)
    cfg = llama_config(args.width, sum(p.numel() for p in built["large"].parameters()), args.vocab)
    built["llama"] = build_llama(cfg, torch.device("cpu"), ac=False)
    for name, model in built.items():
        module = llama_loss(model) if name == "llama" else CausalLMLoss(model)
        params = list(model.parameters())
        t_win = time_steps(module, params, inputs, targets, None, args.steps)
        t_pack = time_steps(module, params, inputs, targets, cu, args.steps) if name != "llama" else None
        depth = cfg.num_hidden_layers if name == "llama" else len(getattr(model, "stack", None).blocks
                                                                   if hasattr(model, "stack") else model.backbone.blocks)
        rows.append((name, depth, sum(q.numel() for q in params), t_win, t_pack))
        if name == "xlstm71":
            blocks = time_blocks(model, inputs, args.steps)
    tokens = args.batch_size * args.seq_len
    ref = dict((r[0], r[3]) for r in rows)["llama"]
    lines = [f"command: python benchmarks/science_step_time.py {' '.join(sys.argv[1:])}",
             f"machine: {platform.processor() or platform.machine()}, {args.threads} thread(s); torch "
             f"{torch.__version__}, transformers {importlib.metadata.version('transformers')}, python "
             f"{platform.python_version()}",
             f"width {args.width}, {args.batch_size} x {args.seq_len} tokens per step, vocab {args.vocab}; packed: "
             f"{len(cu) - 1} documents in the batch (cu_seqlens, mean length about {args.doc_len}, cut at rows)", "",
             "| model | blocks | parameters | CPU ms / step, windows | steps/s | tokens/s | x Llama's time | CPU ms / step, packed |",
             "|---|---|---|---|---|---|---|---|"]
    for name, depth, n, t_win, t_pack in rows:
        lines.append(f"| {name} | {depth} | {n:,} | {t_win * 1e3:.0f} | {1 / t_win:.2f} | {tokens / t_win:,.0f} | "
                     f"{t_win / ref:.2f} | {'-' if t_pack is None else f'{t_pack * 1e3:.0f}'} |")
    lines += ["", "xLSTM[7:1], one block at a time (forward + backward, windows):", ""]
    for kind in ("mLSTMBlock", "sLSTMBlock"):
        if kind in blocks:
            lines.append(f"- {kind}: {blocks[kind] * 1e3:.0f} ms each, {blocks[f'{kind} count']} of them "
                         f"({blocks[kind] * blocks[f'{kind} count'] * 1e3:.0f} ms)")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("# Training-step time of the science models at a small width\n\n" + "\n".join(lines)
                                  + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
