"""The serving engine: continuous batching of recurrent states, usable without HTTP.

    engine = Engine(model, tokenizer, EngineConfig(max_batch=16))
    outs = engine.generate(["Hello", [1, 2, 3]], SamplingParams(max_tokens=32, temperature=0))
    handle = engine.submit("Once upon", SamplingParams(max_tokens=64))   # engine.start() runs a thread
    for out in handle: print(out.text, end="")                           # RequestOutput deltas

Each scheduler iteration (`step`) does three things:
1. admit waiting requests while fewer than max_batch are in flight (prefilling or decoding);
2. prefill: one forward over the next chunks (at most `prefill_chunk` tokens each) of the oldest prefilling
   requests, as many as fit `prefill_tokens` (padding counted), left-padded into one batch
   (SlotStates.prefill_many), so a long prompt is spread over many iterations and never stalls the running
   sequences for longer than one prefill forward. A request whose prompt is done chooses its first token
   and joins the batch (SlotStates.put);
3. decode: one step of every running sequence (SlotStates.decode), each choosing its next token with its
   own sampling parameters; a finished sequence (EOS, a stop token id, a stop string, max_tokens, or an
   abort such as a client disconnect) leaves the batch and the last row moves into its place.

A sequence is computed as `generate` computes it alone (first prompt chunk from the empty state, padding
kept out of the state by the attention mask, the same sampling code); rows of a batch are independent, so
greedy outputs equal `generate`'s whatever else runs (up to the rounding of a different batch shape). Constant memory per sequence: the state, never a growing cache.

Thread safety: `submit` and `abort` may be called from any thread; everything else runs on the engine
thread (or the caller's, for `step`/`generate` without `start`).
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .params import SamplingParams, choose_tokens, make_generator
from .states import SlotStates
from .text import ServingTokenizer, TextStream


@dataclass
class EngineConfig:
    max_batch: int = 16  # sequences decoded together (and in flight at most)
    prefill_chunk: int = 512  # prompt tokens of one request per prefill forward
    prefill_tokens: int | None = None  # padded prompt tokens per prefill forward (several requests; default
    # 4 x prefill_chunk); one prefill forward per scheduler iteration bounds how long decoding waits
    max_prompt_tokens: int = 8192
    max_tokens_limit: int = 4096  # the largest max_tokens a request may ask for
    max_queue: int = 4096  # waiting requests beyond this are refused
    buckets: list[int] | None = None  # decode batch sizes (default 1, 2, 4, ..., max_batch)
    cuda_graph: bool | None = None  # default: on CUDA
    eos_token_id: int | list[int] | None = None  # default: the model config's

    def check(self) -> None:
        if self.prefill_tokens is None:
            self.prefill_tokens = 4 * self.prefill_chunk if isinstance(self.prefill_chunk, int) else None
        for name in ("max_batch", "prefill_chunk", "prefill_tokens", "max_prompt_tokens", "max_tokens_limit",
                     "max_queue"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"EngineConfig: {name} must be a positive int, got {v!r}")


class EngineError(RuntimeError):
    """The engine refused a request (full queue) or failed while running it."""


@dataclass
class RequestOutput:
    """One increment of a request's output: the ids and text generated since the last one."""
    request_id: str
    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None  # "stop" (EOS, stop id or string), "length", "abort", "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    time: float = 0.0  # time.perf_counter() when the engine produced it


class RequestHandle:
    """The caller's side of a request: iterate (blocking) or `async for` over its RequestOutputs."""

    def __init__(self, request_id: str, loop: Any = None):
        self.request_id = request_id
        self._loop = loop
        self._queue: Any = queue.SimpleQueue()
        if loop is not None:
            import asyncio

            self._queue = asyncio.Queue()

    def __iter__(self):
        while True:
            out = self._queue.get()
            yield out
            if out.finished:
                return

    async def __aiter__(self):
        while True:
            out = await self._queue.get()
            yield out
            if out.finished:
                return

    def result(self) -> RequestOutput:
        """Block until the request ends; the whole output as one RequestOutput."""
        ids, text, last = [], [], None
        for last in self:
            ids += last.token_ids
            text.append(last.text)
        return RequestOutput(self.request_id, ids, "".join(text), True, last.finish_reason, last.prompt_tokens,
                             last.completion_tokens, last.error, last.time)


