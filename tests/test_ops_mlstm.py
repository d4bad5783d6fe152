"""The torch forms of the mLSTM op against the float64 step-by-step reference."""
import pytest
import torch

from flashxlstm.ops import mlstm, mlstm_reference, mlstm_step

FORMS = ["recurrent", "parallel", "chunkwise"]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def make(gen, B, NH, S, DQK, DV, gate_scale=1.0, dtype=torch.float32):
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    q, k, v = r(B, NH, S, DQK), r(B, NH, S, DQK), r(B, NH, S, DV)
    i, f = r(B, NH, S) * gate_scale, r(B, NH, S) * gate_scale + 2.0
    return [t.to(dtype) for t in (q, k, v, i, f)]


def rand_state(gen, B, NH, DQK, DV):
    return (
        torch.randn(B, NH, DQK, DV, generator=gen),
        torch.rand(B, NH, DQK, generator=gen),
        torch.randn(B, NH, generator=gen),
    )


SHAPES = [  # B, NH, S, DQK, DV, chunk
    (2, 3, 1, 5, 7, 4),  # S = 1
    (1, 2, 37, 6, 9, 8),  # S not a multiple of the chunk, odd head dims
    (2, 2, 16, 12, 10, 16),  # S == chunk
    (1, 1, 5, 3, 3, 64),  # S < chunk
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("input_gate", ["exp", "sigmoid"])
@pytest.mark.parametrize("with_state", [False, True])
def test_forms_match_reference_fp32(gen, form, shape, input_gate, with_state):
    B, NH, S, DQK, DV, L = shape
    q, k, v, i, f = make(gen, B, NH, S, DQK, DV)
    state = rand_state(gen, B, NH, DQK, DV) if with_state else None
    h_ref, st_ref = mlstm_reference(q, k, v, i, f, state=state, input_gate=input_gate)
    h, st = mlstm(q, k, v, i, f, state=state, backend=form, chunk_size=L, input_gate=input_gate)
    assert h.dtype == torch.float32 and all(s.dtype == torch.float32 for s in st)
    assert rel(h, h_ref) < 2e-6
    for a, b in zip(st, st_ref):
        assert rel(a, b) < 2e-6


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("input_gate", ["exp", "sigmoid"])
def test_forms_match_reference_fp64_with_gradients(gen, form, input_gate):
    B, NH, S, DQK, DV, L = 2, 2, 11, 5, 6, 4
    inputs = [t.requires_grad_(True) for t in make(gen, B, NH, S, DQK, DV, dtype=torch.float64)]
    state = [s.double().requires_grad_(True) for s in rand_state(gen, B, NH, DQK, DV)]
    w = torch.randn(B, NH, S, DV, generator=gen, dtype=torch.float64)
    wc = [torch.randn(s.shape, generator=gen, dtype=torch.float64) for s in state]

    def loss_and_grads(fn):
        h, st = fn()
        loss = (h * w).sum() + sum((s * c).sum() for s, c in zip(st, wc))
        return h, st, torch.autograd.grad(loss, inputs + state)

    h_ref, st_ref, g_ref = loss_and_grads(lambda: mlstm_reference(*inputs, state=tuple(state), input_gate=input_gate))
    h, st, g = loss_and_grads(
        lambda: mlstm(*inputs, state=tuple(state), backend=form, chunk_size=L, input_gate=input_gate)
    )
    assert rel(h, h_ref) < 1e-12
    for a, b in zip(st, st_ref):
        assert rel(a, b) < 1e-12
    for a, b in zip(g, g_ref):
        assert rel(a, b) < 1e-10


@pytest.mark.parametrize("form", FORMS)
def test_gradients_fp32_match_fp64(gen, form):
    inputs = [t.requires_grad_(True) for t in make(gen, 1, 2, 21, 8, 8)]
    h, _ = mlstm(*inputs, backend=form, chunk_size=8)
    w = torch.randn(h.shape, generator=gen)
    g = torch.autograd.grad((h * w).sum(), inputs)
    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
    h64, _ = mlstm_reference(*inputs64)
    g64 = torch.autograd.grad((h64 * w.double()).sum(), inputs64)
    for a, b in zip(g, g64):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("form", FORMS)
def test_extreme_gates_stay_finite(gen, form):
    q, k, v, _, _ = make(gen, 1, 2, 40, 8, 8)
    i = (torch.rand(1, 2, 40, generator=gen) * 60 - 30).requires_grad_(True)
    f = (torch.rand(1, 2, 40, generator=gen) * 60 - 30).requires_grad_(True)
    q.requires_grad_(True)
    h, st = mlstm(q, k, v, i, f, backend=form, chunk_size=16)
    h_ref, _ = mlstm_reference(q, k, v, i, f)
    assert torch.isfinite(h).all() and all(torch.isfinite(s).all() for s in st)
    assert rel(h, h_ref) < 1e-4  # fp32 conditioning with |gates| up to 30
    h.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, i, f))


