"""Packed documents (cu_seqlens through the layers) equal running each document alone: outputs, final states
and gradients, for both model families (mLSTM, sLSTM and the causal conv all reset at document starts)."""
import pytest
import torch
from torch.utils._pytree import tree_leaves

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


@pytest.mark.parametrize("family", ["neurips", "large"])
def test_rows_of_packed_documents_equal_one_packed_row(family):
    """(B, S) rows with cu_seqlens over the flattened tokens (every row starting a document; the sLSTM runs the
    rows side by side) equal the same tokens as one (1, B * S) packed row: outputs, states, gradients."""
    model = _models()[family]
    torch.manual_seed(2)
    ids = torch.randint(0, 11, (3, 7))
    cu = torch.tensor([0, 2, 7, 8, 14, 15, 16, 21])  # rows start at 0, 7, 14
    out_rows, st_rows = model(ids, cu_seqlens=cu)
    out_rows.pow(2).sum().backward()
    g_rows = _grads(model)
    model.zero_grad()
    out_flat, st_flat = model(ids.reshape(1, 21), cu_seqlens=cu)
    out_flat.pow(2).sum().backward()
    torch.testing.assert_close(out_rows.reshape(1, 21, -1), out_flat, rtol=1e-10, atol=1e-10)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g_rows[name], g, rtol=1e-9, atol=1e-10, msg=name)
    for a, b in zip(tree_leaves(st_rows), tree_leaves(st_flat)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


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
    with pytest.raises(ValueError, match="rise strictly from 0 to the number of tokens B \\* S = 6"):
        model(ids, cu_seqlens=torch.tensor([0, 3, 5]))
    with pytest.raises(ValueError, match="every row must start a document"):
        model(torch.randint(0, 11, (2, 6)), cu_seqlens=torch.tensor([0, 5, 12]))
    with pytest.raises(ValueError, match="empty state"):
        model(ids, state=model(ids)[1], cu_seqlens=torch.tensor([0, 6]))
