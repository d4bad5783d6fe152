"""What the Triton kernel families of flashxlstm share (imported only where Triton runs).

- `interpreting()`: whether kernels run under TRITON_INTERPRET=1 (the CPU interpreter the tests use).
- `next_pow2(x, lo)`: the block size covering x, at least lo.
- `FirstCallTuner`: on CUDA, the first call for a shape key times a few launch layouts and keeps the fastest
  (never under the interpreter or while a CUDA graph is being captured, and not when the named environment
  switch is "0"); the choice is a pure function of the key afterwards.
- `shared_memory_limit(device)`: the bytes of shared memory one program may use on that device.
- `both(mask, cond)` (jit): `mask & cond` for a block mask and a scalar condition, written so that every
  Triton from 3.6 to 3.9 accepts it compiled and interpreted (the 3.9 interpreter splats a scalar bool into an
  int32 array, which `tl.load` then rejects as a mask).
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Hashable, Sequence

import torch
import triton
import triton.language as tl

# Shared memory per program under the interpreter: the H100/H200 opt-in limit, so that a launch the CPU
# tests accept is one an H100 or H200 accepts too.
INTERPRETER_SHARED_MEMORY = 232448


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(x)))


def shared_memory_limit(device: torch.device) -> int:
    """Bytes of shared memory one program may request on `device` (the opt-in maximum per block)."""
    if device.type != "cuda" or interpreting():
        return INTERPRETER_SHARED_MEMORY
    return _cuda_shared_memory(torch.cuda.current_device() if device.index is None else device.index)


@functools.lru_cache(maxsize=None)
def _cuda_shared_memory(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    for name in ("shared_memory_per_block_optin", "max_shared_memory_per_block_optin"):
        if getattr(props, name, 0):
            return int(getattr(props, name))
    return int(getattr(props, "shared_memory_per_block", 49152))


class FirstCallTuner:
    """Per shape key, the fastest of a few candidate launch layouts, timed on the first CUDA call.

    `choose(key, device, default, candidates, launch)` returns the remembered layout for `key`, or times
    `launch(layout)` for every candidate (a candidate that fails to compile or launch is skipped) and
    remembers the fastest. `baseline`, if given, is timed too and wins as `None` when it is fastest (the
    caller then takes its non-Triton path). Off CUDA, under the interpreter, during graph capture or with
    the environment variable `switch` set to "0" the default is returned and nothing is remembered.
    """

    def __init__(self, switch: str):
        self.switch = switch
        self.choices: dict[Hashable, object] = {}

    def choose(self, key: Hashable, device: torch.device, default, candidates: Sequence | Callable[[], Sequence],
               launch: Callable[[object], object], baseline: Callable[[], object] | None = None):
        """`candidates` may be a function returning them (evaluated only when timing)."""
        if key in self.choices:
            return self.choices[key]
        if (device.type != "cuda" or interpreting() or torch.cuda.is_current_stream_capturing()
                or os.environ.get(self.switch) == "0"):
            return default
        from triton.testing import do_bench

        best, best_t = default, float("inf")
        if baseline is not None:
            best, best_t = None, do_bench(baseline, warmup=5, rep=20)
        for layout in (candidates() if callable(candidates) else candidates):
            try:
                t = do_bench(lambda: launch(layout), warmup=5, rep=20)
            except Exception:  # a layout that does not compile or fit here is not a candidate
                continue
            if t < best_t:
                best, best_t = layout, t
        self.choices[key] = best
        return best


@triton.jit
def both(mask, cond):
    """mask & cond for a block mask and a scalar condition (see the module docstring)."""
    return mask & ((tl.full(mask.shape, 1, tl.int32) * cond) != 0)
