"""Child process of test_compile_triton.py: torch.compile(fullgraph=True) with the Triton backends under
TRITON_INTERPRET=1, compiled against eager in outputs, states and gradients.

Prints one JSON line per case: {"case", "errors": {name: relative error}, "nonfinite": count}. A graph break
(or a host sync such as .item() / .tolist() in the traced path) fails fullgraph=True: the case then reports
{"case", "error": message} instead.
"""
from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402
from torch.utils._pytree import tree_leaves, tree_map  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_compile import neurips, large, randomize, rel  # noqa: E402

from flashxlstm import xLSTMLM, xLSTMLMConfig  # noqa: E402
from flashxlstm.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig  # noqa: E402
from flashxlstm.ops import mlstm, mlstm_step, slstm  # noqa: E402

BACKEND = os.environ.get("FLASHXLSTM_COMPILE_BACKEND", "aot_eager")


def emit(case: str, pairs, **extra) -> None:
    """pairs: (name, compiled, eager) tensors."""
    errors = {name: rel(a, b) for name, a, b in pairs}
    nonfinite = sum(int((~torch.isfinite(a)).sum()) for _, a, _ in pairs)
    print(json.dumps(dict(case=case, errors=errors, nonfinite=nonfinite, **extra)), flush=True)


def guarded(case: str, fn) -> None:
    torch._dynamo.reset()
    try:
        fn()
    except Exception as e:  # reported to the test, which fails with the message
        print(json.dumps(dict(case=case, error=f"{type(e).__name__}: {str(e)[:3000]}")), flush=True)


def outputs_and_grads(fn, inputs):
    """fn(*inputs) -> tensors; returns them and the gradients of a fixed random loss on all of them."""
    xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    outs = [o for o in tree_leaves(fn(*xs)) if isinstance(o, torch.Tensor)]
    g = torch.Generator().manual_seed(5)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
    grads = torch.autograd.grad(loss, [x for x in xs if x.requires_grad])
    return [o.detach() for o in outs], list(grads)


def compare(case: str, fn, inputs) -> None:
    eager = outputs_and_grads(fn, inputs)
    compiled = outputs_and_grads(torch.compile(fn, fullgraph=True, backend=BACKEND), inputs)
    pairs = [(f"out{j}", a, b) for j, (a, b) in enumerate(zip(compiled[0], eager[0]))]
    pairs += [(f"grad{j}", a, b) for j, (a, b) in enumerate(zip(compiled[1], eager[1]))]
    emit(case, pairs)


def mlstm_packed() -> None:
    """mlstm with cu_seqlens and per-document initial states, both input gates in one graph."""
    g = torch.Generator().manual_seed(1)
    S, cu = 13, torch.tensor([0, 4, 5, 13], dtype=torch.int32)
    q, k = torch.randn(1, 2, S, 8, generator=g), torch.randn(1, 2, S, 8, generator=g)
    v = torch.randn(1, 2, S, 8, generator=g)
    i, f = torch.randn(1, 2, S, generator=g), torch.randn(1, 2, S, generator=g) + 2
    C0, n0, m0 = torch.randn(3, 2, 8, 8, generator=g), torch.rand(3, 2, 8, generator=g), torch.randn(3, 2, generator=g)

    def fn(q, k, v, i, f, C0, n0, m0, cu):
        h, st = mlstm(q, k, v, i, f, state=(C0, n0, m0), backend="triton", chunk_size=4, cu_seqlens=cu)
        h2, _ = mlstm(q, k, v, i, f, backend="triton", chunk_size=4, cu_seqlens=cu, input_gate="sigmoid")
        return h, st, h2

    compare("mlstm_cu_seqlens", fn, (q, k, v, i, f, C0, n0, m0, cu))


def mlstm_windows() -> None:
    """the chunk-parallel forward and backward with a state and 16-bit residuals (fp16)."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 1, 21, 16, generator=g) for _ in range(3))
    i, f = torch.randn(2, 1, 21, generator=g), torch.randn(2, 1, 21, generator=g) + 2

    def fn(q, k, v, i, f):
        h, st = mlstm(q.half(), k.half(), v.half(), i, f, backend="triton", chunk_size=16)
        return h.float(), st

    compare("mlstm_fp16", fn, (q, k, v, i, f))


def steps() -> None:
    """the decode steps (no gradients): mLSTM step from a state, sLSTM forward without gradients."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 8, generator=g) for _ in range(3))
    i, f = torch.randn(2, 2, generator=g), torch.randn(2, 2, generator=g)
    st = (torch.randn(2, 2, 8, 8, generator=g), torch.rand(2, 2, 8, generator=g), torch.randn(2, 2, generator=g))
    fn = lambda *a: mlstm_step(*a[:5], state=tuple(a[5:]), backend="triton")
    with torch.no_grad():
        eager = tree_leaves(fn(q, k, v, i, f, *st))
        compiled = tree_leaves(torch.compile(fn, fullgraph=True, backend=BACKEND)(q, k, v, i, f, *st))
    emit("mlstm_step", [(f"out{j}", a, b) for j, (a, b) in enumerate(zip(compiled, eager))])


