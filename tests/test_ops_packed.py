"""Packed documents (cu_seqlens) in the torch forms of both cells: one pass equals each document run alone.

The yardstick is the float64 recurrence run on every document by itself (from its own initial state, or zeros):
outputs, final states and the gradients of all inputs and initial states, at odd lengths, documents of one
step, documents longer and shorter than a chunk and starting anywhere inside one, both gates of each cell.
"""
import itertools

import pytest
import torch

from flashxlstm.ops import mlstm, mlstm_reference, slstm, slstm_reference

LENGTHS = [[5, 1, 17], [1], [3, 1, 1, 8, 2], [7, 9]]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def offsets(lens):
    return torch.tensor([0, *itertools.accumulate(lens)])


def grads_of(outputs, inputs, weights):
    loss = sum((o.double() * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, inputs)


def against_documents_alone(run_packed, run_alone, inputs, per_doc, lens, gen):
    """run_packed(inputs) -> [h, *final states]; run_alone(inputs, a, b, d) -> the same for document d alone.
    per_doc: how many leading inputs are sliced along time (the rest are shared or per-document states)."""
    cu = offsets(lens)
    xs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = run_packed(xs, cu)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in out]
    g = grads_of(out, xs, weights)
    ys = [t.detach().double().requires_grad_(True) for t in inputs]
    pieces = []
    for d, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        pieces.append(run_alone(ys, a, b, d))
    ref = [torch.cat([p[0] for p in pieces], dim=per_doc)] + [torch.cat(parts, 0) for parts in
                                                              zip(*[p[1:] for p in pieces])]
    g_ref = grads_of(ref, ys, weights)
    return [rel(a, b) for a, b in zip(out, ref)], [rel(a, b) for a, b in zip(g, g_ref)]


@pytest.mark.parametrize("form", ["recurrent", "chunkwise", "parallel"])
@pytest.mark.parametrize("input_gate", ["exp", "sigmoid"])
@pytest.mark.parametrize("with_state", [False, True])
def test_mlstm_packed_equals_documents_alone(gen, form, input_gate, with_state):
    NH, DQK, DV = 2, 5, 6
    for lens, chunk in zip(LENGTHS, (4, 1, 3, 16)):
        S, N = sum(lens), len(lens)
        q, k = (torch.randn(1, NH, S, DQK, generator=gen, dtype=torch.float64) for _ in range(2))
        v = torch.randn(1, NH, S, DV, generator=gen, dtype=torch.float64)
        i = torch.randn(1, NH, S, generator=gen, dtype=torch.float64) * 4
        f = torch.randn(1, NH, S, generator=gen, dtype=torch.float64) * 4 + 1
        state = [torch.randn(N, NH, DQK, DV, generator=gen, dtype=torch.float64),
                 torch.randn(N, NH, DQK, generator=gen, dtype=torch.float64),
                 torch.randn(N, NH, generator=gen, dtype=torch.float64)] if with_state else []

        def packed(xs, cu):
            h, st = mlstm(*xs[:5], state=tuple(xs[5:]) or None, backend=form, chunk_size=chunk, cu_seqlens=cu,
                          input_gate=input_gate)
            return [h, *st]

        def alone(ys, a, b, d):
            st = tuple(s[d : d + 1] for s in ys[5:]) or None
            h, st = mlstm_reference(*(t[:, :, a:b] for t in ys[:5]), state=st, input_gate=input_gate)
            return [h, *st]

        out, grads = against_documents_alone(packed, alone, [q, k, v, i, f, *state], 2, lens, gen)
        assert max(out) < 1e-12, (lens, out)
        assert max(grads) < 1e-9, (lens, grads)


@pytest.mark.parametrize("form", ["recurrent", "fused"])
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("with_state", [False, True])
def test_slstm_packed_equals_documents_alone(gen, form, forget_gate, with_state):
    NH, DH = 2, 5
    for lens in LENGTHS:
        S, N = sum(lens), len(lens)
        x = torch.randn(1, S, 4, NH, DH, generator=gen, dtype=torch.float64) * 2
        R = torch.randn(4, NH, DH, DH, generator=gen, dtype=torch.float64) / DH**0.5
        b = torch.randn(4, NH, DH, generator=gen, dtype=torch.float64)
        r = lambda: torch.randn(N, NH, DH, generator=gen, dtype=torch.float64)
        state = [r(), torch.rand(N, NH, DH, generator=gen, dtype=torch.float64) + 0.5, r(), r().tanh()] \
            if with_state else []

        def packed(xs, cu):
            h, st = slstm(*xs[:3], state=tuple(xs[3:]) or None, backend=form, forget_gate=forget_gate,
                          cu_seqlens=cu)
            return [h, *st]

        def alone(ys, a, b, d):
            st = tuple(s[d : d + 1] for s in ys[3:]) or None
            h, st = slstm_reference(ys[0][:, a:b], ys[1], ys[2], state=st, forget_gate=forget_gate)
            return [h, *st]

        out, grads = against_documents_alone(packed, alone, [x, R, b, *state], 1, lens, gen)
        assert max(out) < 1e-12, (lens, out)
        assert max(grads) < 1e-10, (lens, grads)


