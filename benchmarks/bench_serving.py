"""Serving: the continuous-batching engine vs a static-batch loop of our own `generate`, same model, same run.

Workload per concurrency level N (closed loop): N streams, each sending --rounds requests one after the
other (the next when the previous has finished); prompt lengths uniform in [--prompt-min, --prompt-max]
random tokens, output lengths uniform in [--tokens-min, --tokens-max] (greedy, EOS ignored, so every
request generates exactly its length). Measured:
- engine (flashxlstm.serving.Engine on its thread, max batch N, CUDA graph per batch bucket on CUDA; the
  clients are coroutines on one event loop, as behind the HTTP server, without HTTP): generated tokens / s
  over the whole run; decode-step throughput (rows advanced per second of decode step, sampling and the
  host sync included) over all steps and over the steps with all N rows running; time to first token
  (submit -> first token) and inter-token latency p50/p99 per request;
- static (the baseline a user has today): requests batched N at a time in arrival order, left-padded,
  one `model.generate(..., attention_mask)` call per batch (CUDA-graph decode on CUDA) that runs until the
  batch's longest output is done; tokens past a request's own length are not counted;
- peer: our best static decode step at batch N (generation.StaticDecodeStep, one CUDA-graph replay + argmax
  per token, no host sync), the ceiling for the engine's decode-step throughput;
- state memory per stream (its state, times 2 for the 7B family's ping-pong buffers).

    python benchmarks/bench_serving.py                    # H200: the 7B shape, random bf16 weights
    python benchmarks/bench_serving.py --tiny             # CPU smoke test of the script (tiny model)

Writes bench_serving.md and bench_serving.json into --out (default $OUT or .).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
import traceback

import torch

ROWS: list[dict] = []
NOTES: list[str] = []


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def build_model(args, device: str):
    from flashxlstm import xLSTMLarge, xLSTMLargeConfig

    if args.tiny:
        cfg = xLSTMLargeConfig(embedding_dim=64, num_heads=2, num_blocks=2, vocab_size=512)
        dtype = torch.float32
    else:
        cfg = xLSTMLargeConfig(weight_mode="fused")  # the 7B shape
        dtype = torch.bfloat16
    torch.manual_seed(0)
    with torch.device("meta"):
        model = xLSTMLarge(cfg)
    model = model.to(dtype).to_empty(device=device)
    model.init_weights()
    return model.eval()


def workload(n: int, args, vocab: int, seed: int) -> list[list[tuple[list[int], int]]]:
    """Per stream, its requests in order: (prompt ids, output length)."""
    rng = random.Random(seed)
    return [[([rng.randrange(vocab) for _ in range(rng.randint(args.prompt_min, args.prompt_max))],
              rng.randint(args.tokens_min, args.tokens_max)) for _ in range(args.rounds)] for _ in range(n)]


def summarise(mode: str, n: int, wall: float, tokens: int, ttft: list[float], itl: list[float], **extra) -> dict:
    ms = lambda v: None if v is None else round(v * 1e3, 2)
    row = dict(mode=mode, streams=n, wall_s=round(wall, 2), tok_s=round(tokens / wall, 1),
               ttft_p50_ms=ms(pct(ttft, 50)), ttft_p99_ms=ms(pct(ttft, 99)),
               itl_p50_ms=ms(pct(itl, 50)), itl_p99_ms=ms(pct(itl, 99)), **extra)
    ROWS.append(row)
    print(json.dumps(row), flush=True)
    return row


def run_engine(model, work, args) -> None:
    from flashxlstm.serving import Engine, EngineConfig, SamplingParams

    n = len(work)
    config = EngineConfig(max_batch=n, prefill_chunk=args.prefill_chunk, max_prompt_tokens=args.prompt_max,
                          max_tokens_limit=args.tokens_max, eos_token_id=[], max_queue=max(4096, n * args.rounds))
    t0 = time.perf_counter()
    engine = Engine(model, None, config)
    setup = time.perf_counter() - t0
    engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0))  # first-use kernel timing
    steps: list[tuple[int, float]] = []
    record = engine.stats.record_step

    def record_step(rows: int, seconds: float) -> None:  # the benchmark keeps every step's size and time
        steps.append((rows, seconds))
        record(rows, seconds)

    engine.stats.record_step = record_step
    engine.start()
    ttft: list[float] = []
    itl: list[float] = []
    outputs: dict[int, list[int]] = {}

    async def stream(requests) -> None:  # one closed-loop client, on the event loop as in the HTTP server
        loop = asyncio.get_running_loop()
        for prompt, length in requests:
            sent = time.perf_counter()
            handle = engine.submit(prompt, SamplingParams(max_tokens=length, temperature=0, ignore_eos=True),
                                   loop=loop)
            outs = [out async for out in handle]
            times = [out.time for out in outs]
            outputs[id(prompt)] = [t for out in outs for t in out.token_ids]
            ttft.append(times[0] - sent)
            itl.extend(b - a for a, b in zip(times, times[1:]))

    async def clients() -> None:
        await asyncio.gather(*(stream(w) for w in work))

    t0 = time.perf_counter()
    asyncio.run(clients())
    wall = time.perf_counter() - t0
    engine.stop()
    tokens = sum(length for w in work for _, length in w)
    full = [(r, s) for r, s in steps if r == n]
    summarise("engine", n, wall, tokens, ttft, itl,
              decode_step_tok_s=round(sum(r for r, _ in steps) / max(sum(s for _, s in steps), 1e-9), 1),
              full_batch_tok_s=round(sum(r for r, _ in full) / sum(s for _, s in full), 1) if full else None,
              full_batch_steps=len(full), state_MB_per_stream=round(engine.slots.row_bytes() / 2**20, 2),
              setup_s=round(setup, 1), greedy_equal_generate=agreement(model, work, outputs, args))
    del engine


def agreement(model, work, outputs: dict[int, list[int]], args) -> str:
    """How many of the first --check requests got exactly the tokens `generate` gives them alone (batch 1).
    Rows of a batch are independent, but kernels may round differently at another batch size (bf16), so
    on the GPU a near-tie can flip a greedy choice; this counts how often that happens."""
    requests = [r for w in work for r in w][: args.check]
    same = 0
    for prompt, length in requests:
        ids = torch.tensor([prompt], device=next(model.parameters()).device)
        want = model.generate(ids, length, eos_token_id=None)[0, len(prompt):].tolist()
        same += want == outputs[id(prompt)]
    return f"{same}/{len(requests)}"


class _Times:
    """A generate streamer that records when each step's tokens arrive (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, tokens) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_static(model, work, args, device: str) -> None:
    n = len(work)
    ttft: list[float] = []
    itl: list[float] = []
    pad = model.config.pad_token_id or 0
    t0 = time.perf_counter()
    for r in range(args.rounds):
        batch = [w[r] for w in work]
        longest = max(len(p) for p, _ in batch)
        ids = torch.full((n, longest), pad, dtype=torch.long)
        mask = torch.zeros(n, longest, dtype=torch.long)
        for i, (p, _) in enumerate(batch):
            ids[i, longest - len(p):] = torch.tensor(p)
            mask[i, longest - len(p):] = 1
        times = _Times()
        start = time.perf_counter()
        model.generate(ids.to(device), max(length for _, length in batch), attention_mask=mask.to(device),
                       streamer=times, prefill_chunk_size=args.prefill_chunk, eos_token_id=None)
        steps = times.times[1:]
        for _, length in batch:
            ttft.append(steps[0] - start)
            itl.extend(b - a for a, b in zip(steps[:length], steps[1:length]))
    wall = time.perf_counter() - t0
    summarise("static generate", n, wall, sum(length for w in work for _, length in w), ttft, itl)


