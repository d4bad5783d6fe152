"""The batch of recurrent states a server decodes: one row per running sequence, fixed memory per row.

Everything the engine knows about a model's state lives here, so a change of state type is a local change:

    slots = SlotStates(model, capacity=64)              # buffers for 64 rows, decode runners per bucket
    logits, state = slots.prefill(ids (1, S), state)    # one prompt chunk of one request, eagerly (None at first)
    slots.empty_state()                                 # a batch-1 state equal to what state=None means
    slots.put(row, state)                               # a prefilled sequence joins the batch at `row`
    logits = slots.decode(tokens (n,))                  # one step of rows 0..n-1 -> logits (n, V)
    slots.move(src, dst)                                # compaction when a row retires

Rows 0..n-1 hold the running sequences (the engine keeps them packed). A decode step runs the smallest
bucket size >= n on the first `bucket` rows; rows past n carry stale states that nothing reads, and every
op of both families is row-independent, so they never touch the live rows. Each bucket has its own
`StaticDecodeStep` (generation/cuda_graph.py) working in place on views of the one set of buffers: on CUDA a
captured graph per bucket, on the CPU the same step run eagerly. Models whose forward takes `state_out`
(the 7B family) ping-pong between two buffer sets; `self._live` says which set holds the current states.
The state is any nested tuple of tensors with the batch in dim 0 (both families).

The engine prefills prompts in fixed-shape slices (slices.py) from `empty_state()` and hands each finished
prompt's state to `put`.

Nothing here reads a device value on the host: the engine queues a decode step behind a prefill slice and
does its own bookkeeping while the device runs both. Token ids reach the model checked (the engine checks
every prompt on arrival), so the forward runs inside `inputs_checked()`, which skips the model's own
host-side value checks, and host tensors move with non_blocking copies.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..generation.cuda_graph import StaticDecodeStep, accepts_state_out, state_leaves
from ..generation.generate import _accepts, _forward_params, logits_and_state
from ..models.base import inputs_checked
from ..nn.state import map_state


def default_buckets(capacity: int) -> list[int]:
    """1, 2, 4, ... below capacity, then capacity itself."""
    sizes, b = [], 1
    while b < capacity:
        sizes.append(b)
        b *= 2
    return sizes + [capacity]


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class SlotStates:
    """Per-row recurrent states of up to `capacity` sequences and the decode step over them.

    cuda_graph: capture each bucket's step as CUDA graphs (default: when the model is on CUDA). All
    buckets are built (and captured) here, before any live state exists, because a capture's warmup writes
    the spare buffers.
    """

    def __init__(self, model: torch.nn.Module, capacity: int, buckets: list[int] | None = None,
                 cuda_graph: bool | None = None):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"SlotStates: capacity must be a positive int, got {capacity!r}")
        buckets = sorted(set(buckets)) if buckets else default_buckets(capacity)
        if buckets[0] < 1 or buckets[-1] != capacity:
            raise ValueError(f"SlotStates: buckets must be positive and end at the capacity {capacity}, got {buckets}")
        self.model, self.capacity, self.buckets = model, capacity, buckets
        params = _forward_params(model)
        self._keep_last = {"logits_to_keep": 1} if _accepts(params, "logits_to_keep") else {}
        self.device = _device_of(model)
        self.cuda_graph = self.device.type == "cuda" if cuda_graph is None else bool(cuda_graph)
        with torch.no_grad():
            _, probe = model(torch.zeros(1, 1, dtype=torch.long, device=self.device))
        self._empty = self._empty_state(probe)
        # the buffers only ever receive prefilled states: a prompt's first chunk starts from state=None, as
        # in generate, so a sequence is computed exactly as it would be alone
        self._sets = [map_state(lambda t: t.new_zeros((capacity, *t.shape[1:])), probe)]
        if accepts_state_out(model):
            self._sets.append(map_state(torch.zeros_like, self._sets[0]))
        self._live = 0
        self._runners: dict[int, StaticDecodeStep] = {}
        for b in buckets:
            views = [map_state(lambda t, b=b: t[:b], s) for s in self._sets]
            tokens = torch.zeros(b, 1, dtype=torch.long, device=self.device)
            self._runners[b] = StaticDecodeStep(model, tokens, views[0], graph=self.cuda_graph, in_place=True,
                                                spare=views[1] if len(views) > 1 else None)

    # ---- per-sequence state ---------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One chunk of one prompt (1, S) from `state` (None: nothing seen) -> last logits (1, V), new state."""
        with inputs_checked():
            logits, state = logits_and_state(self.model(input_ids.to(self.device, non_blocking=True), state=state,
                                                        **self._keep_last))
        return logits[:, -1], state

    def empty_state(self) -> Any:
        """A batch-1 state equal to what state=None means (a prompt's first slice starts from it)."""
        return self._empty

    def _empty_state(self, probe: Any) -> Any:
        """A batch-1 state equal to what state=None means: the model's initial_state, else zeros (7B family)."""
        init = getattr(self.model, "initial_state", None)
        if init is not None:
            dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
            empty = init(1, self.device, dtype)
        else:
            empty = map_state(lambda t: t.new_zeros((1, *t.shape[1:])), probe)
        if [(t.shape, t.dtype) for t in state_leaves(empty)] != [(t.shape, t.dtype) for t in state_leaves(probe)]:
            raise ValueError("SlotStates: the model's initial_state differs in shape or dtype from its output state")
        return empty

    def row_bytes(self) -> int:
        """Memory one sequence's slot takes: its state, times the buffer sets (2 for ping-pong models)."""
        return len(self._sets) * sum(t[0].numel() * t.element_size() for t in state_leaves(self._sets[0]))

    def _live_leaves(self) -> list[Tensor]:
        return state_leaves(self._sets[self._live])

    def put(self, row: int, state: Any) -> None:
        """Write a batch-1 state (from `prefill`) into `row` of the live buffers."""
        new = state_leaves(state)
        bufs = self._live_leaves()
        if len(new) != len(bufs):
            raise ValueError("SlotStates.put: the state has a different structure from the model's")
        for buf, t in zip(bufs, new):
            buf[row].copy_(t[0])

    def get(self, row: int) -> list[Tensor]:
        """A copy of one row's state leaves (tests and debugging)."""
        return [t[row].clone() for t in self._live_leaves()]

    def move(self, src: int, dst: int) -> None:
        if src != dst:
            for buf in self._live_leaves():
                buf[dst].copy_(buf[src])

    # ---- the batched step -----------------------------------------------------------------------------

    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"SlotStates: {n} rows exceed the capacity {self.capacity}")

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def decode(self, tokens: Tensor) -> Tensor:
        """Advance rows 0..n-1 by one token each (tokens (n,) int64, best on the device) -> their logits (n, V),
        without a host sync (on CUDA the logits are the captured graph's buffer: read them before the next step)."""
        n = tokens.shape[0]
        b = self.bucket(n)
        padded = torch.zeros(b, 1, dtype=torch.long, device=self.device)
        padded[:n, 0] = tokens.to(self.device, non_blocking=True)
        logits = self._runners[b].step(padded, turn=self._live)
        if len(self._sets) > 1:  # the step wrote the other buffer set (ping-pong), which is now live
            self._live = 1 - self._live
        return logits[:n, -1]