def deliver(outputs: list[tuple[RequestHandle, RequestOutput]]) -> None:
    """Hand outputs to their handles in order: one wake-up per event loop for the lot (one decode step's
    outputs for every running request), not one per output, which would cost a wake-up per token per stream."""
    by_loop: dict[Any, list[tuple[RequestHandle, RequestOutput]]] = {}
    for handle, out in outputs:
        if handle._loop is None:
            handle._queue.put(out)
        else:
            by_loop.setdefault(handle._loop, []).append((handle, out))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


def _put_all(items: list[tuple[RequestHandle, RequestOutput]]) -> None:
    for handle, out in items:
        handle._queue.put_nowait(out)


@dataclass
class _Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    handle: RequestHandle
    stream: TextStream | None
    arrival: float
    generator: torch.Generator | None = None
    prefilled: int = 0
    state: Any = None  # during prefill
    output: list[int] = field(default_factory=list)
    last_token: int = 0


class Engine:
    """Continuous batching over a stateful model (`logits, state = model(ids, state=None)`)."""

    def __init__(self, model: torch.nn.Module, tokenizer: ServingTokenizer | None = None,
                 config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.config.check()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vocab_size = int(getattr(model.config, "vocab_size"))
        eos = self.config.eos_token_id
        if eos is None:
            eos = getattr(model.config, "eos_token_id", None)
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else list(eos or []))
        self.slots = SlotStates(model, self.config.max_batch, self.config.buckets, self.config.cuda_graph)
        self.device = self.slots.device
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._aborts: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: deque[_Request] = deque()
        self._prefilling: deque[_Request] = deque()
        self._rows: list[_Request] = []  # running sequences; row i of the state batch is self._rows[i]
        self._outbox: list[tuple[RequestHandle, RequestOutput]] = []  # delivered at the end of each step
        self._ids = itertools.count()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.stats = EngineStats(self.config.max_batch)

    # ---- requests in --------------------------------------------------------------------------------

    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a prompt (text through the tokenizer, or ids as given), checked against the limits."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: give the prompt as token ids")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise ValueError("a prompt must be a string or a list of integer token ids")
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"prompt token ids must lie in [0, {self.vocab_size}), got {bad[:5]}")
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        if len(ids) > self.config.max_prompt_tokens:
            raise ValueError(f"the prompt has {len(ids)} tokens, more than this server's limit of "
                             f"{self.config.max_prompt_tokens}")
        return ids

    def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
               request_id: str | None = None, loop: Any = None) -> RequestHandle:
        """Queue a request; ValueError for invalid input, EngineError when the queue is full.
        loop: an asyncio event loop to deliver outputs to (then iterate the handle with `async for`)."""
        params = params or SamplingParams()
        params.check(self.config.max_tokens_limit)
        ids = self.encode_prompt(prompt)
        if len(self._waiting) + self._inbox.qsize() >= self.config.max_queue:
            raise EngineError(f"the request queue is full ({self.config.max_queue} waiting); retry later")
        rid = request_id or f"req-{next(self._ids)}"
        handle = RequestHandle(rid, loop)
        stream = TextStream(self.tokenizer, params.stop) if self.tokenizer is not None else None
        if params.stop and stream is None:
            raise ValueError("stop strings need a tokenizer; this engine has none")
        req = _Request(rid, ids, params, handle, stream, time.perf_counter(),
                       generator=make_generator(params, self.device))
        self._inbox.put(req)
        self._wake.set()
        return handle

    def abort(self, request_id: str) -> None:
        """End a request wherever it is (waiting, prefilling, running); its slot frees at the next step."""
        self._aborts.put(request_id)
        self._wake.set()

    # ---- the scheduler -------------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self._rows)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting) + self._inbox.qsize()

    @property
    def num_prefilling(self) -> int:
        return len(self._prefilling)

    def has_work(self) -> bool:
        return bool(self._rows or self._prefilling or self._waiting or not self._inbox.empty()
                    or not self._aborts.empty())

    @torch.no_grad()
    def step(self) -> None:
        """One scheduler iteration: admit, one prefill forward, one decode step; then the outputs go out."""
        try:
            self._step()
        finally:
            self._flush()

    def _flush(self) -> None:
        outputs, self._outbox = self._outbox, []
        deliver(outputs)

    def _step(self) -> None:
        while not self._inbox.empty():
            req = self._inbox.get()
            self._waiting.append(req)
            self.stats.requests_received += 1
            self.stats.prompt_tokens += len(req.prompt)
        self._apply_aborts()
        while self._waiting and len(self._rows) + len(self._prefilling) < self.config.max_batch:
            self._prefilling.append(self._waiting.popleft())
        self._prefill()
        if self._rows:
            self._decode()
        self.stats.queue_length = len(self._waiting) + len(self._prefilling)
        self.stats.running = len(self._rows)

    def _apply_aborts(self) -> None:
        ids = set()
        while not self._aborts.empty():
            ids.add(self._aborts.get())
        if not ids:
            return
        for q in (self._waiting, self._prefilling):
            for req in [r for r in q if r.id in ids]:
                q.remove(req)
                self._finish(req, "abort")
        self._retire([i for i, r in enumerate(self._rows) if r.id in ids], "abort")

    def _prefill(self) -> None:
        """One prefill forward over the oldest prefilling requests: each gets its next chunk of at most
        prefill_chunk tokens, as many requests as fit prefill_tokens (counted with padding: requests x the
        longest chunk; the oldest always gets a chunk). Requests whose prompt is done choose their first
        token and join the batch."""
        cfg = self.config
        budget = cfg.prefill_tokens if cfg.prefill_tokens is not None else cfg.prefill_chunk
        picked: list[tuple[_Request, int]] = []
        longest = 0
        for req in self._prefilling:
            n = min(cfg.prefill_chunk, len(req.prompt) - req.prefilled, budget)
            if picked and (len(picked) + 1) * max(longest, n) > budget:
                break
            picked.append((req, n))
            longest = max(longest, n)
        if not picked:
            return
        chunks = [req.prompt[req.prefilled:req.prefilled + n] for req, n in picked]
        logits, states = self.slots.prefill_many(chunks, [req.state for req, _ in picked])
        self.stats.prefill_forwards += 1
        done = []
        for row, ((req, n), state) in enumerate(zip(picked, states)):
            req.state = state
            req.prefilled += n
            if req.prefilled == len(req.prompt):
                done.append(row)
        if not done:
            return
        reqs = [picked[row][0] for row in done]
        tokens = choose_tokens(logits[done], [r.params for r in reqs], [r.generator for r in reqs])
        for req, token in zip(reqs, tokens):
            self._prefilling.remove(req)
            self.stats.prefills += 1
            if self._accept(req, token):
                self.slots.put(len(self._rows), req.state)
                self._rows.append(req)
            req.state = None

    def _decode(self) -> None:
        t0 = time.perf_counter()
        tokens = torch.tensor([r.last_token for r in self._rows], dtype=torch.long)
        logits = self.slots.decode(tokens)
        chosen = choose_tokens(logits, [r.params for r in self._rows], [r.generator for r in self._rows])
        done = [i for i, (req, tok) in enumerate(zip(self._rows, chosen)) if not self._accept(req, tok)]
        self.stats.record_step(len(self._rows), time.perf_counter() - t0)
        self._retire(done, None)

    def _accept(self, req: _Request, token: int) -> bool:
        """Append a chosen token to a request and send it out; False when the request has finished."""
        req.output.append(token)
        req.last_token = token
        self.stats.generated_tokens += 1
        reason = None
        if token in self.eos_ids and not req.params.ignore_eos or token in req.params.stop_token_ids:
            reason = "stop"
        elif req.stream is not None and req.stream.add(token):
            reason = "stop"
        elif len(req.output) >= req.params.max_tokens:
            reason = "length"
        if reason is None:
            self._emit(req, [token])
            return True
        self._finish(req, reason, [token])
        return False

    def _emit(self, req: _Request, ids: list[int], reason: str | None = None, error: str | None = None) -> None:
        finished = reason is not None
        text = ""
        if req.stream is not None:
            if finished and reason != "stop":
                req.stream.finish()
            text = req.stream.take(final=finished)
        self._outbox.append((req.handle, RequestOutput(req.id, ids, text, finished, reason, len(req.prompt),
                                                       len(req.output), error, time.perf_counter())))

    def _finish(self, req: _Request, reason: str, ids: list[int] | None = None, error: str | None = None) -> None:
        self._emit(req, ids or [], reason, error)
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        req.state = None

    def _retire(self, rows: list[int], reason: str | None) -> None:
        """Remove finished rows (already told their clients unless reason is given), keeping rows packed."""
        for i in sorted(rows, reverse=True):
            req = self._rows[i]
            if reason is not None:
                self._finish(req, reason)
            last = len(self._rows) - 1
            self.slots.move(last, i)
            self._rows[i] = self._rows[last]
            self._rows.pop()

    def _fail_all(self, message: str) -> None:
        for req in [*self._rows, *self._prefilling, *self._waiting]:
            self._finish(req, "error", error=message)
        self._rows.clear()
        self._prefilling.clear()
        self._waiting.clear()

    # ---- running ------------------------------------------------------------------------------------

    def run_until_done(self) -> None:
        """Step on the calling thread until nothing is left (not while the engine thread runs)."""
        if self._thread is not None:
            raise RuntimeError("Engine.run_until_done: the engine thread is running; iterate the handles instead")
        while self.has_work():
            self.step()

    def generate(self, prompts: Sequence[str | Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
                 | None = None) -> list[RequestOutput]:
        """Run a list of prompts to completion (all batched together); one RequestOutput each."""
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        handles = [self.submit(p, sp) for p, sp in zip(prompts, plist)]
        if self._thread is None:
            self.run_until_done()
        return [h.result() for h in handles]

    def start(self) -> "Engine":
        """Run the scheduler on a background thread (what the HTTP server does)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="flashxlstm-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        if self.device.type == "cuda":  # a new thread starts on cuda:0; kernels must launch on the model's GPU
            torch.cuda.set_device(self.device)
        while not self._stopping:
            if not self.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception as e:  # a failed step leaves the batch undefined: end its requests, keep serving
                self.stats.errors += 1
                self._fail_all(f"{type(e).__name__}: {e}")
                self._flush()


class EngineStats:
    """Counters and gauges for /metrics (written by the engine thread, read by the server)."""

    def __init__(self, max_batch: int):
        self.max_batch = max_batch
        self.requests_received = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.prefills = 0
        self.prefill_forwards = 0
        self.decode_steps = 0
        self.decode_seconds = 0.0
        self.occupancy_sum = 0
        self.errors = 0
        self.finished: dict[str, int] = {}
        self.running = 0
        self.queue_length = 0
        self._window: deque[tuple[float, int]] = deque()

    def record_step(self, rows: int, seconds: float) -> None:
        self.decode_steps += 1
        self.decode_seconds += seconds
        self.occupancy_sum += rows
        now = time.monotonic()
        self._window.append((now, self.generated_tokens))
        while self._window and now - self._window[0][0] > 10.0:
            self._window.popleft()

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last 10 s (0 when idle)."""
        w = list(self._window)
        if len(w) < 2 or time.monotonic() - w[-1][0] > 10.0:
            return 0.0
        return (w[-1][1] - w[0][1]) / max(w[-1][0] - w[0][0], 1e-9)

