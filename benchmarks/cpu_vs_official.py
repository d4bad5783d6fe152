"""Forward+backward tokens/s of flashxlstm's NeurIPS xLSTM LM vs the official `xlstm` package, same weights, CPU.

Two models: mLSTM-only at context 1024 and xLSTM[1:1] (mLSTM + sLSTM) at context 256. Both libraries run the
same converted weights; steps alternate (official, ours, official, ours, ...) so machine noise hits both alike.
The official sLSTM runs its "vanilla" backend (the CUDA one cannot run on a CPU). Prints a markdown table and,
with --save, writes it with the command, machine and versions to benchmarks/results/cpu_vs_official.md.

    python benchmarks/cpu_vs_official.py [--reps 5] [--save]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import flashxlstm
from flashxlstm import from_official
from machine_info import cpu_model

CASES = [
    # name, context, batch, embedding_dim, num_blocks, slstm_at, heads
    ("mLSTM-only", 1024, 4, 128, 2, [], 4),
    ("xLSTM[1:1]", 256, 8, 128, 2, [1], 4),
]
VOCAB = 256


def official_model(ctx: int, dim: int, num_blocks: int, slstm_at: list[int], heads: int):
    import xlstm

    cfg = xlstm.xLSTMLMModelConfig(
        mlstm_block=xlstm.mLSTMBlockConfig(mlstm=xlstm.mLSTMLayerConfig(num_heads=heads)),
        slstm_block=xlstm.sLSTMBlockConfig(slstm=xlstm.sLSTMLayerConfig(backend="vanilla", num_heads=heads)),
        context_length=ctx, num_blocks=num_blocks, embedding_dim=dim, slstm_at=slstm_at, vocab_size=VOCAB)
    model = xlstm.xLSTMLMModel(cfg)
    model.reset_parameters()
    return model


def step_time(forward, ids: torch.Tensor, targets: torch.Tensor, params) -> float:
    t0 = time.perf_counter()
    logits = forward(ids)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    dt = time.perf_counter() - t0
    for p in params:
        p.grad = None
    return dt


def run_case(name, ctx, batch, dim, num_blocks, slstm_at, heads, reps):
    torch.manual_seed(0)
    off = official_model(ctx, dim, num_blocks, slstm_at, heads)
    ours = from_official(off)
    ids = torch.randint(0, VOCAB, (batch, ctx))
    targets = torch.randint(0, VOCAB, (batch, ctx))
    with torch.no_grad():  # same weights, same function
        err = ((off(ids) - ours(ids)[0]).abs().max() / off(ids).abs().max()).item()
    fwd_off = off
    fwd_ours = lambda x: ours(x)[0]
    p_off, p_ours = list(off.parameters()), list(ours.parameters())
    step_time(fwd_off, ids, targets, p_off)  # warm-up
    step_time(fwd_ours, ids, targets, p_ours)
    t_off, t_ours = [], []
    for _ in range(reps):
        t_off.append(step_time(fwd_off, ids, targets, p_off))
        t_ours.append(step_time(fwd_ours, ids, targets, p_ours))
    tok = batch * ctx
    m_off, m_ours = statistics.median(t_off), statistics.median(t_ours)
    return dict(name=name, ctx=ctx, batch=batch, dim=dim, blocks=num_blocks, err=err,
                tps_off=tok / m_off, tps_ours=tok / m_ours, speedup=m_off / m_ours)


def peak_step_memory(which: str, case_idx: int) -> float:
    """MiB that one fwd+bwd step adds to the process's peak RSS (run alone in a fresh subprocess)."""
    out = subprocess.run([sys.executable, __file__, "--memory-probe", which, str(case_idx)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["mib"]


def memory_probe(which: str, case_idx: int) -> None:
    name, ctx, batch, dim, num_blocks, slstm_at, heads = CASES[case_idx]
    torch.manual_seed(0)
    model = official_model(ctx, dim, num_blocks, slstm_at, heads)
    if which == "ours":
        model = from_official(model)
    fwd = model if which == "official" else (lambda x: model(x).logits)
    ids = torch.randint(0, VOCAB, (batch, ctx))
    base = peak_rss_kib()
    step_time(fwd, ids, ids, list(model.parameters()))
    print(json.dumps({"mib": (peak_rss_kib() - base) / 1024}))


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is not inherited from the parent)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def versions() -> str:
    import xlstm

    cpu = cpu_model()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    return (f"- machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}\n"
            f"- python {platform.python_version()}, torch {torch.__version__}, xlstm {getattr(xlstm, '__version__', '?')}, "
            f"flashxlstm {flashxlstm.__version__} (git {commit})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--memory-probe", nargs=2, metavar=("WHICH", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe[0], int(args.memory_probe[1]))
    load_before = os.getloadavg()
    rows = []
    for idx, case in enumerate(CASES):
        r = run_case(*case, reps=args.reps)
        r["mem_off"], r["mem_ours"] = peak_step_memory("official", idx), peak_step_memory("ours", idx)
        rows.append(r)
        print(f"{r['name']}: official {r['tps_off']:.0f} tok/s, ours {r['tps_ours']:.0f} tok/s, "
              f"x{r['speedup']:.2f} (logits rel. diff {r['err']:.1e}); step memory official {r['mem_off']:.0f} MiB, "
              f"ours {r['mem_ours']:.0f} MiB", flush=True)
    table = ["| model | context | batch | D | blocks | official tok/s | flashxlstm tok/s | speed-up | "
             "official step MiB | flashxlstm step MiB | max rel. logit diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['name']} | {r['ctx']} | {r['batch']} | {r['dim']} | {r['blocks']} | {r['tps_off']:.0f} | "
                     f"{r['tps_ours']:.0f} | {r['speedup']:.2f}x | {r['mem_off']:.0f} | {r['mem_ours']:.0f} | {r['err']:.1e} |")
    text = "\n".join(table)
    load = f"- load average (1 min) before / after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores " \
           "(other processes share the CPU; alternating steps keep the ratio fair, absolute tok/s are depressed)"
    print(text)
    if args.save:
        cmd = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
        out = Path(__file__).parent / "results" / "cpu_vs_official.md"
        out.write_text(
            "# Forward+backward training throughput on CPU: flashxlstm vs official xlstm (same weights)\n\n"
            f"Command: `{cmd}`\n\n{versions()}\n- median of {args.reps} alternating fwd+bwd steps "
            f"(cross-entropy loss), vocab {VOCAB}, 4 heads, official sLSTM backend 'vanilla'\n{load}\n"
            "- step MiB: growth of peak RSS over one fwd+bwd step, each library alone in a fresh process\n\n"
            f"{text}\n")
        print(f"saved {out}")


if __name__ == "__main__":
    main()
