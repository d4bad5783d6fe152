"""torch.compile(model, fullgraph=True) on CPU: compiled == eager in outputs, states and every gradient.

Both model families at the smallest configs that hold every block type: NeurIPS xLSTM[1:1] (one mLSTM and one
sLSTM block, feed-forward after the sLSTM block) and a one-block 7B-family model, from a carried state, and
both with packed documents (cu_seqlens) on the torch backends of every cell (the cells reset at document
starts in one pass: ops/documents.py).
fullgraph=True fails on any graph break (a host sync such as `.item()` or a data-dependent branch in the
traced path).

The compiler backend is "aot_eager" unless FLASHXLSTM_COMPILE_BACKEND names another: it runs the same Dynamo
capture and AOTAutograd pass (fake functions of the custom ops in ops/custom_ops.py, functionalization, the
joint forward-backward graph) as Inductor, where both failures of torch.compile on these models arose, but not
Inductor's C++ code generation, which takes minutes per model on a 2-core machine.
`FLASHXLSTM_COMPILE_BACKEND=inductor pytest tests/test_compile.py` runs the full compiler.
"""
import os

import pytest
import torch
from torch.utils._pytree import tree_leaves, tree_map

from flashxlstm import xLSTMLM, xLSTMLMConfig
from flashxlstm.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def randomize(model, gen, scale=0.3):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def neurips(gen):
    cfg = xLSTMLMConfig(vocab_size=11, embedding_dim=8, num_blocks=2, slstm_at="xLSTM[1:1]", mlstm_num_heads=2,
                        slstm_num_heads=2, round_proj_up_to_multiple_of=8, mlstm_chunk_size=2)
    return randomize(xLSTMLM(cfg), gen)


def large(gen):
    cfg = xLSTMLargeConfig(embedding_dim=8, num_heads=2, num_blocks=1, vocab_size=11, chunk_size=2)
    return randomize(xLSTMLarge(cfg), gen)


def run(model, ids, state):
    logits, new_state = model(ids, state)
    flat = [s for s in tree_leaves(new_state) if isinstance(s, torch.Tensor)]
    loss = (logits * torch.linspace(-1, 1, logits.shape[-1])).sum() + sum(s.float().sum() for s in flat)
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    return [logits.detach(), *(s.detach() for s in flat)], grads


def compare(model, run_fn):
    eager_out, eager_grads = run_fn(model)
    compiled = torch.compile(model, fullgraph=True, backend=os.environ.get("FLASHXLSTM_COMPILE_BACKEND", "aot_eager"))
    out, grads = run_fn(compiled)
    for a, b in zip(out, eager_out):
        assert rel(a, b) < 1e-5
    for a, b in zip(grads, eager_grads):
        assert torch.isfinite(a).all() and rel(a, b) < 1e-4


@pytest.mark.parametrize("family, backends", [
    ("neurips", dict(mlstm_backend="chunkwise", slstm_backend="fused")),
    ("large", dict(backend="chunkwise"))])
def test_compiled_model_with_packed_documents_equals_eager(gen, family, backends):
    torch._dynamo.reset()
    if family == "neurips":
        cfg = xLSTMLMConfig(vocab_size=11, embedding_dim=8, num_blocks=2, slstm_at="xLSTM[1:1]", mlstm_num_heads=2,
                            slstm_num_heads=2, round_proj_up_to_multiple_of=8, mlstm_chunk_size=2, **backends)
        model = randomize(xLSTMLM(cfg), gen)
    else:
        model = randomize(xLSTMLarge(xLSTMLargeConfig(embedding_dim=8, num_heads=2, num_blocks=1, vocab_size=11,
                                                      chunk_size=2, **backends)), gen)
    ids = torch.randint(0, 11, (1, 9), generator=gen)
    cu = torch.tensor([0, 4, 5, 9])

    def run_packed(m):
        out = m(ids, cu_seqlens=cu)
        logits, new_state = out if isinstance(out, tuple) else (out.logits, out.state)
        flat = [s for s in tree_leaves(new_state) if isinstance(s, torch.Tensor)]
        loss = (logits * torch.linspace(-1, 1, logits.shape[-1])).sum() + sum(s.float().sum() for s in flat)
        return [logits.detach(), *(s.detach() for s in flat)], torch.autograd.grad(loss, list(m.parameters()))

    compare(model, run_packed)


@pytest.mark.parametrize("family", [neurips, large])
def test_compiled_model_equals_eager_in_outputs_and_gradients(gen, family):
    torch._dynamo.reset()
    model = family(gen)
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    _, state = model(ids[:, :2])  # a carried state: the compiled graph takes it as input
    state = tree_map(lambda s: s.detach() if isinstance(s, torch.Tensor) else s, state)
    eager_out, eager_grads = run(model, ids[:, 2:], state)
    compiled = torch.compile(model, fullgraph=True, backend=os.environ.get("FLASHXLSTM_COMPILE_BACKEND", "aot_eager"))
    out, grads = run(compiled, ids[:, 2:], state)
    for a, b in zip(out, eager_out):
        assert rel(a, b) < 1e-5
    for a, b in zip(grads, eager_grads):
        assert torch.isfinite(a).all() and rel(a, b) < 1e-4
