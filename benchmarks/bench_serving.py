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
- static (the baseline without the engine): requests batched N at a time in arrival order, left-padded,
  one `model.generate(..., attention_mask)` call per batch (CUDA-graph decode on CUDA) that runs until the
  batch's longest output is done; tokens past a request's own length are not counted;
- peer: our best static decode step at batch N (generation.StaticDecodeStep, one CUDA-graph replay + argmax
  per token, no host sync), the ceiling for the engine's decode-step throughput;
- state memory per stream (its state, times 2 for the 7B family's ping-pong buffers);
- inter-token latency twice: over every gap, and over the gaps in which no prefill forward ran (the
  steady decode latency; a gap with a prefill forward waits for up to prefill_tokens of prompt).

Checks (first, on CUDA): `model.generate` uses the CUDA-graph step by default for both families (tiny random
float32 configs) and gives the eager step's greedy tokens; the engine captured a graph per bucket and its
greedy outputs equal eager `generate` alone (tiny float32: required; the benchmark model in bf16: counted,
as a different batch shape can round a near-tie the other way).

    python benchmarks/bench_serving.py                    # H200: the 7B shape, random bf16 weights
    python benchmarks/bench_serving.py --layers 8 --time-box 80   # 7B width, 8 of its 32 blocks, 80 s cap
    python benchmarks/bench_serving.py --tiny             # CPU smoke test of the script (tiny model)

--time-box: a hard cap on the whole run; levels that would start after it are skipped, and a watchdog writes
the table and exits at the cap. bench_serving.md / .json go into --out (default $OUT or .) after every row.
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
import traceback

import torch

ROWS: list[dict] = []
NOTES: list[str] = []
CHECKS: list[dict] = []


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
        if args.layers:
            cfg = xLSTMLargeConfig(weight_mode="fused", num_blocks=args.layers)
        dtype = torch.bfloat16
    torch.manual_seed(0)
    with torch.device("meta"):
        model = xLSTMLarge(cfg)
    model = model.to(dtype).to_empty(device=device)
    model.init_weights()
    return model.eval()


def workload(n: int, args, vocab: int, seed: int, rounds: int) -> list[list[tuple[list[int], int]]]:
    """Per stream, its requests in order: (prompt ids, output length)."""
    rng = random.Random(seed)
    return [[([rng.randrange(vocab) for _ in range(rng.randint(args.prompt_min, args.prompt_max))],
              rng.randint(args.tokens_min, args.tokens_max)) for _ in range(rounds)] for _ in range(n)]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 2)


def summarise(mode: str, n: int, wall: float, tokens: int, ttft: list[float], itl: list[float], **extra) -> dict:
    row = dict(mode=mode, streams=n, wall_s=round(wall, 2), tok_s=round(tokens / wall, 1),
               ttft_p50_ms=ms(pct(ttft, 50)), ttft_p99_ms=ms(pct(ttft, 99)),
               itl_p50_ms=ms(pct(itl, 50)), itl_p99_ms=ms(pct(itl, 99)), **extra)
    ROWS.append(row)
    print(json.dumps(row), flush=True)
    return row


