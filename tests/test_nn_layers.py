"""Layers of the NeurIPS family: conv, headwise linear, norms, mLSTM and sLSTM layers (state carrying, errors)."""
import pytest
import torch
import torch.nn.functional as F

from flashxlstm.nn import (CausalConv1d, HeadwiseLinear, MultiHeadNorm, OffsetLayerNorm, detach_state, mLSTMLayer,
                           sLSTMLayer)
from flashxlstm.nn.state import map_state


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def randomize(module, gen, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return module


def run_pieces(layer, x, cuts):
    """Feed x in pieces split at `cuts`, carrying the state; return the joined output and the final state."""
    ys, state, a = [], None, 0
    for b in list(cuts) + [x.shape[1]]:
        y, state = layer(x[:, a:b], state)
        ys.append(y)
        a = b
    return torch.cat(ys, dim=1), state


# ------------------------------------------------------------------------------------------------ conv
@pytest.mark.parametrize("K", [1, 2, 4, 5])
def test_conv_matches_torch_conv1d(gen, K):
    conv = randomize(CausalConv1d(6, K).double(), gen)
    x = torch.randn(2, 9, 6, generator=gen, dtype=torch.float64)
    ref = F.conv1d(x.transpose(1, 2), conv.weight[:, None, :], conv.bias, padding=K - 1, groups=6)[..., :9]
    y, state = conv(x)
    assert rel(y, ref.transpose(1, 2)) < 1e-14
    assert torch.equal(state, x[:, 9 - (K - 1):]) if K > 1 else state.shape == (2, 0, 6)


@pytest.mark.parametrize("cuts", [[1], [2], [1, 2, 3], [3, 4], [8]])
def test_conv_state_splits(gen, cuts):
    conv = randomize(CausalConv1d(5, 4).double(), gen)
    x = torch.randn(2, 9, 5, generator=gen, dtype=torch.float64)
    full, s_full = conv(x)
    pieces, s_pieces = run_pieces(conv, x, cuts)
    assert torch.allclose(pieces, full, rtol=0, atol=1e-14) and torch.equal(s_pieces, s_full)


def test_conv_kernel_zero_is_identity(gen):
    x = torch.randn(2, 3, 4, generator=gen)
    y, state = CausalConv1d(4, 0)(x)
    assert y is x and state is None


# ------------------------------------------------------------------------------------------------ headwise, norms
def test_headwise_linear_is_block_diagonal(gen):
    lin = HeadwiseLinear(12, 3, bias=True).double()
    randomize(lin, gen)
    x = torch.randn(2, 5, 12, generator=gen, dtype=torch.float64)
    dense = torch.block_diag(*lin.weight)  # (12, 12): out = dense @ x
    assert rel(lin(x), x @ dense.T + lin.bias) < 1e-14


def test_norms_use_one_plus_weight(gen):
    ln = randomize(OffsetLayerNorm(8), gen)
    x = torch.randn(3, 8, generator=gen) * 3 + 1
    assert rel(ln(x), F.layer_norm(x, (8,), 1 + ln.weight, None, 1e-5)) < 1e-6
    mh = randomize(MultiHeadNorm(3, 4), gen)
    x = torch.randn(2, 5, 3, 4, generator=gen) * 2
    ref = F.group_norm(x.reshape(10, 12), 3, 1 + mh.weight, None, 1e-5).view(2, 5, 3, 4)  # the official form
    assert rel(mh(x), ref) < 1e-6


# ------------------------------------------------------------------------------------------------ mLSTM / sLSTM layers
def mlstm_layer(K=4, **kw):
    return mLSTMLayer(24, num_heads=2, proj_factor=2.0, conv1d_kernel_size=K, qkv_proj_blocksize=4,
                      round_proj_up_to_multiple_of=8, chunk_size=4, **kw)


def slstm_layer(K=4, **kw):
    return sLSTMLayer(12, num_heads=3, conv1d_kernel_size=K, block_idx=1, num_blocks=3, **kw)


LAYERS = {"mlstm": mlstm_layer, "slstm": slstm_layer}
CUTS = [[1], [1, 2, 3], [2, 9], [5], [3, 4, 5, 6, 7, 8, 9, 10]]  # length-1 pieces, cuts inside the conv window


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("K", [4, 0])
@pytest.mark.parametrize("cuts", CUTS)
def test_layer_state_splits_float64(gen, kind, K, cuts):
    layer = randomize(LAYERS[kind](K).double(), gen)
    x = torch.randn(2, 11, layer.dim, generator=gen, dtype=torch.float64)
    full, s_full = layer(x)
    pieces, s_pieces = run_pieces(layer, x, cuts)
    assert rel(pieces, full) < 1e-12
    for a, b in zip(s_pieces, s_full):
        assert (a is None and b is None) or rel(a, b) < 1e-11


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_state_splits_float32(gen, kind):
    layer = randomize(LAYERS[kind](), gen)
    x = torch.randn(2, 13, layer.dim, generator=gen)
    full, s_full = layer(x)
    pieces, s_pieces = run_pieces(layer, x, [1, 3, 8])
    assert rel(pieces, full) < 1e-5
    for a, b in zip(s_pieces, s_full):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_gradients_flow_through_carried_state(gen, kind):
    layer = randomize(LAYERS[kind]().double(), gen)
    x = torch.randn(2, 13, layer.dim, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 13, layer.dim, generator=gen, dtype=torch.float64)
    full, _ = layer(x)
    g_full = torch.autograd.grad((full * w).sum(), [x, *layer.parameters()])
    pieces, _ = run_pieces(layer, x, [1, 3, 8])
    g_pieces = torch.autograd.grad((pieces * w).sum(), [x, *layer.parameters()])
    for a, b in zip(g_pieces, g_full):
        assert rel(a, b) < 1e-9


def test_mlstm_layer_starts_empty_and_backends_agree(gen):
    layer = randomize(mlstm_layer().double(), gen)
    x = torch.randn(2, 9, layer.dim, generator=gen, dtype=torch.float64)
    y, state = layer(x)
    init = layer.initial_state(2, dtype=torch.float64)
    assert torch.isinf(init[3]).all() and (init[3] < 0).all()
    assert rel(layer(x, init)[0], y) == 0.0
    layer.backend = "recurrent"
    assert rel(layer(x)[0], y) < 1e-12


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_does_not_modify_state_and_detaches(gen, kind):
    layer = randomize(LAYERS[kind](), gen)
    x = torch.randn(1, 6, layer.dim, generator=gen, requires_grad=True)
    _, state = layer(x[:, :3])
    kept = map_state(torch.Tensor.clone, state)
    y, _ = layer(x[:, 3:], state)
    for a, b in zip(state, kept):
        assert torch.equal(a, b)
    y2, _ = layer(x[:, 3:].detach(), detach_state(state))
    y2.sum().backward()
    assert x.grad is None  # the graph was cut at the state


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_bad_input(kind):
    layer = LAYERS[kind]()
    with pytest.raises(ValueError, match=r"\(B, S, "):
        layer(torch.randn(2, 5, layer.dim + 1))
    with pytest.raises(TypeError, match="floating point"):
        layer(torch.ones(2, 5, layer.dim, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 1"):
        layer(torch.randn(2, 0, layer.dim))
    _, state = layer(torch.randn(2, 5, layer.dim))
    with pytest.raises(ValueError, match="state"):
        layer(torch.randn(3, 5, layer.dim), state)  # batch size differs
    with pytest.raises(ValueError, match="state must be a tuple"):
        layer(torch.randn(2, 5, layer.dim), state[:-1])


def test_layer_config_errors():
    with pytest.raises(ValueError, match="num_heads"):
        sLSTMLayer(10, num_heads=4)
    with pytest.raises(ValueError, match="num_heads"):
        mLSTMLayer(24, num_heads=5, round_proj_up_to_multiple_of=8)
    with pytest.raises(ValueError, match="bias_init"):
        sLSTMLayer(8, num_heads=2, bias_init="nope")
