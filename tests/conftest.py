"""Shared test settings: deterministic float32 math, fresh random inputs per test."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test's name: fresh inputs for every test, reproducible on rerun."""
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
