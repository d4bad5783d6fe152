"""Launch plans of the Triton mLSTM kernels (launch_plan.py): pure functions of dtype size, head dims, chunk
size and shared memory, checked on the CPU for every combination the library promises to run; and the
launcher's retry when a compiled kernel still asks for more shared memory than the device has."""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import require_triton
from flashxlstm.ops.mlstm_cell.triton.launch_plan import (PASSES, chunk_parallel_defaults, chunk_parallel_plan,
                                                           smem_bytes)

H200 = 232448          # opt-in shared memory per block on an H100 / H200
A100, SM86 = 166912, 101376
CHUNKS = [16, 32, 64, 128, 256]
HEADS = [(16, 16), (24, 40), (64, 128), (96, 192), (128, 128), (256, 512), (384, 384), (512, 512), (512, 64)]


def _estimates(plan, elem):
    return {p: smem_bytes(p, elem, plan["L"], plan["BK_" + s], plan["BV_" + s], plan["stages_" + s])
            for p, s in PASSES.items()}


@pytest.mark.parametrize("limit", [H200, A100, SM86])
def test_every_chunk_dtype_and_head_dim_gets_a_plan_that_fits(limit):
    for chunk, elem, (DQK, DV) in itertools.product(CHUNKS, (2, 4), HEADS):
        plan = chunk_parallel_plan(elem, DQK, DV, chunk, limit)
        est = _estimates(plan, elem)
        assert max(est.values()) <= limit, (chunk, elem, DQK, DV, plan, est)
        assert 16 <= plan["L"] <= min(128 if elem == 4 else 64, max(16, chunk)), plan
        for key in ("BK_s", "BV_s", "BK_o", "BV_o", "BK_b", "BV_b", "L"):
            assert plan[key] >= 16 and plan[key] & (plan[key] - 1) == 0, (key, plan)
        assert all(plan["stages_" + s] >= 1 for s in "sob")


def test_bf16_defaults_kept_where_they_fit():
    """The measured bf16 defaults at the library's chunk size stay as they are on an H200 (no slowdown)."""
    for DQK, DV in [(256, 512), (128, 256), (128, 128), (64, 128)]:
        assert chunk_parallel_plan(2, DQK, DV, 64, H200) == chunk_parallel_defaults(DQK, DV, 64)


def test_16_bit_inputs_never_take_128_step_chunks():
    """L = 128 gave wrong h for 16-bit inputs on the H200 (launch_plan.MAX_CHUNK); fp32 keeps it."""
    for chunk in (128, 256):
        assert chunk_parallel_plan(2, 64, 128, chunk, H200)["L"] == 64
        assert chunk_parallel_plan(2, 256, 512, chunk, H200)["L"] == 64
        assert chunk_parallel_plan(4, 256, 512, chunk, H200)["L"] == 128


def test_fp32_chunk_128_steps_down_from_the_crashing_setting():
    """H200, fp32, chunk 128, DQK 64, DV 128: the defaults asked for 327680 bytes in the backward (issue 11)."""
    defaults = chunk_parallel_defaults(64, 128, 128, elem=4)
    assert defaults["L"] == 128 and max(_estimates(defaults, 4).values()) >= 327680
    plan = chunk_parallel_plan(4, 64, 128, 128, H200)
    assert plan != defaults and max(_estimates(plan, 4).values()) <= H200


def test_what_fits_nowhere_is_a_value_error():
    with pytest.raises(ValueError, match="shared memory"):
        chunk_parallel_plan(4, 64, 64, 64, 4096)


def test_out_of_resources_shrinks_the_budget_and_retries():
    """A compiled kernel asking for more than the estimate: the launcher re-plans with a smaller budget (and
    remembers it); when nothing fits, a ValueError, never Triton's OutOfResources."""
    require_triton()
    from triton.runtime.errors import OutOfResources

    from flashxlstm.ops.mlstm_cell.triton import function as tfn

    q = torch.empty(1, 1, 4, 64, dtype=torch.float32)
    seen = []

    def run(plan):
        seen.append(plan)
        if len(seen) == 1:
            raise OutOfResources(327680, H200, "shared memory")
        return plan["L"]

    tfn._BUDGETS.clear()
    assert tfn._planned(q, 128, 128, (), run) == seen[-1]["L"]
    assert len(seen) == 2 and seen[1] != seen[0]
    assert max(_estimates(seen[1], 4).values()) <= H200 - (327680 - H200)
    seen.clear()
    tfn._planned(q, 128, 128, (), lambda plan: seen.append(plan))  # the smaller budget is remembered
    assert len(seen) == 1 and seen[0] != chunk_parallel_plan(4, 64, 128, 128, H200)

    def never(plan):
        raise OutOfResources(10**7, H200, "shared memory")

    with pytest.raises(ValueError, match="shared memory"):
        tfn._planned(q, 64, 64, (), never)
    tfn._BUDGETS.clear()


# Triton 3.6's shared-memory allocation for sm_90 (metadata.shared of kernels compiled as a launch compiles
# them; DQK 64, DV 128, 3 stages, the default blocks): the estimate must not be below any of them.
MEASURED_SM90 = [  # (pass, elem, L, BK, BV, bytes)
    ("states", 4, 128, 64, 64, 198656), ("output", 4, 128, 64, 128, 131072), ("bwd_states", 4, 128, 64, 64, 199704),
    ("bwd_dv", 4, 128, 64, 128, 131072), ("bwd_dqk", 4, 128, 64, 64, 327680), ("states", 4, 64, 64, 64, 99328),
    ("output", 4, 64, 64, 128, 65536), ("bwd_states", 4, 64, 64, 64, 99864), ("bwd_dv", 4, 64, 64, 128, 65536),
    ("bwd_dqk", 4, 64, 64, 64, 196608), ("states", 2, 128, 64, 64, 83968), ("output", 2, 128, 64, 128, 49152),
    ("bwd_states", 2, 128, 64, 64, 85528), ("bwd_dv", 2, 128, 64, 128, 49152),
]


@pytest.mark.parametrize("row", MEASURED_SM90, ids=lambda r: f"{r[0]}-{r[1]}B-L{r[2]}")
def test_estimate_bounds_the_compilers_allocation(row):
    name, elem, L, BK, BV, measured = row
    assert smem_bytes(name, elem, L, BK, BV, 3) >= measured
