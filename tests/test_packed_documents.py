"""Packed documents (cu_seqlens through the layers) equal running each document alone: outputs, final states
and gradients, for both model families (mLSTM, sLSTM and the causal conv all reset at document starts)."""
import pytest
import torch

from flashxlstm import xLSTMLM, xLSTMLMConfig
from flashxlstm.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig
from flashxlstm.nn.conv import CausalConv1d

LENGTHS = [5, 1, 9, 3, 2]


def _models():
    torch.manual_seed(0)
    neurips = xLSTMLM(xLSTMLMConfig(vocab_size=11, embedding_dim=16, num_blocks=2, slstm_at="xLSTM[1:1]",
                                    mlstm_num_heads=2, slstm_num_heads=2, mlstm_chunk_size=4))
    large = xLSTMLarge(xLSTMLargeConfig(vocab_size=11, embedding_dim=16, num_heads=2, num_blocks=2, chunk_size=4,
                                        backend="chunkwise", step_backend="torch"))
    return {"neurips": neurips.double(), "large": large.double()}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["neurips", "large"])
def test_packed_equals_separate_documents(family):
    model = _models()[family]
    torch.manual_seed(1)
    docs = [torch.randint(0, 11, (1, n)) for n in LENGTHS]
    cu = torch.tensor([0] + torch.cumsum(torch.tensor(LENGTHS), 0).tolist())
    packed, state = model(torch.cat(docs, dim=1), cu_seqlens=cu)
    packed.pow(2).sum().backward()
    g_packed = _grads(model)
    model.zero_grad()
    alone = [model(d) for d in docs]
    sum(out.pow(2).sum() for out, _ in alone).backward()
    g_alone = _grads(model)
    torch.testing.assert_close(packed, torch.cat([out for out, _ in alone], dim=1), rtol=1e-10, atol=1e-10)
    for name in g_alone:
        torch.testing.assert_close(g_packed[name], g_alone[name], rtol=1e-9, atol=1e-10, msg=name)
    for j, block_state in enumerate(state):  # one final state per document
        for part_packed, *parts in zip(block_state, *[s[j] for _, s in alone]):
            if part_packed is not None:
                torch.testing.assert_close(part_packed, torch.cat(parts, dim=0), rtol=1e-10, atol=1e-10)


def test_conv_never_reads_across_a_document_start():
    conv = CausalConv1d(3, 4).double()
    x = torch.randn(1, 7, 3, dtype=torch.float64)
    y, _ = conv(x, cu_seqlens=torch.tensor([0, 2, 7]))
    x2 = x.clone()
    x2[:, :2] = 100.0  # the first document changes; the second must not notice
    y2, _ = conv(x2, cu_seqlens=torch.tensor([0, 2, 7]))
    torch.testing.assert_close(y[:, 2:], y2[:, 2:])


def test_bad_cu_seqlens_are_one_line_errors():
    model = _models()["neurips"]
    ids = torch.randint(0, 11, (1, 6))
    with pytest.raises(ValueError, match="rise strictly from 0 to the sequence length 6"):
        model(ids, cu_seqlens=torch.tensor([0, 3, 5]))
    with pytest.raises(ValueError, match="batch size 1"):
        model(torch.randint(0, 11, (2, 6)), cu_seqlens=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="empty state"):
        model(ids, state=model(ids)[1], cu_seqlens=torch.tensor([0, 6]))
