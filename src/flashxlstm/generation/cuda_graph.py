"""One decode step of any stateful model, captured as a CUDA graph and replayed per token.

The runner owns static buffers: the input tokens (B, 1) and the state. Two ways to carry the state:
- ping-pong (the model's forward accepts `state_out`, as xLSTMLarge does): two state sets A and B and two
  graphs, A -> B and B -> A, replayed alternately; the new state is written once, never copied.
- copy (any model): one graph runs `logits, new = model(tokens, state=A)` and copies new into A.
Either way a replay runs on the GPU with no host synchronisation, and the model never modifies the state
it is given: the buffers belong to the runner. Requirements on the model's step: no host syncs, no
data-dependent shapes, the same state structure in and out.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ..nn.state import State, map_state


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


class CUDAGraphStep:
    """Capture `model(tokens (B, 1), state=...)`; `step(tokens)` replays it and returns logits (B, 1, V).

    The returned logits tensor is a static buffer overwritten by a later replay: read it before calling
    `step` again. `state()` returns a copy of the current state. compile=True runs the step through
    `torch.compile` first (fuses the small elementwise kernels; costs a compilation per batch size).
    """

    def __init__(self, model: torch.nn.Module, tokens: Tensor, state: State, warmup: int = 2, compile: bool = False):
        if tokens.device.type != "cuda":
            raise ValueError(f"CUDAGraphStep needs CUDA tensors, got tokens on {tokens.device}")
        self._tokens = tokens.clone()
        a = with_leaves(state, [t.clone() for t in state_leaves(state)])
        pingpong = accepts_state_out(model)
        b = map_state(torch.empty_like, a) if pingpong else None
        fn = torch.compile(model, dynamic=False) if compile else model
        run = (lambda src, dst: fn(self._tokens, state=src, state_out=dst)) if pingpong else (
            lambda src, dst: fn(self._tokens, state=src))

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):  # lazy initialisation (kernel compilation, autotuning) outside capture;
                run(a, b)  # writes only b (or nothing), so the state in a is kept
        torch.cuda.current_stream().wait_stream(side)

        self._graphs, self._logits, self._states = [], [], []
        for src, dst in ([(a, b), (b, a)] if pingpong else [(a, None)]):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                logits, new = run(src, dst)
                if not pingpong:
                    new_leaves, bufs = state_leaves(new), state_leaves(src)
                    if len(new_leaves) != len(bufs):
                        raise ValueError("CUDAGraphStep: the model returned a state with a different structure")
                    for buf, t in zip(bufs, new_leaves):
                        buf.copy_(t)
            self._graphs.append(graph)
            self._logits.append(logits)
            self._states.append(dst if pingpong else src)
        self._turn = 0

    def step(self, tokens: Tensor) -> Tensor:
        self._tokens.copy_(tokens)
        turn = self._turn
        self._graphs[turn].replay()
        self._turn = (turn + 1) % len(self._graphs)
        self._current = self._states[turn]
        return self._logits[turn]

    def state(self) -> State:
        return map_state(torch.clone, getattr(self, "_current", self._states[-1]))
