"""The NeurIPS xLSTM LM and stack: config, initialisation, state carrying, weight-decay groups, bad input."""
import json
import math

import pytest
import torch

from flashxlstm import xLSTMLM, xLSTMLMConfig
from flashxlstm.models.xlstm_lm import xLSTMBlockStack, slstm_positions
from flashxlstm.nn import detach_state


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def tiny(**kw):
    base = dict(vocab_size=37, embedding_dim=16, num_blocks=3, slstm_at=[1], mlstm_num_heads=2, slstm_num_heads=2,
                round_proj_up_to_multiple_of=8, mlstm_chunk_size=4)
    return xLSTMLMConfig(**{**base, **kw})


def randomize(model, gen, scale=0.2):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return model


# ------------------------------------------------------------------------------------------------ config
def test_config_round_trips_through_json():
    cfg = tiny(slstm_at="xLSTM[1:1]", tie_weights=True)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert xLSTMLMConfig.from_dict(d) == cfg and d["slstm_at"] == [1]


def test_config_rejects_unknown_keys_and_inconsistency():
    with pytest.raises(ValueError, match=r"unknown keys \['context_length'\]"):
        xLSTMLMConfig.from_dict({**tiny().to_dict(), "context_length": 8})
    with pytest.raises(ValueError, match="outside 0..2"):
        tiny(slstm_at=[3])
    with pytest.raises(ValueError, match="repeats"):
        tiny(slstm_at=[1, 1])
    with pytest.raises(ValueError, match="slstm_num_heads"):
        tiny(slstm_num_heads=3)
    with pytest.raises(ValueError, match="mlstm_num_heads"):
        tiny(mlstm_num_heads=5)
    with pytest.raises(ValueError, match="xLSTM\\[a:b\\]"):
        tiny(slstm_at="xlstm[1-1]")
    with pytest.raises(ValueError, match="embedding_dim"):
        tiny(embedding_dim=0)
    with pytest.raises(ValueError, match="dropout"):
        tiny(dropout=1.5)
    with pytest.raises(ValueError, match="vocab_size"):
        xLSTMLM(xLSTMLMConfig(embedding_dim=16))


def test_slstm_positions():
    assert slstm_positions("xlstm[1:1]", 2) == [1]
    assert slstm_positions("xLSTM[1:1]", 4) == [1, 3]
    assert slstm_positions("xlstm[7:1]", 8) == [7]
    assert slstm_positions("xlstm[3:1]", 12) == [3, 7, 11]
    assert slstm_positions("xlstm[0:1]", 3) == [0, 1, 2]
    assert slstm_positions("xlstm[1:0]", 3) == []
    assert tiny(slstm_at="all").slstm_at == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ init
def test_official_initialisation():
    cfg = xLSTMLMConfig(vocab_size=300, embedding_dim=256, num_blocks=4, slstm_at=[1, 3], mlstm_num_heads=4,
                        slstm_num_heads=4)
    torch.manual_seed(0)
    model = xLSTMLM(cfg)
    D, small = 256, math.sqrt(2 / (5 * 256))
    std = lambda t: t.float().std().item()
    assert abs(std(model.token_embedding.weight) / small - 1) < 0.05
    assert abs(std(model.lm_head.weight) / small - 1) < 0.05
    m, s = model.stack.blocks[0].layer, model.stack.blocks[1].layer
    assert abs(std(m.proj_up.weight) / small - 1) < 0.05 and abs(std(m.q_proj.weight) / small - 1) < 0.05
    assert abs(std(m.proj_down.weight) / (2 / 4 / math.sqrt(D)) - 1) < 0.05
    assert torch.equal(m.fgate.bias, torch.linspace(3, 6, 4)) and not m.fgate.weight.any() and not m.igate.weight.any()
    assert abs(std(m.igate.bias) - 0.1) < 0.1 and torch.equal(m.learnable_skip, torch.ones(m.inner_dim))
    for j, block in [(1, s), (3, model.stack.blocks[3].layer)]:
        r = j / 3
        want = -(-5 + 12 * (torch.arange(64) / 63) ** (0.3 + 1.3 * r))
        assert torch.allclose(block.bias[1], want.expand(4, 64)) and not block.bias[[0, 2, 3]].any()
        assert not block.recurrent_kernel.any()
    for name, p in model.named_parameters():
        if "norm" in name:
            assert not p.any(), name  # offsets: effective weight 1