@pytest.mark.parametrize("form", FORMS)
def test_masked_steps_leave_state_untouched_even_from_empty(gen, form):
    """i = -inf, f = +inf is a padded step; an initial m of -inf is an empty state."""
    q, k, v, i, f = make(gen, 1, 2, 12, 4, 4)
    i[:, :, :5], f[:, :, :5] = float("-inf"), float("inf")
    empty = (torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4), torch.full((1, 2), float("-inf")))
    for x in (q, i, f):
        x.requires_grad_(True)
    h, st = mlstm(q, k, v, i, f, state=empty, backend=form, chunk_size=4)
    h_tail, st_tail = mlstm(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], i[:, :, 5:], f[:, :, 5:], state=empty, backend="recurrent")
    assert torch.equal(h[:, :, :5], torch.zeros_like(h[:, :, :5]))
    assert rel(h[:, :, 5:], h_tail) < 2e-6
    for a, b in zip(st, st_tail):
        assert rel(a, b) < 2e-6
    h.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, i, f))


@pytest.mark.parametrize("split", [1, 7, 16, 29])
def test_splitting_and_carrying_state_equals_one_pass(gen, split):
    q, k, v, i, f = make(gen, 2, 2, 30, 6, 5)
    h, st = mlstm(q, k, v, i, f, chunk_size=8)
    h1, st1 = mlstm(q[:, :, :split], k[:, :, :split], v[:, :, :split], i[:, :, :split], f[:, :, :split], chunk_size=8)
    h2, st2 = mlstm(q[:, :, split:], k[:, :, split:], v[:, :, split:], i[:, :, split:], f[:, :, split:], state=st1, chunk_size=8)
    assert rel(torch.cat([h1, h2], dim=2), h) < 2e-6
    for a, b in zip(st2, st):
        assert rel(a, b) < 2e-6


def test_step_matches_sequence(gen):
    q, k, v, i, f = make(gen, 2, 3, 6, 5, 4)
    h_seq, st_seq = mlstm(q, k, v, i, f)
    st, hs = None, []
    for t in range(6):
        h, st = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state=st)
        hs.append(h)
    assert rel(torch.stack(hs, dim=2), h_seq) < 2e-6
    for a, b in zip(st, st_seq):
        assert rel(a, b) < 2e-6


def test_cu_seqlens_equals_documents_alone(gen):
    q, k, v, i, f = make(gen, 1, 2, 23, 4, 6)
    cu = torch.tensor([0, 5, 6, 23])
    h, st = mlstm(q, k, v, i, f, cu_seqlens=cu, chunk_size=4)
    assert st[0].shape == (3, 2, 4, 6)
    for d, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        hd, std = mlstm_reference(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], i[:, :, a:b], f[:, :, a:b])
        assert rel(h[:, :, a:b], hd) < 2e-6
        assert rel(st[0][d : d + 1], std[0]) < 2e-6


def test_bf16_inputs_give_bf16_output_and_fp32_state(gen):
    q, k, v, i, f = make(gen, 1, 2, 9, 8, 8)
    h, st = mlstm(q.bfloat16(), k.bfloat16(), v.bfloat16(), i, f, chunk_size=4)
    assert h.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in st)
    h_ref, _ = mlstm_reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), i, f)
    assert rel(h, h_ref) < 1e-2


