"""The fused loop form ("fused") against the float64 step-by-step reference: outputs, states, gradients."""
import pytest
import torch

from flashxlstm.ops import slstm, slstm_reference

from test_ops_slstm import make, rand_state, rel

SHAPES = [  # B, S, NH, DH
    (2, 1, 2, 5),  # S = 1
    (1, 13, 1, 3),
    (3, 7, 3, 12),
    (2, 20, 4, 4),
]


def weighted_loss(h, state, w, wc):
    return (h * w).sum() + sum((s * v).sum() for s, v in zip(state, wc))


def grads_of(fn, inputs, w, wc):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    h, st = fn(inputs)
    out = [h.detach(), *[s.detach() for s in st]]
    return out, torch.autograd.grad(weighted_loss(h, st, w, wc), inputs)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("with_state", [False, True])
def test_fp32_matches_reference(gen, shape, forget_gate, with_state):
    B, S, NH, DH = shape
    x, R, b = make(gen, B, S, NH, DH)
    state = rand_state(gen, B, NH, DH) if with_state else None
    h_ref, st_ref = slstm_reference(x, R, b, state=state, forget_gate=forget_gate)
    h, st = slstm(x, R, b, state=state, backend="fused", forget_gate=forget_gate)
    assert h.dtype == torch.float32 and all(s.dtype == torch.float32 for s in st)
    assert rel(h, h_ref) < 1e-5
    for a, c in zip(st, st_ref):
        assert rel(a, c) < 1e-5


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_gradients_match_reference(gen, shape, forget_gate, with_state, dtype, tol):
    B, S, NH, DH = shape
    x, R, b = make(gen, B, S, NH, DH, dtype=torch.float64)
    inputs = [x, R, b]
    if with_state:
        inputs += list(rand_state(gen, B, NH, DH, dtype=torch.float64))
    w = torch.randn(B, S, NH, DH, generator=gen, dtype=torch.float64)
    wc = [torch.randn(B, NH, DH, generator=gen, dtype=torch.float64) for _ in range(4)]

    def run(backend, dt):
        def fn(t):
            st = tuple(s.to(dt) for s in t[3:]) or None
            return slstm(t[0].to(dt), t[1].to(dt), t[2].to(dt), state=st, backend=backend, forget_gate=forget_gate)
        return fn

    out_ref, g_ref = grads_of(run("recurrent", torch.float64), inputs, w, wc)
    out, g = grads_of(run("fused", dtype), inputs, w, wc)
    for a, c in zip(out, out_ref):
        assert rel(a, c) < tol
    for name, a, c in zip(["x", "R", "b", "c0", "n0", "m0", "h0"], g, g_ref):
        assert torch.isfinite(a).all(), name
        assert rel(a, c) < tol, name


def test_gradcheck_float64(gen):
    x, R, b = make(gen, 2, 4, 2, 3, dtype=torch.float64)
    state = rand_state(gen, 2, 2, 3, dtype=torch.float64)
    inputs = [t.requires_grad_(True) for t in (x, R, b, *state)]

    def fn(x, R, b, *st):
        h, s = slstm(x, R, b, state=st, backend="fused")
        return (h, *s)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_extreme_preactivations(gen, forget_gate):
    B, S, NH, DH = 2, 24, 2, 5
    x = (torch.rand(B, S, 4, NH, DH, generator=gen) * 2 - 1) * 30
    x[:, ::3] = torch.sign(x[:, ::3]) * 30
    R = torch.randn(4, NH, DH, DH, generator=gen) * 2
    b = torch.randn(4, NH, DH, generator=gen) * 5
    xs = x.double().requires_grad_(True)
    h_ref, st_ref = slstm_reference(xs, R, b, forget_gate=forget_gate)
    xc = x.clone().requires_grad_(True)
    h, st = slstm(xc, R, b, backend="fused", forget_gate=forget_gate)
    assert torch.isfinite(h).all() and all(torch.isfinite(s).all() for s in st)
    assert rel(h, h_ref) < 1e-5
    assert rel(st[3], st_ref[3]) < 1e-5
    assert (st[2] - st_ref[2]).abs().max() < 1e-4 * st_ref[2].abs().max()
    (h.sum() + st[0].sum()).backward()
    (h_ref.sum() + st_ref[0].sum()).backward()
    assert torch.isfinite(xc.grad).all()
    assert rel(xc.grad, xs.grad) < 1e-4


