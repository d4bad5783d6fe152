"""One decode step of any stateful model, captured once as a CUDA graph and replayed per token.

The runner owns static buffers: the input tokens (B, 1) and a copy of every state tensor. One replay
runs `logits, new_state = model(tokens, state=buffers)` and copies new_state into the buffers, all on the
GPU with no host synchronisation. The model itself still never mutates a state in place: the buffers
belong to the runner. Requirements on the model's step: no host syncs, no data-dependent shapes, the
same state structure in and out (true of the mLSTM step).
"""
from __future__ import annotations

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


class CUDAGraphStep:
    """Capture `model(tokens (B, 1), state=...)` once; `step(tokens)` replays it and returns logits (B, 1, V).

    The returned logits tensor is a static buffer overwritten by the next replay: read it before calling
    `step` again. `state()` returns (clones of) the current state.
    """

    def __init__(self, model: torch.nn.Module, tokens: Tensor, state: State, warmup: int = 2):
        if tokens.device.type != "cuda":
            raise ValueError(f"CUDAGraphStep needs CUDA tensors, got tokens on {tokens.device}")
        self._tokens = tokens.clone()
        self._state = with_leaves(state, [t.clone() for t in state_leaves(state)])
        buffers = state_leaves(self._state)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):  # lets lazy initialisation (kernel autotuning, allocations) happen outside capture
                model(self._tokens, state=self._state)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.no_grad():
            logits, new_state = model(self._tokens, state=self._state)
            new_leaves = state_leaves(new_state)
            if len(new_leaves) != len(buffers):
                raise ValueError("CUDAGraphStep: the model returned a state with a different structure")
            for buf, new in zip(buffers, new_leaves):
                buf.copy_(new)
        self._logits = logits

    def step(self, tokens: Tensor) -> Tensor:
        self._tokens.copy_(tokens)
        self._graph.replay()
        return self._logits

    def state(self) -> State:
        return map_state(torch.clone, self._state)
