"""The sLSTM op: official parity, state carrying, the decode step, and clear errors."""
import pytest
import torch

from flashxlstm.ops import slstm, slstm_reference, slstm_step
CPU_BACKENDS = ["recurrent", "fused"]  # "triton" runs here only under the interpreter (test_ops_slstm_triton.py)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def make(gen, B, S, NH, DH, scale=2.0, dtype=torch.float32):
    x = torch.randn(B, S, 4, NH, DH, generator=gen, dtype=torch.float64) * scale
    R = torch.randn(4, NH, DH, DH, generator=gen, dtype=torch.float64) / DH**0.5
    b = torch.randn(4, NH, DH, generator=gen, dtype=torch.float64)
    return x.to(dtype), R.to(dtype), b.to(dtype)


def rand_state(gen, B, NH, DH, dtype=torch.float32):
    r = lambda: torch.randn(B, NH, DH, generator=gen, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (r(), torch.rand(B, NH, DH, generator=gen, dtype=torch.float64) + 0.5, r(), r().tanh()))


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_split_sequence_equals_one_pass(gen, backend, forget_gate):
    x, R, b = make(gen, 2, 9, 2, 5)
    h, st = slstm(x, R, b, backend=backend, forget_gate=forget_gate)
    h1, st1 = slstm(x[:, :4], R, b, backend=backend, forget_gate=forget_gate)
    h2, st2 = slstm(x[:, 4:], R, b, state=st1, backend=backend, forget_gate=forget_gate)
    assert rel(torch.cat([h1, h2], 1), h) < 1e-6
    for a, c in zip(st2, st):
        assert rel(a, c) < 1e-6


def test_step_equals_sequence(gen):
    x, R, b = make(gen, 3, 5, 2, 4)
    state = rand_state(gen, 3, 2, 4)
    h, st = slstm_reference(x, R, b, state=state)
    hs, s = [], tuple(t.double() for t in state)
    for t in range(5):
        ht, s = slstm_step(x[:, t].double(), R.double(), b.double(), state=s)
        hs.append(ht)
    assert rel(torch.stack(hs, 1), h) < 1e-14
    for a, c in zip(s, st):
        assert rel(a, c) < 1e-14


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dtypes_follow_the_contract(gen, backend):
    x, R, b = make(gen, 2, 3, 1, 4, dtype=torch.bfloat16)
    h, st = slstm(x, R, b, backend=backend)
    assert h.dtype == torch.bfloat16 and h.shape == (2, 3, 1, 4)
    assert all(s.dtype == torch.float32 and s.shape == (2, 1, 4) for s in st)
    h64, st64 = slstm_reference(x, R, b)
    assert h64.dtype == torch.float64 and all(s.dtype == torch.float64 for s in st64)


def test_inputs_are_not_modified(gen):
    x, R, b = make(gen, 2, 4, 2, 3)
    state = rand_state(gen, 2, 2, 3)
    copies = [t.clone() for t in (x, R, b, *state)]
    for backend in CPU_BACKENDS:
        slstm(x, R, b, state=state, backend=backend)
    assert all(torch.equal(a, c) for a, c in zip((x, R, b, *state), copies))


def _official_cell(NH, DH, seed):
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    torch.manual_seed(seed)
    cfg = sLSTMCellConfig(hidden_size=NH * DH, num_heads=NH, backend="vanilla", dtype="float32",
                          recurrent_weight_init="standard", bias_init="standard")
    cell = sLSTMCell(cfg)
    # official external layouts: recurrent_kernel (NH, DH_in, 4, DH_out), bias (NH, 4, DH)
    R = cell.recurrent_kernel[...].permute(2, 0, 3, 1).contiguous()
    b = cell.bias[...].permute(1, 0, 2).contiguous()
    return cell, R, b


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("NH,DH", [(2, 5), (1, 8), (4, 3)])
def test_matches_official_vanilla_cell(gen, backend, NH, DH):
    cell, R, b = _official_cell(NH, DH, seed=NH * 100 + DH)
    B, S = 3, 6
    x = torch.randn(B, S, 4 * NH * DH, generator=gen) * 4
    with torch.no_grad():
        y, st = cell(x)  # y (B, NH, S, DH); state (4, B, NH*DH) in the order (y, c, n, m)
        y2, st2 = cell(x.flip(1), st)
    h, (c, n, m, hs) = slstm(x.view(B, S, 4, NH, DH), R, b, backend=backend)
    assert rel(h, y.permute(0, 2, 1, 3)) < 1e-6
    for ours, theirs in zip((hs, c, n, m), st):
        assert rel(ours.reshape(B, -1), theirs) < 1e-6
    h2, _ = slstm(x.flip(1).view(B, S, 4, NH, DH), R, b, state=(c, n, m, hs), backend=backend)
    assert rel(h2, y2.permute(0, 2, 1, 3)) < 1e-6


def test_clear_errors(gen):
    x, R, b = make(gen, 2, 3, 2, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        slstm(x[:, :, :3], R, b)
    with pytest.raises(ValueError, match="R must have shape"):
        slstm(x, R[:, :, :3], b)
    with pytest.raises(ValueError, match="b must have shape"):
        slstm(x, R, b[:3])
    with pytest.raises(TypeError, match="floating-point"):
        slstm(x.long(), R, b)
    with pytest.raises(ValueError, match="S must be at least 1"):
        slstm(x[:, :0], R, b)
    with pytest.raises(ValueError, match="forget_gate"):
        slstm(x, R, b, forget_gate="tanh")
    with pytest.raises(ValueError, match="unknown backend"):
        slstm(x, R, b, backend="nope")
    with pytest.raises(TypeError, match="state must be a tuple"):
        slstm(x, R, b, state=torch.zeros(4, 2, 2, 4))
    bad = list(rand_state(gen, 2, 2, 4))
    bad[2] = bad[2][:, :1]
    with pytest.raises(ValueError, match="state m must have shape"):
        slstm(x, R, b, state=tuple(bad))
    with pytest.raises(ValueError, match="slstm_step: x must have shape"):
        slstm_step(x, R, b)


def test_auto_uses_the_cpu_form_on_cpu_and_triton_needs_cuda(gen):
    x, R, b = make(gen, 1, 3, 1, 4)
    h_auto, _ = slstm(x, R, b)
    h_cpu, _ = slstm(x, R, b, backend="fused")
    assert torch.equal(h_auto, h_cpu)
    import os

    from flashxlstm.ops.slstm_cell import BACKENDS

    if "triton" in BACKENDS and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="needs CUDA"):
            slstm(x, R, b, backend="triton")