def test_bfloat16_inputs_run_in_float32(gen):
    x, R, b = make(gen, 2, 6, 2, 8, dtype=torch.bfloat16)
    h, st = slstm(x, R, b, backend="fused")
    h_ref, st_ref = slstm_reference(x, R, b)
    assert h.dtype == torch.bfloat16 and st[0].dtype == torch.float32
    assert rel(h, h_ref) < 1e-2
    assert rel(st[1], st_ref[1]) < 1e-5


# ------------------------------------------------------------------ values outside the math (issue 12)
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("with_state", [False, True])
def test_input_gate_minus_inf_mid_sequence_skips_the_step(gen, forget_gate, with_state):
    """raw i = -inf at steps 3 and 4 (of some heads): the step keeps the old state, as in the stabilized
    recurrence, in values and gradients (L = raw_i + softplus(+inf) was -inf + inf = NaN)."""
    B, S, NH, DH = 2, 9, 2, 3
    x, R, b = make(gen, B, S, NH, DH)
    x[:, 3:5, 0, 1] = float("-inf")
    state = rand_state(gen, B, NH, DH) if with_state else None
    w = torch.randn(B, S, NH, DH, generator=gen, dtype=torch.float64)
    wc = [torch.randn(B, NH, DH, generator=gen, dtype=torch.float64) for _ in range(4)]
    st_in = None if state is None else list(state)
    run = lambda fn: grads_of(lambda t: fn(t[0], t[1], t[2], state=None if state is None else tuple(t[3:]),
                                           forget_gate=forget_gate), [x, R, b] + (st_in or []), w, wc)
    out, g = run(lambda *a, **kw: slstm(*a, backend="fused", **kw))
    out_ref, g_ref = run(slstm_reference)
    for a, r in zip(out, out_ref):
        assert torch.isfinite(a).all() and rel(a, r) < 1e-5
    for a, r in zip(g, g_ref):
        assert torch.isfinite(r).all() and torch.isfinite(a).all() and rel(a, r) < 1e-4


def test_negative_normalizer_in_a_given_state_is_named(gen):
    """n < 0 cannot come out of the recurrence and has no log: the fused loop names it (it gave NaN)."""
    x, R, b = make(gen, 1, 4, 2, 3)
    c, n, m, h = rand_state(gen, 1, 2, 3)
    n = n.clone()
    n[0, 1, 2] = -0.5
    with pytest.raises(ValueError, match="normalizer n must be >= 0"):
        slstm(x, R, b, state=(c, n, m, h), backend="fused")
    h_rec, _ = slstm(x, R, b, state=(c, n, m, h), backend="recurrent")  # carried along arithmetically
    assert torch.isfinite(h_rec).all()


def test_loop_custom_ops_pass_torch_opcheck(gen):
    """The loop is a custom op pair (ops/custom_ops.py): schema, fake functions and the autograd registration
    pass torch.library.opcheck, which is what torch.compile relies on."""
    from flashxlstm.ops.slstm_cell.fused_loop import _loop_forward

    B, S, NH, DH = 2, 3, 2, 3
    x, R, b = make(gen, B, S, NH, DH)
    c0, L0, h0 = (torch.randn(NH, B, DH, generator=gen) for _ in range(3))
    m0 = L0 - 0.5
    args = [t.requires_grad_(True) for t in (x, R, b, c0, L0, h0, m0)]
    for exp_forget in (False, True):
        torch.library.opcheck(_loop_forward, (*args, exp_forget, None))
    # packed documents: B == 1, one initial state per document
    x1 = make(gen, 1, 5, NH, DH)[0].requires_grad_(True)
    inits = [torch.randn(NH, 3, DH, generator=gen).requires_grad_(True) for _ in range(4)]
    torch.library.opcheck(_loop_forward, (x1, *args[1:3], *inits, False, torch.tensor([0, 2, 3, 5])))
