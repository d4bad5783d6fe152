"""torch.compile(fullgraph=True) with backend="triton": the Triton entry points are torch custom ops.

The mLSTM sequence op (forward and backward), the mLSTM decode step and the sLSTM op (forward and backward)
are registered as custom ops with fake functions (ops/mlstm_cell/triton/function.py, step.py,
ops/slstm_cell/triton.py), so a compiled model records one call per op: no graph break, no host sync in the
traced path (cu_seqlens included: the offsets are checked inside the op). Under TRITON_INTERPRET=1 at tiny
shapes, in a child process (tests/_compile_triton_cases.py): compiled == eager in outputs, states and every
gradient for the op alone (packed documents with initial states, fp16, the step, the sLSTM) and for both
model families with every Triton backend (NeurIPS xLSTM[1:1] and a 7B-family block from a carried state, the
7B family and NeurIPS xLSTM[1:1] with packed documents). fullgraph=True turns any graph break into a failure. Compiler backend as in
test_compile.py (aot_eager unless FLASHXLSTM_COMPILE_BACKEND names another).
"""
from pathlib import Path

import pytest

from conftest import require_triton, run_interpreter_cases

require_triton()

CASES = ["mlstm_cu_seqlens", "mlstm_fp16", "mlstm_step", "slstm", "neurips_triton", "large_triton",
         "large_cu_seqlens", "neurips_cu_seqlens"]


@pytest.fixture(scope="module")
def results() -> dict:
    return run_interpreter_cases(Path(__file__).parent / "_compile_triton_cases.py", timeout=900)


@pytest.mark.parametrize("case", CASES)
def test_compiled_triton_equals_eager_without_graph_break(results, case):
    row = results[case]
    assert "error" not in row, row.get("error")
    assert row["nonfinite"] == 0, row
    assert row["errors"] and all(e < 1e-5 for e in row["errors"].values()), row["errors"]