def slstm_alone() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 4, 2, 4, generator=g) * 2
    R, b = torch.randn(4, 2, 4, 4, generator=g) / 2, torch.randn(4, 2, 4, generator=g)
    st = tuple(torch.randn(2, 2, 4, generator=g) for _ in range(4))
    st = (st[0], st[1].abs() + 0.1, st[2], st[3].tanh())
    compare("slstm", lambda x, R, b, *s: slstm(x, R, b, state=tuple(s), backend="triton"), (x, R, b, *st))


def compare_model(name: str, m, call) -> None:
    """`call(model)` -> (logits, state) eager and compiled whole (fullgraph): outputs, states and every
    parameter's gradient of one loss over both."""

    def run(model):
        logits, state = call(model)
        flat = [s for s in tree_leaves(state) if isinstance(s, torch.Tensor)]
        loss = (logits * torch.linspace(-1, 1, logits.shape[-1])).sum() + sum(s.float().sum() for s in flat)
        return [logits.detach(), *(s.detach() for s in flat)], torch.autograd.grad(loss, list(model.parameters()))

    eager = run(m)
    compiled = run(torch.compile(m, fullgraph=True, backend=BACKEND))
    pairs = [(f"out{j}", a, b) for j, (a, b) in enumerate(zip(compiled[0], eager[0]))]
    pairs += [(f"grad{j}", a, b) for j, (a, b) in enumerate(zip(compiled[1], eager[1]))]
    emit(name, pairs)


def model(family) -> None:
    """The models of test_compile.py with every Triton backend, from a carried state."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(6)
    m = family(gen)
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    _, state = m(ids[:, :2])
    state = tree_map(lambda s: s.detach() if isinstance(s, torch.Tensor) else s, state)
    compare_model(family.__name__, m, lambda model: model(ids[:, 2:], state))


def neurips_triton(gen):
    cfg = xLSTMLMConfig(vocab_size=11, embedding_dim=8, num_blocks=2, slstm_at="xLSTM[1:1]", mlstm_num_heads=2,
                        slstm_num_heads=2, round_proj_up_to_multiple_of=8, mlstm_chunk_size=2,
                        mlstm_backend="triton", slstm_backend="triton")
    return randomize(xLSTMLM(cfg), gen)


def large_triton(gen):
    cfg = xLSTMLargeConfig(embedding_dim=8, num_heads=2, num_blocks=1, vocab_size=11, chunk_size=2,
                           backend="triton", step_backend="triton")
    return randomize(xLSTMLarge(cfg), gen)


def neurips_packed() -> None:
    """NeurIPS xLSTM[1:1] with packed documents: the mLSTM and sLSTM Triton kernels reset at document starts in
    one launch each, traced whole."""
    gen = torch.Generator().manual_seed(8)
    m = neurips_triton(gen)
    ids = torch.randint(0, 11, (1, 9), generator=gen)
    cu = torch.tensor([0, 4, 5, 9], dtype=torch.int32)
    compare_model("neurips_cu_seqlens", m, lambda model: model(ids, cu_seqlens=cu))


def large_packed() -> None:
    """the 7B family with packed documents: cu_seqlens through the traced model, no graph break."""
    gen = torch.Generator().manual_seed(7)
    m = large_triton(gen)
    ids = torch.randint(0, 11, (1, 9), generator=gen)
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int32)

    def call(model):
        out = model(ids, cu_seqlens=cu)
        return out.logits, out.state

    compare_model("large_cu_seqlens", m, call)


def main() -> None:
    torch.set_num_threads(1)
    guarded("mlstm_cu_seqlens", mlstm_packed)
    guarded("mlstm_fp16", mlstm_windows)
    guarded("mlstm_step", steps)
    guarded("slstm", slstm_alone)
    guarded("neurips_triton", lambda: model(neurips_triton))
    guarded("large_triton", lambda: model(large_triton))
    guarded("large_cu_seqlens", large_packed)
    guarded("neurips_cu_seqlens", neurips_packed)


if __name__ == "__main__":
    main()