@pytest.mark.parametrize("form", ["recurrent", "fused"])
def test_slstm_rows_of_documents_equal_one_packed_row(gen, form):
    """(B, S) rows with cu_seqlens over the flattened steps (every row starting a document) equal the same steps
    as one packed row."""
    x = torch.randn(3, 6, 4, 2, 3, generator=gen, dtype=torch.float64)
    R = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64) / 2
    b = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)
    cu = torch.tensor([0, 2, 6, 12, 13, 18])
    h, st = slstm(x, R, b, backend=form, cu_seqlens=cu)
    h1, st1 = slstm(x.reshape(1, 18, 4, 2, 3), R, b, backend=form, cu_seqlens=cu)
    torch.testing.assert_close(h, h1.view(3, 6, 2, 3), rtol=0, atol=0)
    for a, c in zip(st, st1):
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_slstm_fused_float32_packed_is_close(gen):
    """The fused loop in float32 (its hand-written backward) against the float64 documents alone."""
    lens = [6, 1, 4]
    S, NH, DH = sum(lens), 2, 8
    x = torch.randn(1, S, 4, NH, DH, generator=gen) * 2
    R = torch.randn(4, NH, DH, DH, generator=gen) / DH**0.5
    b = torch.randn(4, NH, DH, generator=gen)

    def packed(xs, cu):
        h, st = slstm(*xs, backend="fused", cu_seqlens=cu)
        return [h, *st]

    def alone(ys, a, b_, d):
        h, st = slstm_reference(ys[0][:, a:b_], ys[1], ys[2])
        return [h, *st]

    out, grads = against_documents_alone(packed, alone, [x, R, b], 1, lens, gen)
    assert max(out) < 1e-5 and max(grads) < 1e-4, (out, grads)


def test_packed_values_do_not_cross_documents(gen):
    """A non-finite input in one document leaves every other document's outputs and states untouched."""
    lens = [4, 5, 3]
    cu = offsets(lens)
    q, k = (torch.randn(1, 2, 12, 4, generator=gen) for _ in range(2))
    v = torch.randn(1, 2, 12, 4, generator=gen)
    i, f = torch.randn(1, 2, 12, generator=gen), torch.randn(1, 2, 12, generator=gen)
    v_bad = v.clone()
    v_bad[:, :, 5] = float("inf")
    for form in ("chunkwise", "parallel", "recurrent"):
        h, st = mlstm(q, k, v, i, f, backend=form, chunk_size=4, cu_seqlens=cu)
        hb, stb = mlstm(q, k, v_bad, i, f, backend=form, chunk_size=4, cu_seqlens=cu)
        torch.testing.assert_close(hb[:, :, :4], h[:, :, :4])
        torch.testing.assert_close(hb[:, :, 9:], h[:, :, 9:])
        for a, c in zip(stb, st):
            torch.testing.assert_close(a[[0, 2]], c[[0, 2]])


def test_packed_errors_name_the_problem(gen):
    x = torch.randn(2, 4, 4, 1, 3, generator=gen)
    R, b = torch.zeros(4, 1, 3, 3), torch.zeros(4, 1, 3)
    with pytest.raises(ValueError, match="every row must start a document"):
        slstm(x, R, b, cu_seqlens=torch.tensor([0, 3, 8]))
    with pytest.raises(ValueError, match="rise strictly"):
        slstm(x[:1], R, b, cu_seqlens=torch.tensor([0, 2, 2, 4]))
    with pytest.raises(ValueError, match=r"state c must have shape"):
        slstm(x[:1], R, b, state=tuple(torch.zeros(1, 1, 3) for _ in range(4)), cu_seqlens=torch.tensor([0, 1, 4]))
