"""The fused head norm x output gate of training (ops/fused/head_norm_gate_seq.py) under TRITON_INTERPRET=1.

The child process (tests/_norm_gate_seq_cases.py) runs the Triton op and the unfused expression against the
float64 unfused expression, forward and backward, at odd sizes with strided inputs and extreme values, alone
and with the out-projection (whose input the backward recomputes); then a tiny xLSTMLarge trained through the
fused op against the modules, eager and compiled with fullgraph=True, and the bytes autograd keeps per step.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import require_triton, run_interpreter_cases

require_triton()

HERE = Path(__file__).parent
FP32 = 2e-6   # float32 throughout: reductions in another order
BF16 = 2e-2   # bf16 inputs or output: a few roundings to 8 bits, relative to the largest value


@pytest.fixture(scope="module")
def results() -> dict:
    return run_interpreter_cases(HERE / "_norm_gate_seq_cases.py", timeout=900)


def op_cases(results):
    cases = {k: v for k, v in results.items() if k.startswith(("norm_", "linear_"))}
    assert len(cases) == 8, sorted(results)
    return cases


def test_fused_op_matches_the_float64_expression(results):
    for name, r in op_cases(results).items():
        low = r["dtype"] == "bfloat16" or r["y_dtype"] == "torch.bfloat16"
        assert r["y_dtype"] == r["want_y_dtype"], name
        assert r["finite"], name
        expected = {"y", "dh", "do", "dw"} | ({"db"} if "bias1" in name else set())
        if name.startswith("linear_"):
            expected |= {"dproj_w"} | ({"dproj_b"} if "bias1" in name else set())
        assert set(r["fused"]) == expected, name
        bad = {k: v for k, v in r["fused"].items() if not v <= (BF16 if low else FP32)}
        assert not bad, (name, bad)


def test_fused_op_is_as_accurate_as_the_unfused_expression(results):
    """In the same input dtype, the fused op's error is the unfused expression's error, give or take a rounding."""
    for name, r in op_cases(results).items():
        slack = 1e-2 if (r["dtype"] == "bfloat16" or r["y_dtype"] == "torch.bfloat16") else 1e-6
        worse = {k: (v, r["unfused"][k]) for k, v in r["fused"].items() if not v <= 3 * r["unfused"][k] + slack}
        assert not worse, (name, worse)


@pytest.mark.parametrize("case", ["model_eager", "model_compiled"])
def test_model_trains_the_same_through_the_fused_op(results, case):
    r = results[case]
    assert r["names"]
    assert r["loss"] <= 1e-6 and r["grads"] <= 1e-5, r


def test_fused_op_keeps_fewer_bytes_for_the_backward(results):
    r = results["saved_bytes_bf16_autocast"]
    assert r["fused"] < r["torch_path"], r


def test_one_token_rows_with_strided_o_and_gradient(results):
    errs = results["layout_s1_strided"]["errs"]
    assert set(errs) == {"y", "dh", "do", "dw", "db"}
    assert max(errs.values()) < FP32, errs


def test_zero_tokens_give_zero_parameter_gradients(results):
    r = results["empty_tokens"]
    assert r["dw_max"] == 0.0 and r["db_max"] == 0.0, r
