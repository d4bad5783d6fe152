"""Exact parity with the official `xlstm` 2.0.6 package: from_official / to_official on the NeurIPS family.

The official package is a test dependency: if it is missing these tests fail at import, they never skip.
The official sLSTM "cuda" backend cannot be built on a CPU, so its checkpoint layout is produced here from a
"vanilla" model with the official cells' own layout transforms (sLSTMCell_cuda with skip_backend_init=True).
"""
import copy

import pytest
import torch
import xlstm
from xlstm.blocks.slstm.cell import sLSTMCell_cuda

from flashxlstm import from_official, to_official, xLSTMLM
from flashxlstm.models.xlstm_lm import xLSTMBlockStack

V = 41


def rel(a, b):
    """Relative error in norm: the 1e-5 parity criterion (fp32 rounding of two correct orders of operations)."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def rel_max(a, b):
    """Worst element relative to the largest: looser, since single logits carry the amplified rounding."""
    return ((a - b).abs().max() / b.abs().max()).item()


def official_config(*, D=32, blocks=2, slstm_at=(1,), m_heads=4, s_heads=4, m_conv=4, s_conv=4, qkv_bs=4,
                    tie=False, bias=False, ffn=True, act="gelu", backend="vanilla", lm=True, post_norm=True):
    mlstm = None if len(slstm_at) == blocks else xlstm.mLSTMBlockConfig(mlstm=xlstm.mLSTMLayerConfig(
        conv1d_kernel_size=m_conv, qkv_proj_blocksize=qkv_bs, num_heads=m_heads))
    slstm = None if not slstm_at else xlstm.sLSTMBlockConfig(
        slstm=xlstm.sLSTMLayerConfig(backend=backend, num_heads=s_heads, conv1d_kernel_size=s_conv),
        feedforward=xlstm.FeedForwardConfig(proj_factor=1.3, act_fn=act) if ffn else None)
    common = dict(mlstm_block=mlstm, slstm_block=slstm, context_length=128, num_blocks=blocks, embedding_dim=D,
                  slstm_at=list(slstm_at), bias=bias, add_post_blocks_norm=post_norm)
    if not lm:
        return xlstm.xLSTMBlockStackConfig(**common)
    return xlstm.xLSTMLMModelConfig(**common, vocab_size=V, tie_weights=tie)


def official_model(gen, cfg, scale=0.2):
    """An official model with its own init plus noise, so that zero-initialised weights matter too."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))  # the official init draws from the global RNG
    model = xlstm.xLSTMLMModel(cfg) if hasattr(cfg, "vocab_size") else xlstm.xLSTMBlockStack(cfg)
    model.reset_parameters()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