def test_inputs_are_not_modified(gen):
    inputs = make(gen, 1, 2, 9, 4, 4)
    state = rand_state(gen, 1, 2, 4, 4)
    copies = [t.clone() for t in inputs + list(state)]
    mlstm(*inputs, state=state, chunk_size=4)
    assert all(torch.equal(a, b) for a, b in zip(inputs + list(state), copies))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(k=a["k"][..., :-1]), "k must have the shape of q"),
        (lambda a: a.update(v=a["v"][:, :, :-1]), "v must have shape"),
        (lambda a: a.update(i=a["i"][..., None]), "gate i must have shape"),
        (lambda a: a.update(q=a["q"].long()), "q must be a floating-point"),
        (lambda a: a.update(q=a["q"][0]), "q must have shape"),
        (lambda a: a.update(state=(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2))), "state C must have shape"),
        (lambda a: a.update(backend="nope"), "unknown backend 'nope'"),
        (lambda a: a.update(input_gate="relu"), "input_gate must be one of"),
        (lambda a: a.update(chunk_size=0), "chunk_size must be a positive int"),
        (lambda a: a.update(cu_seqlens=torch.tensor([0, 3, 3, 9])), "cu_seqlens must rise strictly"),
    ],
)
def test_bad_input_is_named(gen, mutate, message):
    q, k, v, i, f = make(gen, 2, 2, 9, 4, 4)
    args = dict(q=q, k=k, v=v, i=i, f=f)
    mutate(args)
    if "cu_seqlens" in args:
        args = {n: (t[:1] if t.dim() else t) for n, t in args.items() if n in "qkvif"} | {"cu_seqlens": args["cu_seqlens"]}
    kw = {n: args.pop(n) for n in list(args) if n not in ("q", "k", "v", "i", "f")}
    with pytest.raises((ValueError, TypeError), match=message):
        mlstm(args["q"], args["k"], args["v"], args["i"], args["f"], **kw)


# ------------------------------------------------------------------ values outside the math (issue 12)
def _grads(h, st, inputs, w):
    loss = (h.double() * w).sum() + sum(s.double().sum() for s in st)
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("form", FORMS + ["step"])
@pytest.mark.parametrize("case", ["minus_inf_once", "minus_3e38_twice"])
def test_forget_gate_at_the_bottom_of_float32_resets_like_the_recurrence(gen, form, case):
    """f = -inf (or two steps of -3e38, whose running sum overflows) is an exact reset: every form equals the
    float64 recurrence in values and gradients (the cumsum difference gave -inf - (-inf) = NaN)."""
    q, k, v, i, f = make(gen, 2, 2, 13, 5, 6)
    if case == "minus_inf_once":
        f[:, :, 5] = float("-inf")
    else:
        f[:, :, 4:6] = -3e38
    state = rand_state(gen, 2, 2, 5, 6)
    inputs = [t.requires_grad_(True) for t in (q, k, v, i)]
    w = torch.randn(2, 2, 13, 6, generator=gen, dtype=torch.float64)
    if form == "step":
        st, hs = state, []
        for t in range(13):
            h_t, st = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state=st)
            hs.append(h_t)
        h = torch.stack(hs, dim=2)
    else:
        h, st = mlstm(q, k, v, i, f, state=state, backend=form, chunk_size=4)
    h_ref, st_ref = mlstm_reference(q, k, v, i, f, state=state)
    assert torch.isfinite(h).all() and all(torch.isfinite(s).all() for s in st)
    assert rel(h, h_ref) < 2e-6
    for a, b in zip(st, st_ref):
        assert rel(a, b) < 2e-6
    for a, b in zip(_grads(h, st, inputs, w), _grads(h_ref, st_ref, inputs, w)):
        assert torch.isfinite(a).all() and rel(a, b) < 1e-5


@pytest.mark.parametrize("form, chunk", [("recurrent", 4), ("parallel", 4), ("chunkwise", 4), ("chunkwise", 16)])
@pytest.mark.parametrize("where", ["v", "k", "q"])
def test_a_non_finite_input_is_causal_and_matches_the_recurrence(gen, form, chunk, where):
    """inf in v (or k, q) at step 6 leaves outputs 0..5 exact and finite; from step 6 on the non-finite
    entries are exactly where the float64 recurrence has them (the masked product spread NaN to steps 0..7)."""
    q, k, v, i, f = make(gen, 1, 2, 11, 4, 5)
    {"q": q, "k": k, "v": v}[where][:, :, 6, 1] = float("inf")
    h, st = mlstm(q, k, v, i, f, backend=form, chunk_size=chunk)
    h_ref, st_ref = mlstm_reference(q, k, v, i, f)
    assert torch.isfinite(h[:, :, :6]).all() and rel(h[:, :, :6], h_ref[:, :, :6]) < 2e-6
    assert torch.equal(torch.isfinite(h), torch.isfinite(h_ref))
    for a, b in zip(st, st_ref):
        assert torch.equal(torch.isfinite(a), torch.isfinite(b))


