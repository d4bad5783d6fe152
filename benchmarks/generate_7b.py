"""The xLSTM-7B shape end to end on one GPU: flashxlstm's xLSTMLarge vs the official xLSTMLarge, same run.

Random bf16 weights (no download): the official model is built first and ours is converted from it, so
both hold the same weights and the script also reports how close their logits and greedy tokens are.
Ours runs weight_mode "fused" (one matmul for q, k, v, o and one for the FFN up projections; the same
weights, converted in memory); the official runs its default "single" mode with the TFLA Triton kernels
("chunkwise--triton_limit_chunk": its "xl_chunk" kernel crashes the Triton 3.6 compiler in this model).

Measured (tokens/s, higher is better; memory in GB above the weights):
- prefill at 1 x 16384 and 16 x 2048: one forward over the prompt (ours keeps the last position's logits,
  as generation does; the official computes all logits, it has no option not to);
- chunked prefill (ours, 2048-token slices carrying the state) at 1 x 2048 and 1 x 16384: memory flat
  in prompt length;
- decode after a 2048-token prompt at batch 1, 16, 64: one step eager, and one step captured in a CUDA
  graph (ours: flashxlstm.generation.CUDAGraphStep, ping-ponging two state sets; official: its step
  captured once and replayed; it updates its state in place), greedy token choice included for ours.

    python benchmarks/generate_7b.py [--tiny] [--out DIR]

Writes generate_7b.md and generate_7b.json into --out (default $OUT or .). --tiny runs a small shape
(CPU smoke test of the script itself).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback

import torch  # noqa: E402

ROWS: list[dict] = []
NOTES: list[str] = []


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int = 1) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def mem_gb() -> float:
    return torch.cuda.memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0


def reset_peak() -> float:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return mem_gb()


def peak_above(base: float) -> float:
    return torch.cuda.max_memory_allocated() / 1e9 - base if torch.cuda.is_available() else float("nan")


def record(measure: str, shape: str, ours: float | None, official: float | None, unit: str, **extra) -> None:
    ratio = ours / official if ours and official else None
    ROWS.append(dict(measure=measure, shape=shape, ours=ours, official=official, ratio=ratio, unit=unit, **extra))
    fmt = lambda x: "-" if x is None else f"{x:,.1f}"
    print(f"{measure:42s} {shape:14s} ours {fmt(ours):>12s}  official {fmt(official):>12s}  {unit}"
          + (f"  x{ratio:.2f}" if ratio else "") + "".join(f"  {k}={v}" for k, v in extra.items()), flush=True)


def attempt(name: str, fn):
    try:
        return fn()
    except Exception as e:  # one failing measurement must not lose the others
        traceback.print_exc()
        NOTES.append(f"{name} failed: {type(e).__name__}: {str(e)[:300]}")
        return None


def official_model(shape: dict, device: str, dtype: torch.dtype):
    from xlstm.xlstm_large.model import xLSTMLarge as OfficialLarge
    from xlstm.xlstm_large.model import xLSTMLargeConfig as OfficialConfig

    cuda = device == "cuda"
    cfg = OfficialConfig(
        embedding_dim=shape["D"], num_heads=shape["NH"], num_blocks=shape["L"], vocab_size=shape["V"],
        mode="inference", return_last_states=True, chunk_size=64,
        chunkwise_kernel="chunkwise--triton_limit_chunk" if cuda else "chunkwise--native_autograd",
        sequence_kernel="native_sequence__triton" if cuda else "native_sequence__native",
        step_kernel="triton" if cuda else "native",
        autocast_kernel_dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
    )
    with torch.device(device):
        model = OfficialLarge(cfg)
    with torch.no_grad():  # off the default init: gate biases as trained models have them
        for blk in model.backbone.blocks:
            blk.mlstm_layer.igate_preact.bias.normal_(-5.0, 1.0)
            blk.mlstm_layer.fgate_preact.bias.copy_(torch.linspace(3.0, 6.0, shape["NH"]))
    return model.to(dtype).eval()


def official_prefill(off, ids: torch.Tensor, piece: int):
    """The official model over a long prompt in pieces (it returns logits for every position)."""
    state = None
    for a in range(0, ids.shape[1], piece):
        logits, state = off(ids[:, a : a + piece], state)
        del logits
    return state


def graph_step_official(off, tok, state):
    """The official step captured in a CUDA graph (after two warm-up calls on a side stream); returns replay."""
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            off(tok, state)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        off(tok, state)
    return g.replay


def gpu_checks(device: str) -> None:
    """Correctness on this device with a small fp32 model: the device's kernels (Triton when registered)
    against the CPU torch forms, padded batches against prompts alone, CUDA-graph against eager decoding."""
    import copy

    from flashxlstm import xLSTMLarge, xLSTMLargeConfig
    from flashxlstm.generation import generate

    torch.manual_seed(0)
    cpu = xLSTMLarge(xLSTMLargeConfig(embedding_dim=256, num_heads=4, num_blocks=2, vocab_size=512,
                                      weight_mode="fused")).eval()
    with torch.no_grad():
        for p in cpu.parameters():
            p.add_(0.1 * torch.randn_like(p))
    dev = copy.deepcopy(cpu).to(device)
    ids = torch.randint(0, 512, (3, 200))
    rel = lambda a, b: ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()
    with torch.no_grad():
        lc, sc = cpu(ids)
        ld, sd = dev(ids.to(device))
        nc, _ = cpu(ids[:, :1], sc)
        nd, _ = dev(ids[:, :1].to(device), sd)
    record("check: device vs CPU logits, prefill 200", "fp32 small", rel(ld, lc), None, "rel. L2 diff",
           step_rel=f"{rel(nd, nc):.2e}")
    lengths = [1, 70, 130]
    prompts = [torch.randint(3, 512, (n,)) for n in lengths]
    P = max(lengths)
    batch = torch.stack([torch.cat([torch.ones(P - len(p), dtype=torch.long), p]) for p in prompts]).to(device)
    mask = (torch.arange(P)[None] >= torch.tensor([P - n for n in lengths])[:, None]).long().to(device)
    out = generate(dev, batch, 16, attention_mask=mask)
    alone = [generate(dev, p[None].to(device), 16)[0, len(p):] for p in prompts]
    same = all(torch.equal(out[r, P:], alone[r]) for r in range(3))
    graph = generate(dev, batch, 16, attention_mask=mask, use_cuda_graph=device == "cuda")
    record("check: padded batch == each alone; graph == eager", "3 prompts", float(same), None, "bool",
           graph_equal=bool(torch.equal(graph, out)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small shape (CPU smoke test)")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--skip-prefill", action="store_true", help="leave out the prefill measurements")
    parser.add_argument("--prefill-only", action="store_true",
                        help="only the one-forward prefill (no device checks, agreement, slices or decode)")
    parser.add_argument("--compile-if-before", type=float, default=240.0,
                        help="also measure B=1 decode with the step compiled (torch.compile) if the run is not "
                             "older than this many seconds by then (compilation takes a minute or more)")
    args = parser.parse_args()

    from flashxlstm import from_official
    from flashxlstm.generation import generate, prefill
    from flashxlstm.generation.cuda_graph import CUDAGraphStep
    from flashxlstm.ops.mlstm_cell import BACKENDS, STEP_BACKENDS

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    if args.tiny:
        shape = dict(D=128, NH=4, L=2, V=1000)
        prompt, prefills, batches, dtype = 96, [(1, 512), (4, 128)], [1, 4], torch.float32
        chunk_prompts = [128, 512]
    else:
        shape = dict(D=4096, NH=8, L=32, V=50304)
        prompt, prefills, batches, dtype = 2048, [(1, 16384), (16, 2048)], [1, 16, 64], torch.bfloat16
        chunk_prompts = [2048, 16384]
    start = time.time()
    # the small fp32 check model takes the default kernel layouts (no first-use timing: saves compiles)
    os.environ["FLASHXLSTM_GEMV_TUNE"] = os.environ["FLASHXLSTM_STEP_TUNE"] = "0"
    if not args.prefill_only:
        attempt("device checks", lambda: gpu_checks(device))
    del os.environ["FLASHXLSTM_GEMV_TUNE"], os.environ["FLASHXLSTM_STEP_TUNE"]
    print(f"checks done ({time.time() - start:.1f}s)", flush=True)
    torch.manual_seed(0)
    t0 = time.time()
    off = official_model(shape, device, dtype)
    ours = from_official(off)
    print(f"built official + ours ({time.time() - t0:.1f}s); weights {mem_gb():.1f} GB", flush=True)
    nparams = sum(p.numel() for p in off.parameters())

    def ids_of(B, S, seed=0):
        return torch.randint(0, shape["V"], (B, S), generator=torch.Generator().manual_seed(seed)).to(device)

    # -- agreement on the same weights (bf16: rounding differs, so report how close, do not assert)
    def agreement():
        import copy

        ids = ids_of(1, 300, 1)
        rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
        with torch.no_grad():
            lo, _ = off(ids)
            lu, _ = ours(ids)
            top1 = (lu.argmax(-1) == lo.argmax(-1)).float().mean().item()
            record("logits: ours vs official (same weights)", "1x300", rel(lu, lo), None, "rel. L2 diff",
                   top1_agree=f"{top1:.3f}")
            if dtype != torch.float32:  # which bf16 model is closer to the same weights run in fp32?
                ref = copy.deepcopy(ours).float()
                lr, _ = ref(ids)
                del ref
                record("logits: bf16 model vs fp32 (ours)", "1x300", rel(lu, lr), rel(lo, lr), "rel. L2 diff")

    if not args.prefill_only:
        attempt("agreement", agreement)
    ours = ours.converted(weight_mode="fused")
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    print(f"ours fused; allocated {mem_gb():.1f} GB; mlstm backends {sorted(BACKENDS)}, steps {sorted(STEP_BACKENDS)}",
          flush=True)

    # -- prefill: one forward over the prompt
    for B, S in [] if args.skip_prefill else prefills:
        ids = ids_of(B, S, 2)

        def ours_prefill():
            with torch.no_grad():
                ours(ids, logits_to_keep=1)
            base = reset_peak()
            t = timed(lambda: ours(ids, logits_to_keep=1), 2)
            return B * S / t, peak_above(base)

        def off_prefill():
            with torch.no_grad():
                off(ids[:, :256])  # compile its kernels at a cheap shape first
                off(ids)
            base = reset_peak()
            t = timed(lambda: off(ids), 2)
            return B * S / t, peak_above(base)

        with torch.no_grad():
            o = attempt(f"ours prefill {B}x{S}", ours_prefill)
            f = None if args.skip_official else attempt(f"official prefill {B}x{S}", off_prefill)
        record("prefill", f"{B}x{S}", o and o[0], f and f[0], "tok/s",
               mem_ours_GB=o and round(o[1], 2), mem_official_GB=f and round(f[1], 2))
        gc.collect()

    if args.prefill_only:
        write(args, shape, nparams, cuda)
        return 0

    # -- chunked prefill keeps memory flat in prompt length
    for S in [] if args.skip_prefill else chunk_prompts:
        ids = ids_of(1, S, 3)

        def chunked():
            with torch.no_grad():
                prefill(ours, ids[:, : min(S, 2048)], prefill_chunk_size=2048)
                base = reset_peak()
                t = timed(lambda: prefill(ours, ids, prefill_chunk_size=2048))
            return S / t, peak_above(base)

        o = attempt(f"chunked prefill {S}", chunked)
        record("prefill in 2048-token slices", f"1x{S}", o and o[0], None, "tok/s", mem_ours_GB=o and round(o[1], 3))

    # -- decode after a prompt
    n = args.decode_steps
    for B in batches:
        ids = ids_of(B, prompt, 4)
        with torch.no_grad():
            def ours_decode():
                logits, state = prefill(ours, ids, prefill_chunk_size=2048)
                tok = logits.argmax(-1, keepdim=True)
                for _ in range(2):
                    ours(tok, state)

                def eager_steps():
                    nonlocal state, tok
                    for _ in range(8):
                        lg, state = ours(tok, state)
                        tok = lg[:, -1].argmax(-1, keepdim=True)

                te = timed(eager_steps) / 8
                r = dict(eager=B / te)
                if not cuda:
                    return r
                # the fused glue against the unfused modules (same Triton step kernel), bf16, one step
                ours.backbone.fused_decode = False
                lu, su = ours(tok, state)
                ours.backbone.fused_decode = True
                ref, sf = ours(tok, state)
                rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
                r["fused_vs_unfused"] = f"{rel(ref, lu):.2e}"
                r["state_rel"] = f"{max(rel(a[0], b[0]) for a, b in zip(sf, su)):.2e}"
                r["top1"] = f"{(ref.argmax(-1) == lu.argmax(-1)).float().mean().item():.3f}"

                def graph_rate(runner):
                    def graph_steps():
                        nonlocal tok
                        for _ in range(n):
                            tok = runner.step(tok)[:, -1].argmax(-1, keepdim=True)

                    graph_steps()
                    return B * n / timed(graph_steps)

                base = reset_peak()
                runner = CUDAGraphStep(ours, tok, state)
                r["diff"] = (runner.step(tok) - ref).abs().max().item()
                r["graph"] = graph_rate(runner)
                r["mem"] = round(peak_above(base), 2)
                del runner
                ours.backbone.fused_decode = False  # before: the same step with the glue as separate torch ops
                runner = CUDAGraphStep(ours, tok, state)
                ours.backbone.fused_decode = True
                r["graph_unfused"] = graph_rate(runner)
                del runner
                return r

            def off_decode():
                state = official_prefill(off, ids, 512)
                tok = ids[:, -1:]
                for _ in range(2):
                    off(tok, state)
                te = timed(lambda: off(tok, state), 8)
                if not cuda:
                    return B / te, None
                replay = graph_step_official(off, tok, state)
                replay()
                tg = timed(replay, n)
                return B / te, B / tg

            o = attempt(f"ours decode B{B}", ours_decode)
            f = None if args.skip_official else attempt(f"official decode B{B}", off_decode)
        o = o or {}
        record("decode, eager step", f"B{B}", o.get("eager"), f and f[0], "tok/s")
        record("decode, step in a CUDA graph", f"B{B}", o.get("graph"), f and f[1], "tok/s",
               graph_vs_eager_maxdiff=o.get("diff"), mem_GB=o.get("mem"))
        record("decode, CUDA graph, glue unfused (before)", f"B{B}", o.get("graph_unfused"), f and f[1], "tok/s")
        record("check: fused vs unfused glue, bf16 logits", f"B{B}", None, None, "rel. L2 diff",
               logits=o.get("fused_vs_unfused"), C_state=o.get("state_rel"), top1_agree=o.get("top1"))
        write(args, shape, nparams, cuda, quiet=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    # -- generate(): CUDA graph decoding gives the same tokens as eager decoding
    def same_tokens():
        ids = ids_of(1, prompt, 5)
        a = generate(ours, ids, 24)
        b = generate(ours, ids, 24, use_cuda_graph=cuda)
        with torch.no_grad():
            toks, _ = off.generate(prefill_tokens=ids, max_length=24)
        agree = (a[0, prompt:] == toks[0]).float().mean().item()
        record("generate: graph == eager tokens", "1x24", float(torch.equal(a, b)), None, "bool",
               greedy_agree_with_official=f"{agree:.3f}")

    attempt("generate tokens", same_tokens)
    write(args, shape, nparams, cuda, quiet=True)

    # -- decode with the step compiled before capture (fuses the elementwise glue between matmuls)
    def compiled_decode(B):
        ids = ids_of(B, prompt, 6)
        with torch.no_grad():
            logits, state = prefill(ours, ids, prefill_chunk_size=2048)
            tok = logits.argmax(-1, keepdim=True)
            ref, _ = ours(tok, state)
            tc = time.time()
            runner = CUDAGraphStep(ours, tok, state, compile=True)
            tc = time.time() - tc
            diff = (runner.step(tok) - ref).abs().max().item()

            def graph_steps():
                nonlocal tok
                for _ in range(n):
                    tok = runner.step(tok)[:, -1].argmax(-1, keepdim=True)

            graph_steps()
            tg = timed(graph_steps) / n
        record("decode, compiled step in a CUDA graph", f"B{B}", B / tg, None, "tok/s", compile_s=round(tc, 1),
               graph_vs_eager_maxdiff=diff)
        write(args, shape, nparams, cuda, quiet=True)

    for B in [b for b in (1, batches[-1]) if cuda]:
        if time.time() - start < args.compile_if_before:
            attempt(f"compiled decode B{B}", lambda: compiled_decode(B))
        else:
            NOTES.append(f"compiled decode B{B} skipped: {time.time() - start:.0f}s elapsed > --compile-if-before")

    write(args, shape, nparams, cuda)
    return 0


def picks() -> dict:
    """What the first-use timing chose: layer-step layouts and matrix-vector kernel vs cuBLAS per shape."""
    try:
        from flashxlstm.ops.fused import layer_step, linear
    except Exception:
        return {}
    return dict(layer_step={str(k): v for k, v in layer_step.TUNER.choices.items()},
                matvec={str(k): v for k, v in linear.TUNER.choices.items()})


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("triton", "xlstm", "mlstm_kernels", "flashxlstm"):
        try:
            out[pkg] = md.version(pkg.replace("_", "-"))
        except md.PackageNotFoundError:
            try:
                out[pkg] = __import__(pkg).__version__
            except Exception:
                out[pkg] = "n/a"
    return out


def write(args, shape, nparams, cuda, quiet: bool = False) -> None:
    machine = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    lines = [
        "# xLSTM-7B shape end to end: flashxlstm vs the official xLSTMLarge (same run, same weights)",
        "",
        f"Command: `python benchmarks/{os.path.basename(__file__)} {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine}; {platform.platform()}  ",
        f"Versions: {json.dumps(versions())}  ",
        f"Shape: {shape}, {nparams:,} parameters, "
        f"{'bf16' if not args.tiny else 'fp32'} weights; ours weight_mode fused, official single.",
        "",
        "| measure | shape | ours | official | ours / official | unit | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    fmt = lambda x: "-" if x is None else (f"{x:.3g}" if abs(x) < 10 else f"{x:,.0f}")
    for r in ROWS:
        extra = ", ".join(f"{k}={v}" for k, v in r.items()
                          if k not in ("measure", "shape", "ours", "official", "ratio", "unit") and v is not None)
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['measure']} | {r['shape']} | {fmt(r['ours'])} | {fmt(r['official'])} | {ratio} | "
                     f"{r['unit']} | {extra} |")
    if NOTES:
        lines += ["", "Failures:", *[f"- {n}" for n in NOTES]]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "generate_7b.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "generate_7b.json"), "w") as f:
        json.dump(dict(rows=ROWS, notes=NOTES, versions=versions(), shape=shape, picks=picks()), f, indent=1)
    if not quiet:
        print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
