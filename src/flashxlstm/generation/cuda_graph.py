"""One decode step of any stateful model on static buffers, captured as a CUDA graph and replayed per token.

    runner = StaticDecodeStep(model, tokens (B, 1), state)      # graph=None: capture on CUDA, not on CPU
    logits = runner.step(next_tokens)                            # (B, 1, V)

The runner owns static buffers: the input tokens (B, 1) and the state. Two ways to carry the state:
- ping-pong (the model's forward accepts `state_out`, as xLSTMLarge does): two state sets A and B, and the
  step alternates A -> B and B -> A (two graphs on CUDA); the new state is written once, never copied.
- copy (any model): the step runs `out = model(tokens, state=A)` and copies out.state into A.
On CUDA each step is one graph replay with no host synchronisation. On the CPU (or with graph=False) the
very same step function runs eagerly on the same buffers, so the static-buffer decode loop is one code path
that the CPU tests cover; only capture and replay are CUDA-specific. The model never modifies the state it
is given: the buffers belong to the runner. Requirements on the model's step: no host syncs, no
data-dependent shapes, the same state structure in and out.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ..nn.state import State, map_state
from .generate import logits_and_state


def state_leaves(state: State) -> list[Tensor]:
    leaves: list[Tensor] = []
    map_state(lambda t: leaves.append(t) or t, state)
    return leaves


def with_leaves(state: State, leaves: list[Tensor]) -> State:
    """The structure of `state` with its tensors replaced, in order, by `leaves`."""
    it = iter(leaves)
    return map_state(lambda _: next(it), state)


def accepts_state_out(model: torch.nn.Module) -> bool:
    return "state_out" in inspect.signature(model.forward).parameters


class StaticDecodeStep:
    """`step(tokens)` runs one decode step on the runner's static buffers and returns logits (B, 1, V).

    graph: capture the step as CUDA graphs (default: when the tokens are on CUDA). With a graph the returned
    logits tensor is a static buffer overwritten by a later step: read it before calling `step` again.
    `state()` returns a copy of the current state. compile=True runs the step through `torch.compile`
    first (costs a compilation per batch size).
    in_place: run on `state` itself and on `spare` (a second set shaped like it, needed by ping-pong models)
    instead of on copies, so runners of several batch sizes can share one set of state memory (views of
    it); the warmup before a capture then writes `spare`. `step(tokens, turn)` picks the direction
    (0: state -> spare, 1: spare -> state) when the caller tracks where the live state is.
    """

    def __init__(self, model: torch.nn.Module, tokens: Tensor, state: State, *, graph: bool | None = None,
                 warmup: int = 2, compile: bool = False, in_place: bool = False, spare: State = None):
        graph = tokens.is_cuda if graph is None else graph
        if graph and tokens.device.type != "cuda":
            raise ValueError(f"StaticDecodeStep: graph=True needs CUDA tensors, got tokens on {tokens.device}")
        self._tokens = tokens.clone()
        self.pingpong = accepts_state_out(model)
        if in_place:
            if self.pingpong and spare is None:
                raise ValueError("StaticDecodeStep: in_place with a state_out model needs a spare state set")
            a, b = state, (spare if self.pingpong else None)
        else:
            a = with_leaves(state, [t.clone() for t in state_leaves(state)])
            b = map_state(torch.empty_like, a) if self.pingpong else None
        self._fn = torch.compile(model, dynamic=False) if compile else model
        # (source, destination) of each turn; the state after turn t lives in self._states[t]
        self._turns = [(a, b), (b, a)] if self.pingpong else [(a, None)]
        self._states = [dst if self.pingpong else src for src, dst in self._turns]
        self._graphs: list[torch.cuda.CUDAGraph] = []
        self._logits: list[Tensor] = []
        if graph:
            self._capture(warmup)
        self._turn = 0

    def _run(self, turn: int) -> Tensor:
        """The step itself: reads the token buffer and the turn's source state, writes its destination."""
        src, dst = self._turns[turn]
        if self.pingpong:
            logits, _ = logits_and_state(self._fn(self._tokens, state=src, state_out=dst))
            return logits
        logits, new = logits_and_state(self._fn(self._tokens, state=src))
        new_leaves, bufs = state_leaves(new), state_leaves(src)
        if len(new_leaves) != len(bufs):
            raise ValueError("StaticDecodeStep: the model returned a state with a different structure")
        for buf, t in zip(bufs, new_leaves):
            buf.copy_(t)
        return logits

    def _capture(self, warmup: int) -> None:
        src, dst = self._turns[0]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):  # lazy initialisation (kernel compilation, autotuning) outside capture;
                if self.pingpong:  # writes only the destination, so the state in the source is kept
                    self._fn(self._tokens, state=src, state_out=dst)
                else:
                    self._fn(self._tokens, state=src)
        torch.cuda.current_stream().wait_stream(side)
        for turn in range(len(self._turns)):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                self._logits.append(self._run(turn))
            self._graphs.append(graph)

    def step(self, tokens: Tensor, turn: int | None = None) -> Tensor:
        self._tokens.copy_(tokens)
        turn = self._turn if turn is None else turn % len(self._turns)
        if self._graphs:
            self._graphs[turn].replay()
            logits = self._logits[turn]
        else:
            with torch.no_grad():
                logits = self._run(turn)
        self._turn = (turn + 1) % len(self._turns)
        self._current = self._states[turn]
        return logits

    def state(self) -> State:
        return map_state(torch.clone, getattr(self, "_current", self._turns[0][0]))


class CUDAGraphStep(StaticDecodeStep):
    """StaticDecodeStep that always captures (CUDA tensors required)."""

    def __init__(self, model: torch.nn.Module, tokens: Tensor, state: State, warmup: int = 2, compile: bool = False):
        if tokens.device.type != "cuda":
            raise ValueError(f"CUDAGraphStep needs CUDA tensors, got tokens on {tokens.device}")
        super().__init__(model, tokens, state, graph=True, warmup=warmup, compile=compile)