@pytest.mark.parametrize("form", FORMS)
def test_float32_backward_is_finite_at_gate_scale_1e3(gen, form):
    """Gate pre-activations of +-1e3: the float64 gradients are finite, so the float32 ones must be (the
    normalizer floor exp(-m) overflowed to inf and the backward formed inf * 0)."""
    for _ in range(4):
        q, k, v, i, f = make(gen, 1, 2, 19, 4, 4, gate_scale=1e3)
        inputs = [t.requires_grad_(True) for t in (q, k, v, i, f)]
        w = torch.randn(1, 2, 19, 4, generator=gen, dtype=torch.float64)
        h, st = mlstm(*inputs, backend=form, chunk_size=8)
        h64, st64 = mlstm(*(t.double() for t in inputs), backend=form, chunk_size=8)
        for a, b in zip(_grads(h, st, inputs, w), _grads(h64, st64, inputs, w)):
            assert torch.isfinite(b).all() and torch.isfinite(a).all()


def test_integer_states_and_step_inputs_are_rejected(gen):
    q, k, v, i, f = make(gen, 1, 2, 3, 4, 4)
    int_state = (torch.zeros(1, 2, 4, 4, dtype=torch.int64), torch.zeros(1, 2, 4), torch.zeros(1, 2))
    with pytest.raises(TypeError, match="state C must be a floating-point tensor"):
        mlstm(q, k, v, i, f, state=int_state)
    with pytest.raises(TypeError, match="mlstm_step: state C must be a floating-point tensor"):
        mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state=int_state)
    for name in "qkvif":
        args = dict(q=q[:, :, 0], k=k[:, :, 0], v=v[:, :, 0], i=i[:, :, 0], f=f[:, :, 0])
        args[name] = args[name].round().long()
        with pytest.raises(TypeError, match=f"mlstm_step: {name} must be a floating-point tensor"):
            mlstm_step(*args.values())


def test_zero_sized_head_dims_are_named(gen):
    q, k, v, i, f = make(gen, 1, 2, 3, 4, 4)
    with pytest.raises(ValueError, match="DQK must be at least 1"):
        mlstm(q[..., :0], k[..., :0], v, i, f)
    with pytest.raises(ValueError, match="mlstm_step: DQK must be at least 1"):
        mlstm_step(q[:, :, 0, :0], k[:, :, 0, :0], v[:, :, 0], i[:, :, 0], f[:, :, 0])
    with pytest.raises(ValueError, match="DV must be at least 1"):
        mlstm(q, k, v[..., :0], i, f)


# ------------------------------------------------------------------ accuracy against the official kernel (issue 11)
@pytest.mark.parametrize("gates", ["normal_12", "uniform_30"])
def test_fp32_error_at_extreme_gates_within_twice_the_official_parallel_kernel(gates):
    """Shape (2, 3, 67, 16, 24), gate pre-activations N(0, 12^2) or U(-30, 30): the fp32 error of our parallel
    and chunkwise forms (against our float64 recurrence) is at most twice that of the official
    parallel_stabilized_simple (against itself in float64), on the same inputs."""
    backends = pytest.importorskip("xlstm.blocks.mlstm.backends")
    official = backends.parallel_stabilized_simple
    worst = {"parallel": 0.0, "chunkwise": 0.0, "official": 0.0}
    err = lambda a, b: ((a.double() - b).abs().max() / b.abs().max()).item()
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        B, NH, S, DQK, DV = 2, 3, 67, 16, 24
        q, k, v = torch.randn(B, NH, S, DQK, generator=g), torch.randn(B, NH, S, DQK, generator=g), torch.randn(B, NH, S, DV, generator=g)
        if gates == "normal_12":
            i, f = 12 * torch.randn(B, NH, S, generator=g), 12 * torch.randn(B, NH, S, generator=g)
        else:
            i, f = torch.rand(B, NH, S, generator=g) * 60 - 30, torch.rand(B, NH, S, generator=g) * 60 - 30
        ours64, _ = mlstm_reference(q, k, v, i, f)
        off_in = (q, k, v, i[..., None], f[..., None])
        e_off = err(official(*off_in), official(*(t.double() for t in off_in)))
        worst["official"] = max(worst["official"], e_off)
        for form in ("parallel", "chunkwise"):
            h, _ = mlstm(q, k, v, i, f, backend=form, chunk_size=16)
            worst[form] = max(worst[form], err(h, ours64) / e_off)
    assert worst["parallel"] <= 2.0 and worst["chunkwise"] <= 2.0, worst