def run_engine(model, work, args) -> None:
    from flashxlstm.serving import Engine, EngineConfig, SamplingParams

    n = len(work)
    config = EngineConfig(max_batch=n, prefill_chunk=args.prefill_chunk, prefill_tokens=args.prefill_tokens,
                          max_prompt_tokens=args.prompt_max, max_tokens_limit=args.tokens_max, eos_token_id=[],
                          max_queue=max(4096, n * len(work[0])))
    t0 = time.perf_counter()
    engine = Engine(model, None, config)
    setup = time.perf_counter() - t0
    graphs = graph_report(engine)
    engine.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=4, temperature=0))  # first-use kernel timing
    steps: list[tuple[int, float]] = []
    prefills: list[tuple[float, float]] = []
    record = engine.stats.record_step
    prefill_many = engine.slots.prefill_many

    def record_step(rows: int, seconds: float) -> None:  # the benchmark keeps every step's size and time
        steps.append((rows, seconds))
        record(rows, seconds)

    def timed_prefill(chunks, states):  # when each prefill forward ran, to split the inter-token gaps
        start = time.perf_counter()
        out = prefill_many(chunks, states)
        prefills.append((start, time.perf_counter()))
        return out

    engine.stats.record_step = record_step
    engine.slots.prefill_many = timed_prefill
    engine.start()
    ttft: list[float] = []
    gaps: list[tuple[float, float]] = []
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
            gaps.extend(zip(times, times[1:]))

    async def clients() -> None:
        await asyncio.gather(*(stream(w) for w in work))

    t0 = time.perf_counter()
    asyncio.run(clients())
    wall = time.perf_counter() - t0
    engine.stop()
    tokens = sum(length for w in work for _, length in w)
    full = [(r, s) for r, s in steps if r == n]
    itl = [b - a for a, b in gaps]
    steady = [b - a for a, b in gaps if not overlaps(prefills, a, b)]
    summarise("engine", n, wall, tokens, ttft, itl,
              itl_steady_p50_ms=ms(pct(steady, 50)), itl_steady_p99_ms=ms(pct(steady, 99)),
              prefill_forwards=len(prefills),
              decode_step_tok_s=round(sum(r for r, _ in steps) / max(sum(s for _, s in steps), 1e-9), 1),
              full_batch_tok_s=round(sum(r for r, _ in full) / sum(s for _, s in full), 1) if full else None,
              full_batch_steps=len(full), state_MB_per_stream=round(engine.slots.row_bytes() / 2**20, 2),
              setup_s=round(setup, 1), cuda_graphs=graphs,
              greedy_equal_eager_generate=agreement(model, work, outputs, args))
    del engine


def overlaps(intervals: list[tuple[float, float]], a: float, b: float) -> bool:
    """Whether any (start, end) interval (sorted by start) intersects (a, b)."""
    i = bisect.bisect_left(intervals, (b,))  # the intervals are disjoint and in order (one engine thread):
    return i > 0 and intervals[i - 1][1] > a  # only the last one starting before b can reach past a


def graph_report(engine) -> str:
    """'captured k/k buckets' when every bucket's decode step holds captured CUDA graphs, else what it holds."""
    runners = engine.slots._runners
    captured = sum(1 for r in runners.values() if r._graphs)
    return f"{captured}/{len(runners)} buckets captured" if engine.slots.cuda_graph else "eager (no CUDA)"


def agreement(model, work, outputs: dict[int, list[int]], args) -> str:
    """How many of the first --check requests got exactly the tokens eager `generate` gives them alone
    (batch 1, use_cuda_graph=False). Rows of a batch are independent, but kernels may round differently at
    another batch size (bf16), so a near-tie can flip a greedy choice; this counts how often that happens."""
    requests = [r for w in work for r in w][: args.check]
    same, where = 0, []
    for prompt, length in requests:
        ids = torch.tensor([prompt], device=next(model.parameters()).device)
        ref = model.generate(ids, length, eos_token_id=None, use_cuda_graph=False, return_dict_in_generate=True,
                             output_logits=True)
        want, got = ref.sequences[0, len(prompt):].tolist(), outputs[id(prompt)]
        if want == got:
            same += 1
            continue
        # where the two first differ, and how far apart the reference's logits put the two choices there
        d = next(i for i, (a, b) in enumerate(zip(want, got)) if a != b)
        logits = ref.logits[d][0].float()
        gap = (logits[want[d]] - logits[got[d]]).item()
        where.append(f"token {d}, logit gap {gap:.3g} of spread {(logits.max() - logits.min()).item():.3g}")
    return f"{same}/{len(requests)}" + (f" (first differences: {'; '.join(where)})" if where else "")


def check_graph_decode(device: str) -> None:
    """On CUDA: model.generate takes the CUDA-graph step by default for both families and gives the eager
    step's greedy tokens; the engine's graph decode gives eager generate's tokens for requests in one batch
    (tiny random float32 models, so the comparison is exact)."""
    import flashxlstm
    from flashxlstm.generation import cuda_graph

    if device != "cuda":  # the same code runs on the CPU (a smoke test): no graphs there, so `used` is False
        NOTES.append("graph checks on the CPU: generate and the engine run the static-buffer step eagerly")
    torch.manual_seed(0)
    families = {
        "xLSTMLM": flashxlstm.xLSTMLM(flashxlstm.xLSTMLMConfig(vocab_size=256, embedding_dim=64, num_blocks=2,
                                                               slstm_at="xLSTM[1:1]", mlstm_num_heads=2,
                                                               slstm_num_heads=2)),
        "xLSTMLarge": flashxlstm.xLSTMLarge(flashxlstm.xLSTMLargeConfig(embedding_dim=64, num_heads=2, num_blocks=2,
                                                                        vocab_size=256)),
    }
    made: list = []
    init = cuda_graph.StaticDecodeStep.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        made.append(self)

    for name, model in families.items():
        try:
            row = dict(mode=f"check {name}", **check_family(model.to(device).eval(), device, spy, init, made))
        except Exception as e:  # one family failing (e.g. a capture error) does not hide the other's result
            row = dict(mode=f"check {name}", error=f"{type(e).__name__}: {str(e)[:300]}")
            traceback.print_exc()
        CHECKS.append(row)
        print(json.dumps(row), flush=True)


