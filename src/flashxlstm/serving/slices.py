"""Prompt prefill in fixed-shape slices, each a captured CUDA graph, so a decode step waits for at most one.

    slices = PrefillSlices(model, tokens=512, rows=4, empty=state_of_nothing_seen)
    slices.shapes                                   # [(1, 512), (2, 256), (4, 128)]: every slice has `tokens` positions
    slices.reset(lane); slices.move(src, dst)       # a prompt starts in a lane / moves to a lower one
    logits = slices.run([chunk0, chunk1])           # lane j takes chunk j (1..width tokens) -> logits (2, V)
    slices.lane(j)                                  # the state of lane j (views), to hand to the decode batch

A prompt being prefilled lives in a lane: one row of a state buffer of `rows` rows that keeps its state from
one slice to the next. A slice of shape (r, width) advances lanes 0..r-1 by one chunk each, left-padded to
`width` with an attention mask that keeps the padding out of the state (both model families leave the state
exactly as it was at a padded position), so every slice of one shape is the same computation on the same
buffers: on CUDA one graph per shape (the forward and the copy of the new states back into the lanes),
replayed with no host sync and no per-kernel launch cost; on the CPU the same function runs eagerly. Each
shape has the same number of positions (`tokens`), so every slice costs about the same and bounds how long
a decode step queued behind it waits, whatever the prompts.

Lanes past the chunks given run fully masked: their state stays as it was. The last position of each row is
real (left padding), so its logits are the prompt's next-token logits when the chunk ends the prompt.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..generation.cuda_graph import state_leaves
from ..generation.generate import _accepts, _forward_params, logits_and_state
from ..models.base import inputs_checked
from ..nn.state import map_state


def slice_shapes(tokens: int, rows: int) -> list[tuple[int, int]]:
    """(rows r, width tokens // r) for r = 1, 2, 4, ... up to `rows`, widths of at least one token."""
    if not isinstance(tokens, int) or tokens < 1 or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"PrefillSlices: tokens and rows must be positive ints, got {tokens!r} and {rows!r}")
    shapes, r = [], 1
    while r <= min(rows, tokens):
        shapes.append((r, tokens // r))
        r *= 2
    return shapes


class PrefillSlices:
    """Lanes of prompt states and the fixed-shape prefill step over them (graphs on CUDA by default)."""

    def __init__(self, model: torch.nn.Module, tokens: int, rows: int, empty: Any, *, graph: bool | None = None):
        params = _forward_params(model)
        if not _accepts(params, "attention_mask"):
            raise ValueError(f"PrefillSlices: {type(model).__name__} does not accept attention_mask, so a prompt "
                             "chunk cannot be padded to a slice's fixed width")
        self.model = model
        self.shapes = slice_shapes(tokens, rows)
        self.rows = self.shapes[-1][0]
        self._empty = empty  # a batch-1 state equal to what state=None means
        self._lanes = map_state(lambda t: t.new_zeros((self.rows, *t.shape[1:])), empty)
        self.device = state_leaves(empty)[0].device
        self._kwargs = {"logits_to_keep": 1} if _accepts(params, "logits_to_keep") else {}
        self._ids = {r: torch.zeros(r, w, dtype=torch.long, device=self.device) for r, w in self.shapes}
        self._mask = {r: torch.zeros(r, w, dtype=torch.long, device=self.device) for r, w in self.shapes}
        self.graph = self.device.type == "cuda" if graph is None else bool(graph)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._logits: dict[int, Tensor] = {}
        self.capture_errors: list[str] = []
        if self.graph:
            self._capture_all()

    def _run(self, r: int) -> Tensor:
        """The slice of r rows on the static buffers: forward from lanes[:r], new states copied into them."""
        lanes = map_state(lambda t: t[:r], self._lanes)
        with inputs_checked():  # the engine checked every prompt on arrival
            logits, new = logits_and_state(self.model(self._ids[r], state=lanes, attention_mask=self._mask[r],
                                                      **self._kwargs))
        for buf, t in zip(state_leaves(lanes), state_leaves(new)):
            buf.copy_(t)
        return logits[:, -1]

    def _capture_all(self) -> None:
        """One graph per shape, each with its own memory pool (so shapes may replay in any order). A shape
        whose capture fails runs eagerly (capture_errors says why); its output is then a fresh tensor each time."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for r, _ in self.shapes:  # lazy initialisation (Triton compilation, autotuning) outside capture
                self._run(r)
        torch.cuda.current_stream().wait_stream(side)
        for r, w in self.shapes:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph), torch.no_grad():
                    self._logits[r] = self._run(r)
                self._graphs[r] = graph
            except Exception as e:  # e.g. a kernel that reads a value on the host: eager for this shape
                self.capture_errors.append(f"({r}, {w}): {type(e).__name__}: {str(e)[:200]}")
        torch.cuda.synchronize()

    # ---- lanes ----------------------------------------------------------------------------------------

    def reset(self, lane: int) -> None:
        """Lane `lane` starts a new prompt: nothing seen."""
        for buf, t in zip(state_leaves(self._lanes), state_leaves(self._empty)):
            buf[lane].copy_(t[0])

    def move(self, src: int, dst: int) -> None:
        if src != dst:
            for buf in state_leaves(self._lanes):
                buf[dst].copy_(buf[src])

    def lane(self, j: int) -> Any:
        """The state of lane j as a batch-1 state of views (valid until the lane's next slice or reset)."""
        return map_state(lambda t: t[j:j + 1], self._lanes)

    # ---- one slice ------------------------------------------------------------------------------------

    def shape_for(self, remaining: list[int]) -> tuple[int, int]:
        """The shape that prefills the most prompt tokens of the lanes' prompts in order (remaining tokens of
        each; lane j is remaining[j]); ties go to fewer rows."""
        best = max(self.shapes, key=lambda s: (sum(min(n, s[1]) for n in remaining[:s[0]]), -s[0]))
        return best

    @torch.no_grad()
    def run(self, chunks: list[list[int]], shape: tuple[int, int] | None = None) -> Tensor:
        """Advance lanes 0..len(chunks)-1 by one chunk each (1..width tokens; shape: one of self.shapes, the
        smallest that fits by default) -> the last-position logits (len(chunks), V), on the device. On CUDA
        the logits are a graph's buffer: use them before the next slice."""
        k = len(chunks)
        if shape is None:
            shape = next((s for s in self.shapes if s[0] >= k and s[1] >= max(map(len, chunks), default=1)),
                         None)
        if shape not in self.shapes or k < 1 or k > shape[0] or any(not 1 <= len(c) <= shape[1] for c in chunks):
            raise ValueError(f"PrefillSlices.run: {k} chunks of {[len(c) for c in chunks]} tokens do not fit a "
                             f"slice shape of {self.shapes} (1..width tokens each, at most rows chunks)")
        r, w = shape
        ids = torch.zeros(r, w, dtype=torch.long)
        mask = torch.zeros(r, w, dtype=torch.long)
        for i, c in enumerate(chunks):  # left padding: every row's last position is real
            ids[i, w - len(c):] = torch.tensor(c)
            mask[i, w - len(c):] = 1
        self._ids[r].copy_(ids, non_blocking=True)
        self._mask[r].copy_(mask, non_blocking=True)
        if r in self._graphs:
            self._graphs[r].replay()
            logits = self._logits[r]
        else:
            logits = self._run(r)
        return logits[:k]

    def report(self) -> str:
        if not self.graph:
            return "eager (no CUDA)"
        return f"{len(self._graphs)}/{len(self.shapes)} slice shapes captured"

