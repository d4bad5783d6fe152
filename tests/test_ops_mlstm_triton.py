"""The Triton mLSTM kernels under TRITON_INTERPRET=1 (CPU) against the float64 step-by-step reference.

TRITON_INTERPRET must be set before Triton is imported, so the checks run in one child process
(tests/_mlstm_triton_cases.py) and each case reports back as a JSON line; the tests here only look
the results up. Covers forward, gradients of every input and of the initial state (with a loss on
the returned state too), S = 1 and S not a multiple of the chunk, head dims that are not powers of
two, both input gates, torch.compile around the op, an empty initial state (m = -inf), masked steps (i = -inf, f = +inf), gates
in [-30, 30], and the decode step. Every sequence case runs the one chunk-parallel family: forward
(chunk_states.py, chunk_output.py; several DQK and DV blocks in `cp_blocks`), backward (chunk_backward.py;
`cpb_windows*` over several time windows, `cpb_rows_*` the gate epilogue kernel over several blocks), and
packed documents (`varlen*`: cu_seqlens with per-document initial states, documents shorter than a chunk,
time windows whose boundaries fall inside documents, extreme gates, fp16, several blocks); `desc_*` load
through tensor descriptors.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import require_triton, run_interpreter_cases

require_triton()

HERE = Path(__file__).parent
TOL_FP32 = 2e-4  # fp32 kernels vs float64; the stabilizer is held fixed in the backward (eps-level)


@pytest.fixture(scope="module")
def results() -> dict:
    return run_interpreter_cases(HERE / "_mlstm_triton_cases.py", timeout=1800)


CASES = ["s1", "odd_dims", "tail", "sigmoid_init", "empty_init", "masked_extreme", "varlen", "varlen_sigmoid",
         "fp16", "chunk_invariance", "cp_blocks", "cp_extreme_sigmoid", "cpb_init_odd", "cpb_blocks",
         "cpb_extreme_sigmoid", "cpb_s1", "cpb_fp16", "cpb_fp16_long", "cpb_rows_blocks", "cpb_rows_blocks_sigmoid",
         "cpb_windows", "cpb_windows_extreme", "varlen_odd", "varlen_blocks", "varlen_windows",
         "varlen_windows_extreme", "varlen_fp16", "desc_tail", "desc_varlen_windows", "varlen_rows_blocks", "plan_fp32_chunk256", "plan_dqk512_varlen",
         "gate90_tail", "gate90_tail_varlen"]


@pytest.mark.parametrize("case", CASES)
def test_sequence_kernels_match_reference(results, case):
    row = results[case]
    assert not row["nan"], f"{case}: NaN in outputs or gradients"
    errs = row["errors"]
    assert set(errs) >= {"h", "C", "n", "m"}, errs
    bad = {k: v for k, v in errs.items() if not v <= row["tol"]}
    assert not bad, f"{case}: relative errors above {row['tol']}: {bad}"


@pytest.mark.parametrize("case", ["gate_rows_exp", "gate_rows_sigmoid"])
def test_gate_epilogue_kernel_matches_torch_form(results, case):
    row = results[case]
    assert not row["nan"]
    bad = {k: v for k, v in row["errors"].items() if not v <= row["tol"]}
    assert not bad, f"{case}: {bad}"


def test_torch_compile_runs_around_the_op(results):
    row = results["compile"]
    assert not row["nan"] and all(v <= row["tol"] for v in row["errors"].values()), row["errors"]


@pytest.mark.parametrize("case", ["step_exp", "step_sigmoid", "step_out_buffers", "step_empty_state"])
def test_step_kernel_matches_reference(results, case):
    row = results[case]
    assert not row["nan"]
    bad = {k: v for k, v in row["errors"].items() if not v <= row["tol"]}
    assert not bad, f"{case}: {bad}"


def test_triton_backends_registered_under_the_interpreter(results):
    assert results["registry"]["sequence"] and results["registry"]["step"]


def test_step_rejects_overlapping_out_buffers(results):
    assert "overlap" in results["step_overlap_error"]["message"]
