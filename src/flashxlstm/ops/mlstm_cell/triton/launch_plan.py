"""Launch settings of the Triton mLSTM kernels, chosen from the numbers alone (no Triton, no GPU needed).

    plan = chunk_parallel_plan(elem_bytes, DQK, DV, chunk, smem_limit, overrides=None)

`elem_bytes` is the size of one q/k/v element (2 for bf16/fp16, 4 for fp32), `chunk` the caller's
chunk_size, `smem_limit` the bytes of shared memory one program may use (the device's opt-in limit;
triton_support.shared_memory_limit, 232448 on an H100/H200 and under the interpreter). Each plan starts
from the measured defaults and steps down until every pass's shared-memory estimate fits: pipeline stages
first, then the chunk length L (a tile size only: results do not depend on it beyond rounding), then the
DV and DQK blocks. A shape that fits nowhere raises ValueError before anything is launched.

The estimate (`smem_bytes`) counts, per pass, the tiles its loop loads into shared memory for the tensor
cores (once per pipeline stage) plus the operands of the products after the loop, in the input dtype.
It is calibrated against Triton's own allocation for sm_90 (benchmarks/kernel_resources.py) and errs
high; should a compiler still ask for more, the launcher (function.py) shrinks the budget and re-plans.

Chunk-parallel defaults, measured on an H200 (benchmarks/results/bench_mlstm.md): the states pass (and the
backward state walk, keys *_s) 4 warps, 64 x 64 state blocks, 3 stages, at most 128 registers per
thread (4 programs per SM instead of 2); the output pass (and the backward dv pass, keys *_o) 128-wide DV
blocks at 8 warps, the output pass capped at 128 registers for 16-bit inputs (at DQK 128 it compiles to 130
without the cap, which halves the programs per SM, 2 -> 1, with no spills under it:
benchmarks/kernel_resources.py; not yet timed on a GPU); the backward dq/dk pass (keys *_b) 64 x 64 blocks at 4 warps and 3 stages. "desc":
the states and output passes load their tiles through tensor descriptors (TMA on Hopper) instead of
masked pointers, where the tensors' alignment allows; off by default (checked under the CPU interpreter and
compiled for sm_90, not yet run on a GPU).
"""
from __future__ import annotations

# pass -> which keys of the plan it launches with
PASSES = {"states": "s", "bwd_states": "s", "output": "o", "bwd_dv": "o", "bwd_dqk": "b"}
MIN_BLOCK = 16


def _pow2(x: int, lo: int = 16) -> int:
    p = lo
    while p < x:
        p *= 2
    return p


def smem_bytes(pass_name: str, elem: int, L: int, BK: int, BV: int, stages: int) -> int:
    """Shared memory estimate of one program of `pass_name` (see the module docstring)."""
    buffers = max(1, stages)
    if pass_name == "states":        # loop: k^T (BK x L), v (L x BV); the weighted v feeds the product
        loop, after = BK * L + L * BV, L * BV
    elif pass_name == "bwd_states":  # loop: q^T (BK x L), dh (L x BV); weighted q and dnum feed the product
        loop, after = BK * L + L * BV, BK * L + L * BV
    elif pass_name == "output":      # loop over DQK blocks: q, k^T, C; after: the gate tile s and v
        loop, after = 2 * L * BK + BK * BV, L * L + L * BV
    elif pass_name == "bwd_dv":      # loop over DQK blocks: k, q^T, G; after: A^T and dnum
        loop, after = 2 * L * BK + BK * BV, L * L + 2 * L * BV
    elif pass_name == "bwd_dqk":     # loop over DV blocks: dh, v, v^T, C^T, G^T; after: q, k, k^T and D*P
        loop, after = 3 * L * BV + 2 * BV * BK, 3 * L * BK + L * L
    else:
        raise ValueError(f"smem_bytes: unknown pass {pass_name!r}")
    return (buffers * loop + after) * elem


# The longest chunk of the chunk-parallel kernels per input size in bytes. 16-bit inputs stop at 64: on an H200
# with Triton 3.6, L = 128 gave wrong outputs for bf16 at DQK 64 / DV 128 and for fp16 at DQK 256 / DV 512
# (relative error of h 0.1-0.2 against float64; C and n right, so the output pass) while L = 32 and 64 and fp32
# at L = 128 were right (the 16-bit chunk check in benchmarks/bench_mlstm.py).
MAX_CHUNK = {2: 64, 4: 128}


def chunk_parallel_defaults(DQK: int, DV: int, chunk: int, elem: int = 2) -> dict:
    BK, BVp = _pow2(DQK), _pow2(DV)
    BV_o = min(128, BVp)
    return {"L": min(MAX_CHUNK.get(elem, 64), _pow2(chunk)),
            "BK_s": min(64, BK), "BV_s": min(64, BVp), "warps_s": 4, "stages_s": 3, "maxnreg_s": 128,
            "maxnreg_g": 128,
            "BK_o": min(64, BK), "BV_o": BV_o, "warps_o": 8 if BV_o >= 128 else 4, "stages_o": 3,
            "maxnreg_o": 128 if elem == 2 else None,
            "BK_b": min(64, BK), "BV_b": min(64, BVp), "warps_b": 4, "stages_b": 3, "desc": False}


def _fits(plan: dict, elem: int, limit: int, sfx: str) -> bool:
    names = [p for p, s in PASSES.items() if s == sfx]
    return all(smem_bytes(p, elem, plan["L"], plan["BK_" + sfx], plan["BV_" + sfx], plan["stages_" + sfx]) <= limit
               for p in names)


def _shrink_group(plan: dict, elem: int, limit: int, sfx: str) -> bool:
    """Lower stages, then BV, then BK of one key group until it fits; False if it cannot."""
    while not _fits(plan, elem, limit, sfx):
        if plan["stages_" + sfx] > 1:
            plan["stages_" + sfx] -= 1
        elif plan["BV_" + sfx] > MIN_BLOCK:
            plan["BV_" + sfx] //= 2
        elif plan["BK_" + sfx] > MIN_BLOCK:
            plan["BK_" + sfx] //= 2
        else:
            return False
    if sfx == "o":
        plan["warps_o"] = min(plan["warps_o"], 8 if plan["BV_o"] >= 128 else 4)
    return True


def chunk_parallel_plan(elem: int, DQK: int, DV: int, chunk: int, smem_limit: int,
                        overrides: dict | None = None) -> dict:
    """Settings of the chunk-parallel forward and backward passes (see the module docstring)."""
    base = chunk_parallel_defaults(DQK, DV, chunk, elem)
    base.update(overrides or {})
    L = base["L"]
    while L >= MIN_BLOCK:
        plan = dict(base, L=L)
        if all(_shrink_group(plan, elem, smem_limit, s) for s in ("s", "o", "b")):
            return plan
        L //= 2
    raise ValueError(f"mlstm(triton): no launch setting of the chunk-parallel kernels fits {smem_limit} bytes of "
                     f"shared memory for head dims DQK={DQK}, DV={DV} with {elem}-byte inputs; use smaller heads, "
                     f"bf16/fp16 inputs, or another backend")