def check_family(model, device: str, spy, init, made: list) -> dict:
    from flashxlstm.generation import cuda_graph
    from flashxlstm.serving import Engine, EngineConfig, SamplingParams

    prompts = torch.randint(0, 256, (3, 11), device=device)
    made.clear()
    cuda_graph.StaticDecodeStep.__init__ = spy
    try:
        default = model.generate(prompts, 24, eos_token_id=None)
    finally:
        cuda_graph.StaticDecodeStep.__init__ = init
    eager = model.generate(prompts, 24, eos_token_id=None, use_cuda_graph=False)
    used = bool(made) and all(r._graphs for r in made)
    engine = Engine(model, None, EngineConfig(max_batch=4, prefill_chunk=8, eos_token_id=[]))
    lists = [prompts[i, : 5 + 3 * i].tolist() for i in range(3)]
    outs = engine.generate(lists, SamplingParams(max_tokens=20, temperature=0))
    alone = [model.generate(torch.tensor([p], device=device), 20, eos_token_id=None, use_cuda_graph=False)
             [0, len(p):].tolist() for p in lists]
    return dict(generate_default_uses_graph=used, generate_graph_equals_eager=bool(torch.equal(default, eager)),
                engine_graphs=graph_report(engine),
                engine_equals_eager_generate=all(o.token_ids == a for o, a in zip(outs, alone)))


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
    for r in range(len(work[0])):
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
            "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "itl_steady_p50_ms", "itl_steady_p99_ms", "prefill_forwards",
            "state_MB_per_stream", "cuda_graphs", "greedy_equal_eager_generate"]
    lines = ["# Serving: continuous batching vs static-batch generate (same model, same run)", "",
             f"Command: `python benchmarks/{os.path.basename(__file__)} {' '.join(sys.argv[1:])}`  ",
             f"Machine: {machine}; {platform.platform()}; torch threads {torch.get_num_threads()}  ",
             f"Versions: {json.dumps(versions())}  ", f"Model: {shape}  ",
             f"Workload: {args.rounds} request(s) per stream ({args.rounds_one} at 1 stream), prompts "
             f"{args.prompt_min}-{args.prompt_max} tokens, outputs {args.tokens_min}-{args.tokens_max} tokens, "
             f"greedy; prefill chunk {args.prefill_chunk}, {args.prefill_tokens} padded tokens per prefill forward; "
             f"static generate up to {args.static_max} streams; time box {args.time_box} s", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in list(ROWS):
        lines.append("| " + " | ".join("-" if r.get(c) is None else str(r[c]) for c in cols) + " |")
    if CHECKS:
        keys = list(dict.fromkeys(k for c in CHECKS for k in c))
        lines += ["", "CUDA-graph checks (tiny random float32 models):", "", "| " + " | ".join(keys) + " |",
                  "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(c.get(k)) for k in keys) + " |" for c in CHECKS]
    ratios = []
    one = next((r for r in ROWS if r["mode"] == "engine" and r["streams"] == 1), None)
    for n in args.streams:
        eng = next((r for r in ROWS if r["mode"] == "engine" and r["streams"] == n), None)
        peer = next((r for r in ROWS if r["mode"].startswith("peer") and r["streams"] == n), None)
        stat = next((r for r in ROWS if r["mode"] == "static generate" and r["streams"] == n), None)
        if eng and peer and eng.get("full_batch_tok_s"):
            ratios.append(f"- {n} streams: engine decode step at full batch / peer graph step = "
                          f"{eng['full_batch_tok_s'] / peer['decode_step_tok_s']:.2f}")
        if eng and stat:
            ratios.append(f"- {n} streams: engine / static generate tokens per second = {eng['tok_s'] / stat['tok_s']:.2f}")
        if eng and one and one.get("itl_steady_p50_ms"):
            for key in ("itl_p99_ms", "itl_steady_p99_ms"):
                if eng.get(key):
                    ratios.append(f"- {n} streams: engine {key.removesuffix('_ms')} / single-stream steady p50 = "
                                  f"{eng[key] / one['itl_steady_p50_ms']:.2f}")
    lines += ["", *ratios]
    if NOTES:
        lines += ["", "Notes and failures:", *[f"- {x}" for x in NOTES]]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_serving.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "bench_serving.json"), "w") as f:
        json.dump(dict(rows=ROWS, checks=CHECKS, notes=NOTES, versions=versions(), args=vars(args)), f, indent=1)
    print("\n".join(lines), flush=True)


