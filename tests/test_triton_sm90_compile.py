"""The mLSTM and sLSTM Triton kernels compile for sm_90 under the installed Triton, without a GPU (tests/_sm90_compile_cases.py
says why the interpreter tests alone do not show it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
HERE = Path(__file__).parent
SCRIPT = HERE / "_sm90_compile_cases.py"


def _run(mode: str, path: Path, interpret: bool) -> str:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, str(SCRIPT), mode, str(path)], env=env, cwd=HERE, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_every_recorded_launch_setting_compiles_for_sm90(tmp_path):
    settings = tmp_path / "settings.json"
    _run("record", settings, interpret=True)
    recorded = json.loads(settings.read_text())
    kernels = {s["name"] for s in recorded}
    assert {"mlstm_chunk_states_kernel", "mlstm_chunk_output_kernel", "mlstm_chunk_bwd_dqk_kernel",
            "mlstm_gate_rows_kernel", "mlstm_step_kernel", "slstm_fw_kernel", "slstm_bw_kernel"} <= kernels
    slstm = [s["const"] for s in recorded if s["name"].startswith("slstm_")]
    assert any(c["DOCS"] for c in slstm) and any(not c["DOCS"] for c in slstm)
    assert any(c["USE_BARRIER"] for c in slstm) and any(c["REG"] for c in slstm)
    rows = [json.loads(line) for line in _run("compile", settings, interpret=False).splitlines()
            if line.startswith("{")]
    assert len(rows) == len(recorded)
    failures = [f"{r['kernel']} {r['const']}: {r['error']}" for r in rows if r["error"]]
    assert not failures, "\n".join(failures)
