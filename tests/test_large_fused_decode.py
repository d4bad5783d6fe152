"""The fused decode path of xLSTMLarge under TRITON_INTERPRET=1 (CPU) against the unfused torch path.

The child process (tests/_large_fused_cases.py) runs the cases, since TRITON_INTERPRET must be set before
Triton is imported: the glue kernels (residual add + RMSNorm, per-head LayerNorm x sigmoid(o), SiLU x up)
in fp32 and bf16 at odd sizes with strided inputs, the step kernel on views into one projection output with
the gate soft cap inside (gates beyond the cap), the layer step kernel (gate projections, soft cap, step,
per-head norm, sigmoid(o)) in its split and whole-head layouts at odd sizes with normal and empty (m = -inf)
states, the whole-model decode step (fused and single weights, with and without bias and soft cap, both
layouts, with the one-row matrix-vector kernel for every projection, into state_out buffers), that kernel
alone (odd sizes, bias, SiLU x z prologue) and generation on static buffers.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import require_triton, run_interpreter_cases

require_triton()

HERE = Path(__file__).parent
FP32 = 2e-6  # reductions in another order; everything else is the same float32 arithmetic
BF16 = 3e-2  # a last-bit flip at each of the (up to four) roundings to bf16, relative to the largest value


@pytest.fixture(scope="module")
def results() -> dict:
    return run_interpreter_cases(HERE / "_large_fused_cases.py", timeout=1800)


@pytest.mark.parametrize("dtype, tol", [("float32", FP32), ("bfloat16", BF16)])
def test_glue_kernels_match_the_torch_reference(results, dtype, tol):
    errs = results[f"glue_{dtype}"]["errs"]
    assert len(errs) == 7
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, bad


def test_step_kernel_reads_views_and_soft_caps_the_gates(results):
    r = results["step_views"]
    assert r["h"] < 1e-5 and r["state"] < 1e-5, r


@pytest.mark.parametrize("layout", ["split", "whole"])
def test_layer_step_kernel_matches_the_torch_layer(results, layout):
    errs = results[f"layer_step_{layout}"]["errs"]
    assert len(errs) == 8
    bad = {k: v for k, v in errs.items() if not v <= (0.0 if k.endswith("into out") else 1e-5)}
    assert not bad, bad


def test_one_row_matvec_matches_linear(results):
    errs = results["gemv"]["errs"]
    assert len(errs) == 8
    bad = {k: v for k, v in errs.items() if not v <= (1e-5 if k.startswith("float32") else BF16)}
    assert not bad, bad


@pytest.mark.parametrize("case", ["model_fused", "model_single_bias_nocap", "model_fused_gemv",
                                  "model_single_bias_gemv"])
def test_whole_decode_step_equals_the_unfused_step(results, case):
    r = results[case]
    assert r["fused_taken"] and r["into_buffers"], r
    assert r["logits"] < 1e-5 and r["state"] < 1e-5 and r["state_out_equal"] == 0.0, r


def test_static_buffer_generation_with_fused_step_equals_eager(results):
    assert results["static_generate"]["equal"]