def test_tied_weights_share_storage():
    model = xLSTMLM(tiny(tie_weights=True))
    assert model.lm_head.weight is model.token_embedding.weight


def test_param_groups_follow_the_paper():
    model = xLSTMLM(tiny(bias=True))
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda g: {id(p) for p in g["params"]}
    assert ids(decay) | ids(no_decay) == {id(p) for p in model.parameters()} and not ids(decay) & ids(no_decay)
    names = {id(p): n for n, p in model.named_parameters()}
    for pid in ids(decay):
        assert "weight" in names[pid] and "norm" not in names[pid] and "token_embedding" not in names[pid]
    assert id(model.token_embedding.weight) in ids(no_decay)
    assert id(model.stack.blocks[1].layer.recurrent_kernel) in ids(no_decay)
    torch.optim.AdamW(model.param_groups(0.1), lr=1e-3)


# ------------------------------------------------------------------------------------------------ state
@pytest.mark.parametrize("cuts", [[1], [1, 2], [3, 4, 10], [2, 5, 6, 7, 8]])
def test_lm_state_splits_float64(gen, cuts):
    model = randomize(xLSTMLM(tiny(num_blocks=4, slstm_at=[1, 2])).double(), gen)
    ids = torch.randint(0, 37, (2, 12), generator=gen)
    full, s_full = model(ids)
    outs, state, a = [], None, 0
    for b in cuts + [12]:
        y, state = model(ids[:, a:b], state)
        outs.append(y)
        a = b
    assert rel(torch.cat(outs, 1), full) < 1e-12
    for sa, sb in zip(state, s_full):
        for a_, b_ in zip(sa, sb):
            assert rel(a_, b_) < 1e-11


def test_lm_state_splits_float32_and_truncated_bptt(gen):
    model = randomize(xLSTMLM(tiny()), gen)
    ids = torch.randint(0, 37, (3, 20), generator=gen)
    full, _ = model(ids)
    y1, s = model(ids[:, :7])
    y2, s = model(ids[:, 7:8], s)
    y3, _ = model(ids[:, 8:], detach_state(s))
    assert rel(torch.cat([y1, y2, y3], 1), full) < 1e-5
    y3.sum().backward()  # a truncated-BPTT step: only the last piece's graph
    assert all(p.grad is not None for p in model.parameters())


def test_stack_alone(gen):
    cfg = tiny(vocab_size=None, add_post_blocks_norm=False)
    stack = randomize(xLSTMBlockStack(cfg), gen)
    x = torch.randn(2, 9, 16, generator=gen)
    y, state = stack(x)
    assert y.shape == x.shape and len(state) == 3
    y1, s = stack(x[:, :4])
    y2, _ = stack(x[:, 4:], s)
    assert rel(torch.cat([y1, y2], 1), y) < 1e-5
    init = stack.initial_state(2)
    assert rel(stack(x, init)[0], y) == 0.0


def test_low_precision_keeps_float32_state(gen):
    model = xLSTMLM(tiny()).to(torch.bfloat16)
    logits, state = model(torch.randint(0, 37, (2, 5), generator=gen))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    assert state[0][1].dtype == torch.float32 and state[1][1].dtype == torch.float32


# ------------------------------------------------------------------------------------------------ bad input
def test_lm_bad_input(gen):
    model = xLSTMLM(tiny())
    ids = torch.randint(0, 37, (2, 5), generator=gen)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 37\)"):
        model(ids + 37)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 37\)"):
        model(ids - 38)
    with pytest.raises(TypeError, match="int64 or int32"):
        model(ids.float())
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        model(ids[0])
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1, 2]])
    _, state = model(ids)
    with pytest.raises(ValueError, match="one entry per block"):
        model(ids, state[:2])
    with pytest.raises(ValueError, match="block 0 \\(mlstm\\)"):
        model(ids, (state[1], state[1], state[2]))  # an sLSTM state where an mLSTM one belongs
    with pytest.raises(ValueError, match="block 0 \\(mlstm\\).*shape"):
        model(ids[:1], state)  # the state holds 2 sequences, the input 1
