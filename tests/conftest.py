"""Shared test settings: deterministic float32 math, fresh random inputs per test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test's name: fresh inputs for every test, reproducible on rerun."""
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def require_triton() -> None:
    """Triton is a test dependency on Linux x86_64: there a missing triton fails; elsewhere the test skips."""
    import platform

    if platform.system() == "Linux" and platform.machine() == "x86_64":
        import triton  # noqa: F401  (ImportError here is a broken test install, not a reason to skip)
    else:
        pytest.importorskip("triton", reason="triton ships wheels for Linux x86_64 only")


def run_interpreter_cases(script: Path, timeout: float, args: list[str] = ()) -> dict[str, dict]:
    """Run a case script (with command-line `args`) in a child process with TRITON_INTERPRET=1 (it must be set
    before the kernels are defined, and other tests must not see it) and return its JSON result lines
    ({"case": ...}) by case name."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"interpreter cases failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    rows = (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))
    return {row["case"]: row for row in rows}