def run_peer(model, n: int, args, device: str) -> None:
    from flashxlstm.generation import StaticDecodeStep, prefill

    with torch.no_grad():
        ids = torch.randint(0, model.config.vocab_size, (n, 16), device=device)
        logits, state = prefill(model, ids)
        tok = logits.argmax(-1, keepdim=True)
        runner = StaticDecodeStep(model, tok, state)
        del state
        steps = args.peer_steps

        def run():
            nonlocal tok
            for _ in range(steps):
                tok = runner.step(tok)[:, -1].argmax(-1, keepdim=True)

        run()
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        rate = n * steps / (time.perf_counter() - t0)
    ROWS.append(dict(mode="peer: static graph step", streams=n, decode_step_tok_s=round(rate, 1)))
    print(json.dumps(ROWS[-1]), flush=True)
    del runner


def attempt(name: str, fn) -> None:
    try:
        fn()
    except Exception as e:  # one failed level (e.g. out of memory at 256 streams) does not lose the others
        NOTES.append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
        traceback.print_exc()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("triton", "flashxlstm", "fastapi", "uvicorn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "n/a"
    return out


def write(args, device: str, shape: str) -> None:
    machine = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    cols = ["mode", "streams", "wall_s", "tok_s", "decode_step_tok_s", "full_batch_tok_s", "ttft_p50_ms",
            "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "state_MB_per_stream", "greedy_equal_generate"]
    lines = ["# Serving: continuous batching vs static-batch generate (same model, same run)", "",
             f"Command: `python benchmarks/{os.path.basename(__file__)} {' '.join(sys.argv[1:])}`  ",
             f"Machine: {machine}; {platform.platform()}; torch threads {torch.get_num_threads()}  ",
             f"Versions: {json.dumps(versions())}  ", f"Model: {shape}  ",
             f"Workload: {args.rounds} request(s) per stream, prompts {args.prompt_min}-{args.prompt_max} tokens, "
             f"outputs {args.tokens_min}-{args.tokens_max} tokens, greedy; prefill chunk {args.prefill_chunk}", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in ROWS:
        lines.append("| " + " | ".join("-" if r.get(c) is None else str(r[c]) for c in cols) + " |")
    ratios = []
    for n in args.streams:
        eng = next((r for r in ROWS if r["mode"] == "engine" and r["streams"] == n), None)
        peer = next((r for r in ROWS if r["mode"].startswith("peer") and r["streams"] == n), None)
        stat = next((r for r in ROWS if r["mode"] == "static generate" and r["streams"] == n), None)
        one = next((r for r in ROWS if r["mode"] == "engine" and r["streams"] == 1), None)
        if eng and peer and eng.get("full_batch_tok_s"):
            ratios.append(f"- {n} streams: engine decode step at full batch / peer graph step = "
                          f"{eng['full_batch_tok_s'] / peer['decode_step_tok_s']:.2f}")
        if eng and stat:
            ratios.append(f"- {n} streams: engine / static generate tokens per second = {eng['tok_s'] / stat['tok_s']:.2f}")
        if eng and one and one.get("itl_p50_ms") and eng.get("itl_p99_ms"):
            ratios.append(f"- {n} streams: engine inter-token p99 / single-stream p50 = "
                          f"{eng['itl_p99_ms'] / one['itl_p50_ms']:.2f}")
    lines += ["", *ratios]
    if NOTES:
        lines += ["", "Failures:", *[f"- {x}" for x in NOTES]]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_serving.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "bench_serving.json"), "w") as f:
        json.dump(dict(rows=ROWS, notes=NOTES, versions=versions(), args=vars(args)), f, indent=1)
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model and workload (CPU smoke test)")
    parser.add_argument("--streams", default=None, help="comma-separated concurrency levels (default 1,16,64,256)")
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream (default %(default)s)")
    parser.add_argument("--prompt-min", type=int, default=None)
    parser.add_argument("--prompt-max", type=int, default=None)
    parser.add_argument("--tokens-min", type=int, default=None)
    parser.add_argument("--tokens-max", type=int, default=None)
    parser.add_argument("--prefill-chunk", type=int, default=None, help="prompt tokens per prefill forward")
    parser.add_argument("--peer-steps", type=int, default=None)
    parser.add_argument("--skip-static", action="store_true", help="leave out the static-generate baseline")
    parser.add_argument("--check", type=int, default=4,
                        help="requests per level compared token by token with generate alone (default %(default)s)")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    defaults = (dict(streams="1,4,8", prompt_min=8, prompt_max=64, tokens_min=4, tokens_max=16, prefill_chunk=32,
                     peer_steps=8) if args.tiny else
                dict(streams="1,16,64,256", prompt_min=512, prompt_max=8192, tokens_min=64, tokens_max=256,
                     prefill_chunk=1024, peer_steps=64))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.streams = [int(s) for s in str(args.streams).split(",")]
    if args.tiny:  # a tiny model gains nothing from intra-op threads, and on a shared CPU they stall each other
        torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(args, device)
    c = model.config
    shape = (f"xLSTMLarge D={c.embedding_dim} NH={c.num_heads} L={c.num_blocks} V={c.vocab_size}, "
             f"{sum(p.numel() for p in model.parameters()):,} parameters, random "
             f"{str(next(model.parameters()).dtype).removeprefix('torch.')} weights, {c.weight_mode} weights")
    print(shape, flush=True)
    for n in args.streams:
        work = workload(n, args, c.vocab_size, seed=n)
        attempt(f"peer at {n}", lambda: run_peer(model, n, args, device))
        attempt(f"engine at {n}", lambda: run_engine(model, work, args))
        if not args.skip_static:
            attempt(f"static generate at {n}", lambda: run_static(model, work, args, device))
        write(args, device, shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
