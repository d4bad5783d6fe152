"""The model API both families share (flashxlstm.models.base): HF field names in configs, the output object
(logits, state, loss), typed states, attention_mask with left padding (nothing reset, nothing leaked),
save/load, parameter counts, and clear errors for empty batches and out-of-vocabulary ids."""
import math

import pytest
import torch
import torch.nn.functional as F

from flashxlstm import from_pretrained, xLSTMLarge, xLSTMLargeConfig, xLSTMLM, xLSTMLMConfig
from flashxlstm.models.base import CausalLMOutput
from flashxlstm.nn.state import mLSTMCellState, mLSTMLayerState, sLSTMLayerState

V = 37


def neurips(gen, **kw):
    cfg = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, slstm_at="xLSTM[1:1]", mlstm_num_heads=2,
               slstm_num_heads=2, mlstm_chunk_size=4)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    return xLSTMLM(xLSTMLMConfig(**{**cfg, **kw})).eval()


def large(gen, **kw):
    m = xLSTMLarge(xLSTMLargeConfig(**{**dict(hidden_size=32, num_heads=2, num_hidden_layers=2, vocab_size=V,
                                               chunk_size=4), **kw}))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return m.eval()


FAMILIES = {"neurips": neurips, "large": large}


def test_configs_take_transformers_names():
    c = xLSTMLargeConfig(hidden_size=64, num_hidden_layers=3, num_heads=2, vocab_size=10, mode="inference",
                         chunkwise_kernel="chunkwise--triton_xl_chunk")
    assert (c.embedding_dim, c.num_blocks, c.hidden_size, c.num_hidden_layers) == (64, 3, 64, 3)
    with pytest.raises(ValueError, match="disagrees with hidden_size"):
        xLSTMLargeConfig(hidden_size=64, embedding_dim=32)
    with pytest.raises(TypeError, match="no_such_field"):
        xLSTMLargeConfig(no_such_field=1)
    n = xLSTMLMConfig(vocab_size=5, hidden_size=64, num_hidden_layers=2, tie_word_embeddings=True)
    assert (n.embedding_dim, n.num_blocks, n.tie_weights) == (64, 2, True)
    assert xLSTMLMConfig.from_dict({**n.to_dict(), "hidden_size": 64}) == n


@pytest.mark.parametrize("family", FAMILIES)
def test_output_loss_tuple_and_tokenizer_kwargs(gen, family):
    model = FAMILIES[family](gen)
    ids = torch.randint(0, V, (3, 9), generator=gen)
    out = model(ids, labels=ids)
    assert isinstance(out, CausalLMOutput) and out.logits.shape == (3, 9, V) and len(out.state) == 2
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, V).double(), ids[:, 1:].reshape(-1))
    assert math.isclose(out.loss.item(), want.item(), rel_tol=1e-5)
    labels = ids.clone()
    labels[:, :4] = -100
    partial = model(ids, labels=labels).loss
    want = F.cross_entropy(out.logits[:, 3:-1].reshape(-1, V).double(), ids[:, 4:].reshape(-1))
    assert math.isclose(partial.item(), want.item(), rel_tol=1e-5)
    loss, logits, state = model(ids, labels=ids, return_dict=False)
    assert torch.equal(logits, out.logits) and loss.item() == out.loss.item()
    logits, state = model(ids)  # the output also unpacks as the (logits, state) tuple
    assert torch.equal(logits, out.logits)
    assert model(ids, use_cache=False).state is None
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    assert torch.equal(model(**batch).logits, out.logits)
    with pytest.raises(ValueError, match="token_type_ids"):
        model(ids, token_type_ids=torch.ones_like(ids))
    kinds = {type(s) for s in out.state}
    assert kinds == ({mLSTMLayerState, sLSTMLayerState} if family == "neurips" else {mLSTMCellState})
    with pytest.raises(ValueError, match="labels"):
        model(ids, labels=ids[:, :3])


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_resets_nothing_and_leaks_nothing(gen, family):
    """A row behind padding, with and without a carried state, equals the row alone; the padding's token
    values do not matter."""
    model = FAMILIES[family](gen).double()
    first = torch.randint(0, V, (3, 5), generator=gen)
    lengths = [6, 2, 4]
    rows = [torch.randint(0, V, (n,), generator=gen) for n in lengths]
    P = max(lengths)
    mask = torch.stack([torch.arange(P) >= P - n for n in lengths]).long()
    for start in (None, model(first).state):
        for fill in (0, V - 1):
            padded = torch.stack([torch.cat([torch.full((P - len(r),), fill), r]) for r in rows])
            out = model(padded, state=start, attention_mask=mask)
            for b, r in enumerate(rows):
                st = None if start is None else tuple(type(s)(*(t[b : b + 1] if t is not None else None for t in s))
                                                      for s in start)
                alone = model(r[None], state=st)
                torch.testing.assert_close(out.logits[b, P - len(r):], alone.logits[0], rtol=1e-9, atol=1e-9)
                for s_pad, s_alone in zip(out.state, alone.state):
                    for t_pad, t_alone in zip(s_pad, s_alone):
                        if t_pad is not None:
                            torch.testing.assert_close(t_pad[b : b + 1], t_alone, rtol=1e-9, atol=1e-9)
    # a step whose row is all padding leaves that row's state exactly as it was
    state = model(first).state
    out = model(first[:, :1], state=state, attention_mask=torch.tensor([[0], [1], [1]]))
    for s_new, s_old in zip(out.state, state):
        for a, b in zip(s_new, s_old):
            if a is not None:
                assert torch.equal(a[0], b[0])


def test_neurips_save_pretrained_and_from_pretrained(gen, tmp_path):
    model = neurips(gen, tie_weights=True)
    model.save_pretrained(tmp_path / "m")
    ids = torch.randint(0, V, (2, 6), generator=gen)
    for loaded in (xLSTMLM.from_pretrained(tmp_path / "m"), from_pretrained(tmp_path / "m", dtype="float64")):
        torch.testing.assert_close(loaded(ids).logits.float(), model(ids).logits, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="holds a xLSTMLM checkpoint"):
        xLSTMLarge.from_pretrained(tmp_path / "m")
    assert model.num_parameters() == sum(p.numel() for p in set(model.parameters()))
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - V * 32


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_batches_are_clear_errors(gen, family):
    model = FAMILIES[family](gen)
    with pytest.raises(ValueError, match="B >= 1"):
        model(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {V}\).*\[0, {V}\]"):
        model(torch.tensor([[0, V]]))
    with pytest.raises(ValueError, match="only 0 .padding. and 1"):
        model(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.tensor([[0, 2, 1]]))
