"""Shared test settings: deterministic float32 math, fresh random inputs per test."""
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