CONFIGS = {
    "mlstm-only": dict(slstm_at=(), m_heads=4),
    "slstm-only-no-conv": dict(slstm_at=(0, 1), s_heads=2, s_conv=0),
    "mixed": dict(blocks=3, slstm_at=(1,), m_heads=2, s_heads=4),
    "mixed-tied-bias": dict(blocks=3, slstm_at=(0, 2), tie=True, bias=True, m_heads=8, s_heads=1),
    "mixed-no-ffn-swish-qkv8": dict(D=48, slstm_at=(0,), ffn=False, m_heads=2, qkv_bs=8, s_heads=3, act="swish"),
    "mlstm-conv2-no-post-norm": dict(slstm_at=(), m_heads=1, m_conv=2, post_norm=False),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_from_official_module_logits(gen, name):
    off = official_model(gen, official_config(**CONFIGS[name]))
    ours = from_official(off).eval()
    assert isinstance(ours, xLSTMLM)
    ids = torch.randint(0, V, (2, 50), generator=gen)
    with torch.no_grad():
        want = off(ids)
        got, _ = ours(ids)
    assert rel(got, want) < 1e-5 and rel_max(got, want) < 5e-5


@pytest.mark.parametrize("name", ["mixed", "mixed-tied-bias"])
def test_from_official_float64_is_exact(gen, name):
    """In float64 the two implementations agree to rounding: the same math, not an approximation."""
    off = official_model(gen, official_config(**CONFIGS[name])).double()
    ours = from_official(off)
    assert next(ours.parameters()).dtype == torch.float64
    ids = torch.randint(0, V, (2, 100), generator=gen)  # longer than one chunk of our mLSTM
    with torch.no_grad():
        assert rel(ours(ids).logits, off(ids)) < 1e-12


def test_from_official_gradients_match(gen):
    off = official_model(gen, official_config(blocks=3, slstm_at=(1,), m_heads=2, s_heads=2))
    ours = from_official(off)
    ids = torch.randint(0, V, (2, 30), generator=gen)
    off(ids).logsumexp(-1).sum().backward()
    ours(ids).logits.logsumexp(-1).sum().backward()
    grads = copy.deepcopy(off)  # an official module holding the official gradients as weights, then converted
    with torch.no_grad():
        for g, p in zip(grads.parameters(), off.parameters()):
            g.copy_(p.grad)
    want = dict(from_official(grads).named_parameters())
    for n, p in ours.named_parameters():
        scale = want[n].abs().max().clamp_min(1e-6)
        assert ((p.grad - want[n]).abs().max() / scale).item() < 1e-4, n


def test_from_official_stack_and_state_dict(gen):
    cfg = official_config(blocks=3, slstm_at=(1,), lm=False, m_heads=2, s_heads=2)
    off = official_model(gen, cfg)
    x = torch.randn(2, 20, 32, generator=gen)
    with torch.no_grad():
        want = off(x)
        for ours in (from_official(off), from_official(off.state_dict(), cfg)):
            assert isinstance(ours, xLSTMBlockStack)
            assert rel(ours(x)[0], want) < 1e-5
        y1, s = ours(x[:, :7])
        y2, _ = ours(x[:, 7:], s)
    assert rel(torch.cat([y1, y2], 1), want) < 1e-5


def to_cuda_layout(sd, cfg):
    """A vanilla-layout state dict rewritten as the official cuda backend stores it (its own transforms)."""
    s = cfg.slstm_block.slstm
    cell_cfg = copy.deepcopy(s)
    cell_cfg.hidden_size, cell_cfg.backend, cell_cfg._block_idx, cell_cfg._num_blocks = cfg.embedding_dim, "cuda", 0, 1
    vanilla = xlstm.blocks.slstm.cell.sLSTMCell_vanilla(copy.deepcopy(cell_cfg))
    cuda = sLSTMCell_cuda(cell_cfg, skip_backend_init=True)
    out = dict(sd)
    for k, v in sd.items():
        if k.endswith("_recurrent_kernel_"):
            out[k] = cuda._recurrent_kernel_ext2int(vanilla._recurrent_kernel_int2ext(v))
        elif k.endswith("slstm_cell._bias_"):
            out[k] = cuda._bias_ext2int(vanilla._bias_int2ext(v))
    return out


def test_from_official_cuda_layout(gen):
    cfg = official_config(blocks=3, slstm_at=(0, 2), m_heads=2, s_heads=4)
    off = official_model(gen, cfg)
    cuda_cfg = copy.deepcopy(cfg)
    cuda_cfg.slstm_block.slstm.backend = "cuda"
    cuda_sd = to_cuda_layout(off.state_dict(), cfg)
    key = "xlstm_block_stack.blocks.0.xlstm.slstm_cell._bias_"
    assert not torch.equal(cuda_sd[key], off.state_dict()[key])  # same shape, silently permuted
    ids = torch.randint(0, V, (2, 30), generator=gen)
    with torch.no_grad():
        want = off(ids)
        assert rel(from_official(cuda_sd, cuda_cfg)(ids)[0], want) < 1e-5
    with pytest.raises(ValueError, match="layout"):  # R's shape gives a wrong backend away ...
        from_official(cuda_sd, cfg)
    with pytest.raises(ValueError, match="layout"):
        from_official(off.state_dict(), cuda_cfg)
    sd, out_cfg = to_official(from_official(off), slstm_backend="cuda", as_state_dict=True)
    assert out_cfg.slstm_block.slstm.backend == "cuda"
    for k, v in cuda_sd.items():
        assert torch.equal(sd[k], v), k


@pytest.mark.parametrize("lm", [True, False])
def test_to_official_round_trip(gen, lm):
    cfg = official_config(blocks=3, slstm_at=(1,), m_heads=2, s_heads=2, tie=lm, lm=lm)
    off = official_model(gen, cfg)
    ours = from_official(off)
    back = to_official(ours, context_length=64)
    assert type(back) is type(off)
    for (k, a), (k2, b) in zip(sorted(back.state_dict().items()), sorted(off.state_dict().items())):
        assert k == k2 and torch.equal(a, b), k
    sd, back_cfg = to_official(ours, as_state_dict=True)
    again = from_official(sd, back_cfg)
    for (k, a), (_, b) in zip(sorted(again.state_dict().items()), sorted(ours.state_dict().items())):
        assert torch.equal(a, b), k
    inp = torch.randint(0, V, (2, 20), generator=gen) if lm else torch.randn(2, 20, 32, generator=gen)
    with torch.no_grad():
        assert rel(back.eval()(inp), ours(inp)[0]) < 1e-5


def test_initialisation_and_decay_groups_match_official(gen):
    cfg = official_config(D=64, blocks=4, slstm_at=(1, 2), m_heads=4, s_heads=4)
    off = xlstm.xLSTMLMModel(cfg)
    off.reset_parameters()
    fresh = xLSTMLM(from_official(off).config)
    converted = dict(from_official(off).named_parameters())
    for n, p in fresh.named_parameters():
        o = converted[n]
        if o.std() == 0 or n.endswith(("fgate.bias", "layer.bias")):  # deterministic: zeros, ones, linspace, powerlaw
            assert torch.equal(p, o), n
        elif p.numel() >= 256:  # random: the same distribution (std within sampling noise)
            assert 0.8 < (p.std() / o.std()).item() < 1.25, n
    # weight decay: mark each official parameter with its index, convert, and compare the groups by mark
    marked = copy.deepcopy(off)
    with torch.no_grad():
        for idx, p in enumerate(marked.parameters()):
            p.fill_(idx)
    mark = {n: int(p.flatten()[0]) for n, p in from_official(marked).named_parameters()}
    names = dict(enumerate(n for n, _ in marked.named_parameters()))
    off_decay, off_no = marked.get_weight_decay_optim_group_param_names()
    model = from_official(marked)
    decay, no = model.param_groups(0.1)
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[mark[by_id[id(p)]]] for p in decay["params"]) == sorted(off_decay)
    assert sorted(names[mark[by_id[id(p)]]] for p in no["params"]) == sorted(off_no)


def test_converter_errors(gen):
    cfg = official_config()
    off = official_model(gen, cfg)
    with pytest.raises(ValueError, match="needs its official config"):
        from_official(off.state_dict())
    with pytest.raises(TypeError, match="no converter for official module"):
        from_official(torch.nn.Linear(2, 2))
    sd = dict(off.state_dict())
    sd.pop("lm_head.weight")
    with pytest.raises(ValueError, match="lacks.*lm_head.weight"):
        from_official(sd, cfg)
    with pytest.raises(ValueError, match="shape"):
        from_official(off.state_dict(), official_config(D=64))
    with pytest.raises(TypeError, match="xLSTMLM or xLSTMBlockStack"):
        to_official(torch.nn.Linear(2, 2))
