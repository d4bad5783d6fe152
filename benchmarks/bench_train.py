"""Training throughput of flashxlstm's trainer vs a Llama of the same size (transformers LlamaForCausalLM, SDPA).

NOT RUN YET: written for issue 13's GPU benchmark; no numbers from it exist in the repository.

One GPU, random tokens (throughput does not depend on the text), a full optimiser step per iteration (forward,
backward, AdamW) at equal tokens per step for both sides. Ours runs the path `flashxlstm train --data` runs
(CausalLMLoss: packed rows, chunked cross-entropy, optional activation checkpointing and torch.compile);
Llama runs `model(input_ids, labels=...)` with SDPA attention, its own best path, and the same options where
they exist (gradient checkpointing, torch.compile). The Llama depth is chosen so its parameter count is the
closest to ours at the same width. Prints one table row per (side, batch x length): tokens/s, peak memory
(torch.cuda.max_memory_allocated), MFU = model FLOPs / (time x the measured bf16 matmul peak), where model
FLOPs per token are 6 x (non-embedding parameters) + 6 x width x vocab, plus 6 x layers x width x length for
Llama's causal attention (the mLSTM's own state FLOPs are not counted, so ours is a lower bound).

    python benchmarks/bench_train.py --preset large-125m --shapes 8x2048,4x8192,1x32768 --amp bf16
    python benchmarks/bench_train.py --preset large-1.3b --shapes 4x2048,2x8192,1x32768 --amp bf16 --compile
    python benchmarks/bench_train.py --preset large-125m --shapes 4x8192 --activation-checkpointing
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import torch


def _peak_tflops(device) -> float:
    from flashxlstm.training.lm import measured_peak_tflops

    return measured_peak_tflops(device)


def _ours(preset: str, vocab: int, args, device):
    from flashxlstm.training.lm_loss import CausalLMLoss, checkpoint_blocks
    from flashxlstm.training.presets import build_model, preset_config

    family, fields = preset_config(preset, vocab)
    model = build_model(family, fields).to(device)
    if args.activation_checkpointing:
        checkpoint_blocks(model)
    module = CausalLMLoss(model)
    step_module = torch.compile(module) if args.compile else module

    def loss_fn(ids, targets):
        B, S = ids.shape
        cu = torch.arange(0, B * S + 1, S, device=device)  # every row its own document
        loss_sum, count, _ = step_module(ids, targets, cu)
        return loss_sum / count

    return model, loss_fn


def _llama(width: int, target_params: int, vocab: int, args, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, width // 128)
    best = None
    for layers in range(1, 97):
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=int(8 * width / 3 / 64 + 1) * 64,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=1 << 17, tie_word_embeddings=False, attn_implementation="sdpa")
        with torch.device("meta"):
            n = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (cfg, n)
    model = LlamaForCausalLM(best[0]).to(device)
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward = torch.compile(model) if args.compile else model

    def loss_fn(ids, targets):
        return forward(input_ids=ids, labels=ids).loss

    return model, loss_fn


def _time(model, loss_fn, B, S, vocab, args, device) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, vocab, (B, S), device=device)
    targets = torch.roll(ids, -1, dims=1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.amp == "bf16" else torch.autocast("cuda", enabled=False)
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for it in range(args.warmup + args.iters):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with amp:
            loss = loss_fn(ids, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        if it >= args.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], torch.cuda.max_memory_allocated(device) / 2**30


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="large-125m")
    p.add_argument("--shapes", default="8x2048,4x8192,1x32768", help="BxS pairs at equal tokens per step")
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--amp", choices=["none", "bf16"], default="bf16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--sides", default="ours,llama")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("bench_train.py needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    peak = _peak_tflops(device)
    import transformers

    import flashxlstm  # noqa: F401

    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, python {platform.python_version()}; "
          f"measured bf16 matmul peak {peak:.0f} TFLOP/s")
    print("| side | params | B x S | tokens/s | peak memory (GiB) | MFU |")
    print("|---|---|---|---|---|---|")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ours_params = None
    for side in args.sides.split(","):
        for B, S in shapes:
            torch.manual_seed(0)
            if side == "ours":
                model, loss_fn = _ours(args.preset, args.vocab, args, device)
                ours_params = sum(q.numel() for q in model.parameters())
                width = model.lm_head.weight.shape[1]
                layers_attn = 0
            else:
                from flashxlstm.training.presets import preset_config

                width = preset_config(args.preset, args.vocab)[1]["embedding_dim"]
                if ours_params is None:
                    ours_params = _ours(args.preset, args.vocab, args, torch.device("meta"))[0]
                    ours_params = sum(q.numel() for q in ours_params.parameters())
                model, loss_fn = _llama(width, ours_params, args.vocab, args, device)
                layers_attn = model.config.num_hidden_layers
            n = sum(q.numel() for q in model.parameters())
            embed = 2 * width * args.vocab
            flops_token = 6 * (n - embed) + 6 * width * args.vocab + 6 * layers_attn * width * S
            try:
                t, mem = _time(model, loss_fn, B, S, args.vocab, args, device)
                tok_s = B * S / t
                print(f"| {side} | {n / 1e6:.1f}M | {B} x {S} | {tok_s:,.0f} | {mem:.1f} | "
                      f"{tok_s * flops_token / (peak * 1e12):.1%} |")
            except torch.cuda.OutOfMemoryError:
                print(f"| {side} | {n / 1e6:.1f}M | {B} x {S} | out of memory | | |")
            del model, loss_fn
            torch.cuda.empty_cache()
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
