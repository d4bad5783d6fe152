"""The serving engine: continuous batching of recurrent states, usable without HTTP.

    engine = Engine(model, tokenizer, EngineConfig(max_batch=16))
    outs = engine.generate(["Hello", [1, 2, 3]], SamplingParams(max_tokens=32, temperature=0))
    handle = engine.submit("Once upon", SamplingParams(max_tokens=64))   # engine.start() runs a thread
    for out in handle: print(out.text, end="")                           # RequestOutput deltas

Each scheduler iteration (`step`) does four things, in this order on the device:
1. admit waiting requests while fewer than max_batch are in flight (prefilling or decoding);
2. prefill: one slice of fixed shape (slices.py: `prefill_tokens` positions as 1 x T, 2 x T/2, 4 x T/4, ...,
   up to `prefill_rows` prompts, a captured graph per shape on CUDA) over the oldest prefilling requests,
   the shape that covers the most of their prompt tokens. A long prompt is spread over many iterations, and
   every decode step waits for at most one slice of T positions, whatever the prompts. A request whose prompt
   the slice ends gets its first token chosen on the device and joins the running batch (SlotStates.put);
3. decode: queue one step of every running sequence on the device, its next token chosen there too
   (RowSampler: greedy argmax or each request's own temperature / top-k / top-p / seed as batched tensor
   ops) and written straight into the next step's input, then an asynchronous copy of the tokens to the host;
4. results: the host work (EOS, stop ids, detokenizing, stop strings, max_tokens, sending them out) on every
   earlier iteration's tokens, waiting for them, and on this iteration's when the device already has them
   (always on the CPU). On CUDA the device then runs this iteration's slice and step while the host works on
   the previous one's. A sequence that finished leaves the batch (the last row moves into its place); a step
   it was queued for after it finished is discarded.

Inter-token gaps: the gap before a decode step's tokens holds that step and the slice queued just before it
(`RequestOutput.after_prefill` says whether there was one), which is what a client sees when the device is
the bottleneck (on CUDA, with captured slices) and when it is synchronous (CPU).

A sequence is computed as `generate` computes it alone (its first slice from the empty state, padding kept
out of the state by the attention mask); rows of a batch are independent, so greedy outputs equal
`generate`'s whatever else runs (exactly in float32; in bf16 a different batch shape can round a near-tie
the other way). Seeded sampling is reproducible whatever else runs (sampler.py says how it draws). Constant
memory per sequence: the state, never a growing cache.

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
from torch import Tensor

from .params import SamplingParams
from .sampler import RowSampler
from .slices import PrefillSlices
from .states import SlotStates
from .text import ServingTokenizer, TextStream


@dataclass
class EngineConfig:
    max_batch: int = 16  # sequences decoded together (and in flight at most)
    prefill_tokens: int = 512  # positions of one prefill slice (one slice per iteration, before the decode step)
    prefill_rows: int = 4  # prompts one slice can hold at most (shapes 1 x T, 2 x T/2, ..., rows x T/rows)
    max_prompt_tokens: int = 8192
    max_tokens_limit: int = 4096  # the largest max_tokens a request may ask for
    max_queue: int = 4096  # waiting requests beyond this are refused
    buckets: list[int] | None = None  # decode batch sizes (default 1, 2, 4, ..., max_batch)
    cuda_graph: bool | None = None  # default: on CUDA
    eos_token_id: int | list[int] | None = None  # default: the model config's

    def check(self) -> None:
        for name in ("max_batch", "prefill_tokens", "prefill_rows", "max_prompt_tokens", "max_tokens_limit",
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
    after_prefill: bool = False  # a prefill slice ran on the device between this token's step and the last


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
    seed: int = 0
    prefilled: int = 0
    lane: int = -1  # during prefill: the slice lane holding its state
    output: list[int] = field(default_factory=list)
    done: bool = False  # finished (its tokens still on their way from the device are discarded)
    joined: int = -1  # the iteration in which it joined the running batch


@dataclass
class _Launched:
    """Tokens the device chose in one iteration, on their way to the host: one decode step's (row i of the
    step is requests[i]) or the first tokens of the prompts whose prefill finished (decode=False)."""
    requests: list[_Request]
    tokens: Tensor  # (len(requests),) int64 on the host (pinned, filled asynchronously on CUDA)
    ready: Any  # a torch.cuda.Event recorded after the copy, or None on the CPU
    decode: bool
    iteration: int
    after_prefill: bool = False  # decode: a prefill slice ran between the previous decode step and this one


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
        self.slices = PrefillSlices(model, self.config.prefill_tokens, self.config.prefill_rows,
                                    self.slots.empty_state(), graph=self.slots.cuda_graph)
        self.sampler = RowSampler(self.config.max_batch, self.device)
        self._next = torch.zeros(self.config.max_batch, dtype=torch.long, device=self.device)  # rows' next input
        self._launched: deque[_Launched] = deque()
        self._iteration = 0
        self._sliced = False  # a prefill slice was queued in this iteration (before its decode step)
        self._last_decode: tuple[int, float] | None = None  # (iteration, time) of the last decode result
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
        req = _Request(rid, ids, params, handle, stream, time.perf_counter(), seed=RowSampler.request_seed(params))
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
        return bool(self._rows or self._prefilling or self._waiting or self._launched or not self._inbox.empty()
                    or not self._aborts.empty())

    @torch.no_grad()
    def step(self) -> None:
        """One scheduler iteration: admit, queue a prefill slice and a decode step, then the host work on the
        tokens that reached the host; the outputs go out at the end."""
        try:
            self._step()
        finally:
            self._flush()

    def _flush(self) -> None:
        outputs, self._outbox = self._outbox, []
        deliver(outputs)

    def _step(self) -> None:
        self._iteration += 1
        while not self._inbox.empty():
            req = self._inbox.get()
            self._waiting.append(req)
            self.stats.requests_received += 1
            self.stats.prompt_tokens += len(req.prompt)
        self._apply_aborts()
        while self._waiting and len(self._rows) + len(self._prefilling) < self.config.max_batch:
            self._prefilling.append(self._waiting.popleft())
        self._sliced = False
        self._prefill()
        if self._rows:
            self._decode()
        while self._launched and (self._launched[0].iteration < self._iteration or self._launched[0].ready is None
                                  or self._launched[0].ready.query()):
            self._collect(self._launched.popleft())  # earlier iterations' tokens, and this one's if already there
        self._retire([i for i, r in enumerate(self._rows) if r.done])
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
        for req in self._rows:
            if req.id in ids and not req.done:
                self._finish(req, "abort")
        self._retire([i for i, r in enumerate(self._rows) if r.done])

    def _to_host(self, tokens: Tensor) -> tuple[Tensor, Any]:
        """Start copying device tokens to the host: (host tensor, event to wait for; None on the CPU)."""
        if tokens.device.type != "cuda":
            return tokens, None
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _prefill(self) -> None:
        """Queue one slice over the oldest prefilling requests, lane j holding the j-th oldest (a request only
        ever moves to a lower lane, as older ones finish). Requests whose prompt it ends get their first
        token chosen on the device and join the running batch."""
        if not self._prefilling:
            return
        oldest = list(itertools.islice(self._prefilling, self.slices.rows))
        rows, width = self.slices.shape_for([len(r.prompt) - r.prefilled for r in oldest])
        picked = oldest[:rows]
        for lane, req in enumerate(picked):
            if req.prefilled == 0:
                self.slices.reset(lane)
            elif req.lane != lane:
                self.slices.move(req.lane, lane)
            req.lane = lane
        chunks = [req.prompt[req.prefilled:req.prefilled + width] for req in picked]
        logits = self.slices.run(chunks, (rows, width))
        self.stats.prefill_forwards += 1
        self._sliced = True
        for req, chunk in zip(picked, chunks):
            req.prefilled += len(chunk)
        done = [j for j, req in enumerate(picked) if req.prefilled == len(req.prompt)]
        if not done:
            return
        reqs = [picked[j] for j in done]
        if len(done) < len(picked):
            logits = logits.index_select(0, torch.tensor(done).to(self.device, non_blocking=True))
        first = self.sampler.choose_for(logits, [r.params for r in reqs], [r.seed for r in reqs], [0] * len(reqs))
        for i, (j, req) in enumerate(zip(done, reqs)):
            self._prefilling.remove(req)
            self.stats.prefills += 1
            row = len(self._rows)
            self.slots.put(row, self.slices.lane(j))
            self._next[row:row + 1].copy_(first[i:i + 1])
            self.sampler.set_row(row, req.params, req.seed, 1)
            self._rows.append(req)
            req.joined = self._iteration
        self._launched.append(_Launched(reqs, *self._to_host(first), decode=False, iteration=self._iteration))

    def _decode(self) -> None:
        n = len(self._rows)
        logits = self.slots.decode(self._next[:n])
        chosen = self.sampler.choose(logits)
        self._next[:n].copy_(chosen)
        self._launched.append(_Launched(list(self._rows), *self._to_host(chosen), decode=True,
                                        iteration=self._iteration, after_prefill=self._sliced))

    def _collect(self, launched: _Launched) -> None:
        """The host work on one iteration's tokens (waiting for their copy first)."""
        if launched.ready is not None:
            launched.ready.synchronize()
        tokens = launched.tokens.tolist()
        now = time.perf_counter()
        if launched.decode:
            last, self._last_decode = self._last_decode, (launched.iteration, now)
            seconds = now - last[1] if last is not None and last[0] == launched.iteration - 1 else None
            self.stats.record_step(len(tokens), seconds, launched.after_prefill)
        for req, token in zip(launched.requests, tokens):
            if not req.done:  # a request's first step follows its own last slice, not another's
                self._accept(req, token, launched.after_prefill and req.joined != launched.iteration)

    def _accept(self, req: _Request, token: int, after_prefill: bool = False) -> None:
        """Append a chosen token to a request and send it out (finishing the request when it ends there)."""
        req.output.append(token)
        self.stats.generated_tokens += 1
        reason = None
        if token in self.eos_ids and not req.params.ignore_eos or token in req.params.stop_token_ids:
            reason = "stop"
        elif req.stream is not None and req.stream.add(token):
            reason = "stop"
        elif len(req.output) >= req.params.max_tokens:
            reason = "length"
        if reason is None:
            self._emit(req, [token], after_prefill=after_prefill)
        else:
            self._finish(req, reason, [token], after_prefill=after_prefill)

    def _emit(self, req: _Request, ids: list[int], reason: str | None = None, error: str | None = None,
              after_prefill: bool = False) -> None:
        finished = reason is not None
        text = ""
        if req.stream is not None:
            if finished and reason != "stop":
                req.stream.finish()
            text = req.stream.take(final=finished)
        self._outbox.append((req.handle, RequestOutput(req.id, ids, text, finished, reason, len(req.prompt),
                                                       len(req.output), error, time.perf_counter(), after_prefill)))

    def _finish(self, req: _Request, reason: str, ids: list[int] | None = None, error: str | None = None,
                after_prefill: bool = False) -> None:
        self._emit(req, ids or [], reason, error, after_prefill)
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        req.done = True

    def _retire(self, rows: list[int]) -> None:
        """Remove finished rows (their clients already told), keeping rows packed: the last row moves into each
        freed one, with its state, its next input token and its sampling settings."""
        for i in sorted(rows, reverse=True):
            last = len(self._rows) - 1
            if last != i:
                self.slots.move(last, i)
                self._next[i:i + 1].copy_(self._next[last:last + 1])
                self.sampler.move(last, i)
            self._rows[i] = self._rows[last]
            self._rows.pop()

    def _fail_all(self, message: str) -> None:
        for req in [*self._rows, *self._prefilling, *self._waiting]:
            if not req.done:
                self._finish(req, "error", error=message)
        self._rows.clear()
        self._prefilling.clear()
        self._waiting.clear()
        self._launched.clear()
        self._last_decode = None

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
        self.decode_seconds = 0.0  # over the steps timed back to back (see record_step)
        self.timed_steps = 0
        self.timed_rows = 0
        self.occupancy_sum = 0
        self.errors = 0
        self.finished: dict[str, int] = {}
        self.running = 0
        self.queue_length = 0
        self._window: deque[tuple[float, int]] = deque()

    def record_step(self, rows: int, seconds: float | None, after_prefill: bool = False) -> None:
        """A decode step's tokens reached the host. seconds: since the previous step's did, when that step ran
        in the iteration before (the step's period: the device time of the step and of a prefill slice
        queued between them, or the host's time if the host is the slower); None otherwise."""
        self.decode_steps += 1
        if seconds is not None:
            self.decode_seconds += seconds
            self.timed_steps += 1
            self.timed_rows += rows
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

