"""Serving: the continuous-batching engine vs a static-batch loop of our own `generate`, same model, same run.

Workload per concurrency level N (closed loop): N streams, each sending first a short request (a
--fill-prompt-token prompt, an output in the upper half of the range: the batch fills within a few slices)
and then --rounds requests (--rounds-one at 1 stream) one after the other, each when the previous has
finished; prompt lengths log-uniform in [--prompt-min, --prompt-max] random tokens (as many prompts of
512-1024 as of 4096-8192), output lengths uniform in [--tokens-min, --tokens-max] (greedy, EOS ignored, so
every request generates exactly its length). Phases, in this order (each level's static baseline right after
its engine level, the largest level last so the time box cuts the least):
- peer (the model alone, every level first): our best static decode step at batch N
  (generation.StaticDecodeStep, one CUDA-graph replay + argmax per token, no host sync), the ceiling for the
  engine's decode throughput; and the memory floor of a decode step: the bytes it must move (the weights
  once, every row's fp32 state read from one buffer set and written to the other) over the device's copy
  bandwidth measured here, which says how much of the step at N streams the state traffic is;
- engine (flashxlstm.serving.Engine on its thread, one engine with max batch = the largest level for every
  level: CUDA graph per decode bucket and per prefill slice shape, tokens chosen on the device; clients are
  coroutines on one event loop, as behind the HTTP server, without HTTP): generated tokens / s over the
  level; decode throughput (rows per second of step period, the engine's own record of back-to-back steps)
  over all steps and over the steps with all N rows running and no slice before them (`full_batch_tok_s`,
  the number the goal compares with the peer); time to first token (submit -> first token); inter-token
  latency p50/p99 over every gap, over the gaps without a prefill slice (`steady`) and over those with one
  (`slice`); state memory per stream;
- static (the baseline without the engine): requests batched N at a time in arrival order, left-padded,
  one `model.generate(..., attention_mask)` call per batch (CUDA-graph decode on CUDA) that runs until the
  batch's longest output is done; tokens past a request's own length are not counted (up to --static-max);
- greedy check (bf16): the last requests of the first --check streams, each forwarded alone (batch 1) over its
  prompt and the engine's output: how many of its tokens are that forward's argmax, and the logit gap where
  one is not (rounding flips near-ties by a gap of bf16 size; a fault disagrees widely and by large gaps).

Checks (after the first level with at least --checks-after streams, on CUDA): `model.generate` uses the
CUDA-graph step by default and gives the eager step's greedy tokens, and the engine at 16 rows (mixed prompt
lengths, several prompts per slice, every bucket, captured slices) gives each request exactly eager
`generate`'s tokens alone: tiny random float32 xLSTMLarge, where batch shape does not flip a choice, so a
mismatch there would be a fault, not rounding.

    python benchmarks/bench_serving.py                    # H200: the 7B shape (32 blocks), random bf16 weights
    python benchmarks/bench_serving.py --layers 8 --time-box 80   # 7B width, 8 of its 32 blocks, 80 s cap
    python benchmarks/bench_serving.py --tiny             # CPU smoke test of the script (tiny model)

--time-box: a hard cap on the whole run; phases that would start after it are skipped, and a watchdog writes
the table and exits at the cap. bench_serving.md / .json go into --out (default $OUT or .) after every row.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
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
    """Per stream, its requests in order: (prompt ids, output length). With --fill-prompt P, each stream's
    first request has a P-token prompt and an output in the upper half of the range: the batch fills within a
    few slices and stays full (the full-batch decode the goal compares), and the streams' next requests,
    prompts of the range, arrive staggered while the others still decode (the slices interleave)."""
    rng = random.Random(seed)

    def request(first: bool) -> tuple[list[int], int]:
        if first and args.fill_prompt:
            return ([rng.randrange(vocab) for _ in range(args.fill_prompt)],
                    rng.randint((args.tokens_min + args.tokens_max) // 2, args.tokens_max))
        length = round(math.exp(rng.uniform(math.log(args.prompt_min), math.log(args.prompt_max))))
        return [rng.randrange(vocab) for _ in range(length)], rng.randint(args.tokens_min, args.tokens_max)

    return [[request(r == 0) for r in range(rounds + (1 if args.fill_prompt else 0))] for _ in range(n)]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 2)


def summarise(mode: str, n: int, wall: float, tokens: int, ttft: list[float], itl: list[float], **extra) -> dict:
    row = dict(mode=mode, streams=n, wall_s=round(wall, 2), tok_s=round(tokens / wall, 1),
               ttft_p50_ms=ms(pct(ttft, 50)), ttft_p99_ms=ms(pct(ttft, 99)),
               itl_p50_ms=ms(pct(itl, 50)), itl_p99_ms=ms(pct(itl, 99)), **extra)
    ROWS.append(row)
    print(json.dumps(row), flush=True)
    return row


class EngineRun:
    """One engine for every level (max batch = the largest level), built once: its graphs are captured once."""

    def __init__(self, model, args, capacity: int):
        from flashxlstm.serving import Engine, EngineConfig, SamplingParams

        config = EngineConfig(max_batch=capacity, prefill_tokens=args.prefill_tokens, prefill_rows=args.prefill_rows,
                              max_prompt_tokens=max(args.prompt_max, args.fill_prompt or 1),
                              max_tokens_limit=args.tokens_max, eos_token_id=[], max_queue=max(4096, 4 * capacity))
        t0 = time.perf_counter()
        self.engine = Engine(model, None, config)
        self.engine.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=4, temperature=0))  # first-use timing
        self.setup_s = round(time.perf_counter() - t0, 1)
        self.steps: list[tuple[int, float | None, bool]] = []
        record = self.engine.stats.record_step

        def record_step(rows: int, seconds: float | None, after_prefill: bool = False) -> None:  # keep every step
            self.steps.append((rows, seconds, after_prefill))
            record(rows, seconds, after_prefill)

        self.engine.stats.record_step = record_step
        self.engine.start()
        print(json.dumps(dict(engine_setup_s=self.setup_s, graphs=graph_report(self.engine))), flush=True)

    def close(self) -> None:
        self.engine.stop()
        del self.engine


def run_engine(model, run: EngineRun, work, args) -> None:
    from flashxlstm.serving import SamplingParams

    engine, n = run.engine, len(work)
    run.steps.clear()
    slices_before = engine.stats.prefill_forwards
    ttft: list[float] = []
    itl: list[float] = []
    steady: list[float] = []
    stalled: list[float] = []
    outputs: dict[int, list[int]] = {}
    received = [0]

    async def stream(requests) -> None:  # one closed-loop client, on the event loop as in the HTTP server
        loop = asyncio.get_running_loop()
        for prompt, length in requests:
            sent = time.perf_counter()
            handle = engine.submit(prompt, SamplingParams(max_tokens=length, temperature=0, ignore_eos=True),
                                   loop=loop)
            got, last = [], None
            async for out in handle:
                if last is None:
                    ttft.append(out.time - sent)
                else:  # out.after_prefill: a slice ran on the device inside this gap
                    itl.append(out.time - last)
                    (stalled if out.after_prefill else steady).append(out.time - last)
                got += out.token_ids
                received[0] += len(out.token_ids)
                last = out.time
            outputs[id(prompt)] = got

    async def clients() -> None:
        await asyncio.gather(*(stream(w) for w in work))

    def row(cut: bool = False) -> dict:
        timed = [(r, s_) for r, s_, _ in run.steps if s_ is not None]
        full = [(r, s_) for r, s_, after in run.steps if s_ is not None and r == n and not after]
        state = engine.slots.row_bytes()
        return summarise("engine (cut by the time box)" if cut else "engine", n, time.perf_counter() - t0,
                         received[0], ttft, itl,
                         itl_steady_p50_ms=ms(pct(steady, 50)), itl_steady_p99_ms=ms(pct(steady, 99)),
                         itl_slice_p50_ms=ms(pct(stalled, 50)), itl_slice_p99_ms=ms(pct(stalled, 99)),
                         gaps_steady=len(steady), gaps_slice=len(stalled),
                         slices=engine.stats.prefill_forwards - slices_before, slice_tokens=engine.config.prefill_tokens,
                         prompt_tokens=sum(len(p) for w in work for p, _ in w),
                         decode_step_tok_s=round(sum(r for r, _ in timed) / max(sum(s_ for _, s_ in timed), 1e-9), 1),
                         full_batch_tok_s=round(sum(r for r, _ in full) / sum(s_ for _, s_ in full), 1) if full else None,
                         full_batch_steps=len(full), state_MB_per_stream=round(state / len(engine.slots._sets) / 2**20, 2),
                         slot_MB_per_stream=round(state / 2**20, 2), setup_s=run.setup_s,
                         cuda_graphs=graph_report(engine),
                         greedy_check=None if cut else agreement(model, work, outputs, args))

    t0 = time.perf_counter()
    LIVE.append(lambda: row(cut=True))  # what the watchdog records if the time box ends this level
    try:
        asyncio.run(clients())
    finally:
        LIVE.clear()
    row()


LIVE: list = []


def graph_report(engine) -> str:
    """'k/k buckets captured, j/j slice shapes captured' when every decode bucket and slice shape is a graph."""
    runners = engine.slots._runners
    captured = sum(1 for r in runners.values() if r._graphs)
    if not engine.slots.cuda_graph:
        return "eager (no CUDA)"
    out = f"{captured}/{len(runners)} buckets captured, {engine.slices.report()}"
    if engine.slices.capture_errors:
        out += f" (failed: {'; '.join(engine.slices.capture_errors)[:300]})"
    return out


def agreement(model, work, outputs: dict[int, list[int]], args) -> str:
    """For the last requests of the first --check streams: one forward alone (batch 1, the chunkwise kernels) over the prompt and
    the engine's output gives the argmax the model prefers after every prefix of that output. Counts the
    requests whose every token is that argmax and the tokens that are, and where one is not, the logit gap
    to the argmax relative to the logits' spread: rounding at another batch shape (bf16) flips near-ties
    (gaps of bf16 size) and the sequences then go their own ways; a fault in the batched path (a leak of
    padding or of another row) would disagree at many tokens by large gaps."""
    requests = [w[-1] for w in work][: args.check]  # each a prompt of the range, prefilled in slices
    whole, agree, total, gaps = 0, 0, 0, []
    with torch.no_grad():
        for prompt, length in requests:
            got = outputs[id(prompt)]
            ids = torch.tensor([prompt + got[:-1]], device=next(model.parameters()).device)
            logits = model(ids, logits_to_keep=len(got)).logits[0].float()  # predicts got[0..]
            best = logits.argmax(-1).tolist()
            same = [b == g for b, g in zip(best, got)]
            agree += sum(same)
            total += len(got)
            whole += all(same)
            for t, ok in enumerate(same):
                if not ok:
                    row = logits[t]
                    gaps.append(((row[best[t]] - row[got[t]]).item(), (row.max() - row.min()).item(), t))
    out = f"{whole}/{len(requests)} sequences, {agree}/{total} tokens the alone forward's argmax"
    if gaps:
        worst = max(gaps)
        out += (f"; {len(gaps)} not (largest logit gap {worst[0]:.3g} of spread {worst[1]:.3g}, first at token "
                f"{min(g[2] for g in gaps)})")
    return out


def check_graph_decode(device: str) -> None:
    """On CUDA: model.generate takes the CUDA-graph step by default for both families and gives the eager
    step's greedy tokens; the engine's graph decode gives eager generate's tokens for requests in one batch
    (tiny random float32 models, so the comparison is exact)."""
    import flashxlstm
    from flashxlstm.generation import cuda_graph

    if device != "cuda":  # the same code runs on the CPU (a smoke test): no graphs there, so `used` is False
        NOTES.append("graph checks on the CPU: generate and the engine run the static-buffer step eagerly")
    torch.manual_seed(0)
    families = {  # the benchmark's family (the xLSTMLM graph path was checked on the H200 before)
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
    engine = Engine(model, None, EngineConfig(max_batch=16, prefill_tokens=64, prefill_rows=4, eos_token_id=[]))
    rng = random.Random(1)
    lists = [[rng.randrange(256) for _ in range(rng.choice([1, 7, 30, 64, 90, 150]))] for _ in range(24)]
    lengths = [rng.randint(4, 24) for _ in lists]
    outs = engine.generate(lists, [SamplingParams(max_tokens=t, temperature=0) for t in lengths])
    alone = [model.generate(torch.tensor([p], device=device), t, eos_token_id=None, use_cuda_graph=False)
             [0, len(p):].tolist() for p, t in zip(lists, lengths)]
    same = sum(o.token_ids == a for o, a in zip(outs, alone))
    return dict(generate_default_uses_graph=used, generate_graph_equals_eager=bool(torch.equal(default, eager)),
                engine_graphs=graph_report(engine),
                engine_16_rows_equal_eager_generate=f"{same}/{len(lists)}")


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
                       streamer=times, prefill_chunk_size=args.static_chunk, eos_token_id=None)
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
        seconds = (time.perf_counter() - t0) / steps
    row = dict(mode="peer: static graph step", streams=n, decode_step_tok_s=round(n / seconds, 1),
               step_ms=round(seconds * 1e3, 3))
    if "bytes_per_s" in FLOOR:  # the bytes a step must move at least, at the copy bandwidth measured in this run
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        states = n * 2 * FLOOR["state_bytes"]  # read one buffer set, write the other
        row.update(floor_ms=round((weights + states) / FLOOR["bytes_per_s"] * 1e3, 3),
                   state_share=round(states / (weights + states), 3))
    ROWS.append(row)
    print(json.dumps(ROWS[-1]), flush=True)
    del runner


FLOOR: dict = {}


def measure_floor(model, device: str) -> None:
    """The device's copy bandwidth (bytes read + written per second, a 2 GiB device-to-device copy) and the
    bytes of one sequence's state (the state itself, one buffer set), for the decode step's memory floor."""
    from flashxlstm.generation.cuda_graph import state_leaves

    with torch.no_grad():
        _, state = model(torch.zeros(1, 1, dtype=torch.long, device=device))
    FLOOR["state_bytes"] = sum(t.numel() * t.element_size() for t in state_leaves(state))
    if device != "cuda":
        return
    a = torch.empty(2**30, dtype=torch.int16, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    sync()
    FLOOR["bytes_per_s"] = 10 * 2 * a.numel() * a.element_size() / (time.perf_counter() - t0)
    NOTES.append(f"copy bandwidth measured here: {FLOOR['bytes_per_s'] / 1e12:.2f} TB/s (read + write); one "
                 f"sequence's fp32 state {FLOOR['state_bytes'] / 2**20:.1f} MiB")
    del a, b


def attempt(name: str, fn) -> None:
    try:
        fn()
    except Exception as e:  # one failed level (e.g. out of memory at 256 streams) does not lose the others
        NOTES.append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
        traceback.print_exc()
    gc.collect()  # the engine's graphs and state buffers go before the next level allocates its own
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
    cols = ["mode", "streams", "wall_s", "tok_s", "decode_step_tok_s", "full_batch_tok_s", "step_ms", "floor_ms",
            "state_share", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "itl_steady_p50_ms",
            "itl_steady_p99_ms", "itl_slice_p50_ms", "itl_slice_p99_ms", "gaps_steady", "gaps_slice", "slices",
            "prompt_tokens", "state_MB_per_stream", "slot_MB_per_stream", "cuda_graphs", "greedy_check"]
    lines = ["# Serving: continuous batching vs static-batch generate (same model, same run)", "",
             f"Command: `python benchmarks/{os.path.basename(__file__)} {' '.join(sys.argv[1:])}`  ",
             f"Machine: {machine}; {platform.platform()}; torch threads {torch.get_num_threads()}  ",
             f"Versions: {json.dumps(versions())}  ", f"Model: {shape}  ",
             f"Workload: {'first a request with a ' + str(args.fill_prompt) + '-token prompt and an output in the upper half of the range (fills the batch), then ' if args.fill_prompt else ''}"
             f"{args.rounds} request(s) per stream ({args.rounds_one} at 1 stream), prompts log-uniform in "
             f"{args.prompt_min}-{args.prompt_max} tokens, outputs {args.tokens_min}-{args.tokens_max} tokens, "
             f"greedy; engine: one for every level (max batch {max(args.streams)}), prefill slices of "
             f"{args.prefill_tokens} positions (up to {args.prefill_rows} prompts each); static generate up to "
             f"{args.static_max} streams, prefill chunks of {args.static_chunk}; time box {args.time_box} s", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in list(ROWS):
        lines.append("| " + " | ".join("-" if r.get(c) is None else str(r[c]) for c in cols) + " |")
    if CHECKS:
        keys = list(dict.fromkeys(k for c in CHECKS for k in c))
        lines += ["", "CUDA-graph checks (tiny random float32 models):", "", "| " + " | ".join(keys) + " |",
                  "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(c.get(k)) for k in keys) + " |" for c in CHECKS]
    ratios = []
    find = lambda mode, n: next((r for r in ROWS if r["mode"].startswith(mode) and r["streams"] == n), None)
    one, peer_one = find("engine", 1), find("peer", 1)
    for n in args.streams:
        eng, peer, stat = find("engine", n), find("peer", n), find("static", n)
        if eng and peer and eng.get("full_batch_tok_s"):
            ratios.append(f"- {n} streams: engine decode step at full batch / peer graph step = "
                          f"{eng['full_batch_tok_s'] / peer['decode_step_tok_s']:.2f}")
        if eng and stat:
            ratios.append(f"- {n} streams: engine / static generate tokens per second = {eng['tok_s'] / stat['tok_s']:.2f}")
        if eng and one and one.get("itl_steady_p50_ms"):
            for key, what in (("itl_p99_ms", "ITL p99, slices counted"), ("itl_steady_p99_ms", "ITL p99 of gaps without a slice")):
                if eng.get(key):
                    ratios.append(f"- {n} streams: engine {what} / single-stream ITL p50 = "
                                  f"{eng[key] / one['itl_steady_p50_ms']:.2f}")
        if eng and eng.get("itl_slice_p50_ms") and eng.get("itl_steady_p50_ms"):
            ratios.append(f"- {n} streams: ITL p50 of a gap with a slice / without = "
                          f"{eng['itl_slice_p50_ms'] / eng['itl_steady_p50_ms']:.2f}")
        if peer and peer_one and peer.get("step_ms"):
            ratios.append(f"- {n} streams: peer graph step / its single-stream step = "
                          f"{peer['step_ms'] / peer_one['step_ms']:.2f}"
                          + (f"; memory floor of the step / single-stream floor = "
                             f"{peer['floor_ms'] / peer_one['floor_ms']:.2f} (fp32 state {100 * peer['state_share']:.0f} % "
                             f"of the bytes)" if peer.get("floor_ms") and peer_one.get("floor_ms") else ""))
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
    parser.add_argument("--streams", default=None, help="comma-separated concurrency levels, run in this order "
                        "(default 1,16,64,256; the largest is the engine's max batch)")
    parser.add_argument("--rounds", type=int, default=1, help="requests per stream after the first (default %(default)s)")
    parser.add_argument("--rounds-one", type=int, default=3, help="the same at 1 stream (default %(default)s)")
    parser.add_argument("--prompt-min", type=int, default=None)
    parser.add_argument("--prompt-max", type=int, default=None)
    parser.add_argument("--tokens-min", type=int, default=None)
    parser.add_argument("--tokens-max", type=int, default=None)
    parser.add_argument("--prefill-tokens", type=int, default=512,
                        help="engine: positions of one prefill slice (default %(default)s)")
    parser.add_argument("--prefill-rows", type=int, default=4, help="engine: prompts per slice at most (default %(default)s)")
    parser.add_argument("--static-chunk", type=int, default=2048,
                        help="static generate: prefill_chunk_size (default %(default)s)")
    parser.add_argument("--fill-prompt", type=int, default=None,
                        help="prompt tokens of each stream's first request, which fills the batch (0: none; "
                             "default 32, tiny 4); the --rounds requests of the prompt range follow it")
    parser.add_argument("--checks-after", type=int, default=64,
                        help="run the float32 checks after the first level with at least this many streams")
    parser.add_argument("--peer-steps", type=int, default=None)
    parser.add_argument("--static-max", type=int, default=64, help="static generate up to this many streams")
    parser.add_argument("--check", type=int, default=2,
                        help="requests per level whose output is checked against a forward alone (default %(default)s)")
    parser.add_argument("--no-checks", action="store_true", help="leave out the CUDA-graph checks")
    parser.add_argument("--time-box", type=float, default=None, help="hard cap in seconds on the whole run")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    defaults = (dict(streams="1,4,8", prompt_min=8, prompt_max=64, tokens_min=4, tokens_max=16, peer_steps=8,
                     fill_prompt=4)
                if args.tiny else
                dict(streams="1,16,64,256", prompt_min=512, prompt_max=8192, tokens_min=64, tokens_max=256,
                     peer_steps=64, fill_prompt=32))
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
                for partial in list(LIVE):
                    partial()
                write(args, device, shape)
            finally:
                os._exit(3)

        timer = threading.Timer(max(args.time_box - (time.perf_counter() - start), 1.0), expire)
        timer.daemon = True
        timer.start()

    def phase(name: str) -> None:
        NOTES.append(f"+{time.perf_counter() - start:.0f} s: {name}")

    model = build_model(args, device)
    c = model.config
    shape = (f"xLSTMLarge D={c.embedding_dim} NH={c.num_heads} L={c.num_blocks} V={c.vocab_size}"
             f"{'' if args.tiny or c.num_blocks == 32 else f' (the 7B shape with {c.num_blocks} of its 32 blocks)'}, "
             f"{sum(p.numel() for p in model.parameters()):,} parameters, random "
             f"{str(next(model.parameters()).dtype).removeprefix('torch.')} weights, {c.weight_mode} weights")
    print(shape, flush=True)
    phase("model built")
    write(args, device, shape)
    attempt("memory floor", lambda: measure_floor(model, device))
    for n in sorted(set(args.streams)):  # before the engine's state buffers take their memory
        attempt(f"peer at {n}", lambda: run_peer(model, n, args, device))
    phase("peers done")
    write(args, device, shape)
    holder: list = []
    attempt("engine setup", lambda: holder.append(EngineRun(model, args, max(args.streams))))
    phase("engine built")
    for i, n in enumerate(args.streams):
        rounds = args.rounds_one if n == 1 else args.rounds
        work = workload(n, args, c.vocab_size, seed=n, rounds=rounds)
        if holder:
            attempt(f"engine at {n}", lambda: run_engine(model, holder[0], work, args))
            phase(f"engine at {n} done")
        if not args.no_checks and not CHECKS and (n >= args.checks_after or i == len(args.streams) - 1):
            attempt("graph checks", lambda: check_graph_decode(device))  # point 3: fault or rounding
        if i == len(args.streams) - 1 and holder:  # the static run at the last level gets the engine's memory
            holder.pop().close()
            attempt("free", lambda: None)
        if n <= args.static_max:
            attempt(f"static generate at {n}", lambda: run_static(model, work, args, device))
            phase(f"static at {n} done")
        else:
            NOTES.append(f"static generate at {n} streams: not run (--static-max {args.static_max})")
        write(args, device, shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