def main() -> int:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model and workload (CPU smoke test)")
    parser.add_argument("--layers", type=int, default=None, help="blocks of the 7B shape (default all 32)")
    parser.add_argument("--streams", default=None, help="comma-separated concurrency levels (default 1,16,64,256)")
    parser.add_argument("--rounds", type=int, default=1, help="requests per stream (default %(default)s)")
    parser.add_argument("--rounds-one", type=int, default=4, help="requests of the single stream (default %(default)s)")
    parser.add_argument("--prompt-min", type=int, default=None)
    parser.add_argument("--prompt-max", type=int, default=None)
    parser.add_argument("--tokens-min", type=int, default=None)
    parser.add_argument("--tokens-max", type=int, default=None)
    parser.add_argument("--prefill-chunk", type=int, default=None, help="prompt tokens of one request per forward")
    parser.add_argument("--prefill-tokens", type=int, default=None, help="padded prompt tokens per prefill forward")
    parser.add_argument("--peer-steps", type=int, default=None)
    parser.add_argument("--static-max", type=int, default=64, help="static generate up to this many streams")
    parser.add_argument("--check", type=int, default=2,
                        help="requests per level compared token by token with eager generate alone (default %(default)s)")
    parser.add_argument("--no-checks", action="store_true", help="leave out the CUDA-graph checks")
    parser.add_argument("--time-box", type=float, default=None, help="hard cap in seconds on the whole run")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    defaults = (dict(streams="1,4,8", prompt_min=8, prompt_max=64, tokens_min=4, tokens_max=16, prefill_chunk=32,
                     prefill_tokens=64, peer_steps=8) if args.tiny else
                dict(streams="1,16,64,256", prompt_min=512, prompt_max=8192, tokens_min=64, tokens_max=256,
                     prefill_chunk=2048, prefill_tokens=8192, peer_steps=64))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.streams = [int(s) for s in str(args.streams).split(",")]
    if args.tiny:  # a tiny model gains nothing from intra-op threads, and on a shared CPU they stall each other
        torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = "(model not built yet)"
    if args.time_box:  # the hard cap: write what there is and leave, whatever is running
        def expire() -> None:
            NOTES.append(f"time box of {args.time_box} s reached: the run was cut here")
            try:
                write(args, device, shape)
            finally:
                os._exit(3)

        timer = threading.Timer(max(args.time_box - (time.perf_counter() - start), 1.0), expire)
        timer.daemon = True
        timer.start()
    if not args.no_checks:
        attempt("graph checks", lambda: check_graph_decode(device))
    model = build_model(args, device)
    c = model.config
    shape = (f"xLSTMLarge D={c.embedding_dim} NH={c.num_heads} L={c.num_blocks} V={c.vocab_size}"
             f"{'' if args.tiny or c.num_blocks == 32 else f' (the 7B shape with {c.num_blocks} of its 32 blocks)'}, "
             f"{sum(p.numel() for p in model.parameters()):,} parameters, random "
             f"{str(next(model.parameters()).dtype).removeprefix('torch.')} weights, {c.weight_mode} weights")
    print(shape, flush=True)
    write(args, device, shape)
    for n in args.streams:
        rounds = args.rounds_one if n == 1 else args.rounds
        work = workload(n, args, c.vocab_size, seed=n, rounds=rounds)
        attempt(f"peer at {n}", lambda: run_peer(model, n, args, device))
        attempt(f"engine at {n}", lambda: run_engine(model, work, args))
        if n <= args.static_max:
            attempt(f"static generate at {n}", lambda: run_static(model, work, args, device))
        else:
            NOTES.append(f"static generate at {n} streams: not run (--static-max {args.static_max})")
        write(args, device, shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
