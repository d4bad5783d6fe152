"""Child process of test_triton_bad_values.py: the Triton mLSTM (chunk-parallel kernels) under TRITON_INTERPRET=1
with values outside the math, and fp16 near a zero denominator, against the float64 recurrence (issue 12).

Prints one JSON line per case: {"case", "nonfinite": outputs or gradients non-finite where the reference is
finite, "errors": {name: relative error over the reference's finite entries}}.
"""
from __future__ import annotations

import json
import math
import os

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402

import flashxlstm.ops.mlstm_cell as M  # noqa: E402


def case(name, inject, *, S=21, D=8, chunk=8, gate="exp", init=False, grad=True, dtype=torch.float32, seed=0,
         i_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, S, D, generator=g) for _ in range(3))
    i, f = torch.randn(1, 2, S, generator=g) * i_scale, torch.randn(1, 2, S, generator=g) * 3 + 2
    inject(q, k, v, i, f)
    st = None
    if init:
        st = (torch.randn(1, 2, D, D, generator=g), torch.rand(1, 2, D, generator=g), torch.randn(1, 2, generator=g))
    ins = [t.to(dtype if j < 3 else torch.float32).detach().requires_grad_(grad)
           for j, t in enumerate((q, k, v, i, f))]
    h, state = M.mlstm(*ins, state=st, backend="triton", chunk_size=chunk, input_gate=gate)
    rins = [t.double().detach().requires_grad_(grad) for t in (q, k, v, i, f)]
    hr, sr = M.mlstm_reference(*rins, state=st, input_gate=gate)
    pairs = list(zip(("h", "C", "n", "m"), (h, *state), (hr, *sr)))
    if grad:
        w = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (hr, *sr)]
        sum((x.double() * y).sum() for x, y in zip((h, *state), w)).backward()
        sum((x * y).sum() for x, y in zip((hr, *sr), w)).backward()
        pairs += [("d" + n, a.grad, b.grad) for n, a, b in zip("qkvif", ins, rins)]
    nonfinite, errors = 0, {}
    for n, a, b in pairs:
        fin = torch.isfinite(b)
        a = a.detach().double()[fin]
        nonfinite += int((~torch.isfinite(a)).sum())
        b = b.detach()[fin]
        ok = torch.isfinite(a)
        errors[n] = ((a[ok] - b[ok]).norm() / b[ok].norm().clamp_min(1e-30)).item() if ok.any() else 0.0
    print(json.dumps(dict(case=name, nonfinite=nonfinite, errors=errors)), flush=True)


def near_zero_denominator(name, eps):
    """fp16, every step alone (forget gate ~0) with q_t . k_t = eps: den_t ~ eps / 4 while the normalizer's floor
    exp(-20) is far below it, so dh / z reaches ~1e5, beyond fp16's 65504, while every gradient fits fp16
    (|dq| up to ~2e4 at eps = 4e-5). Reports finiteness and the joint relative error of all gradients."""
    S, D = 8, 16
    g = torch.Generator().manual_seed(0)
    q = torch.zeros(1, 1, S, D)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, S, D)
    k[..., 1], k[..., 0] = 1.0, eps
    v = torch.randn(1, 1, S, D, generator=g)
    i, f = torch.full((1, 1, S), 20.0), torch.full((1, 1, S), -30.0)
    ins = [t.half().requires_grad_() for t in (q, k, v)] + [t.clone().requires_grad_() for t in (i, f)]
    h, _ = M.mlstm(*ins, backend="triton", chunk_size=16)
    rins = [t.detach().double().requires_grad_() for t in ins]
    hr, _ = M.mlstm_reference(*rins)
    w = torch.randn(hr.shape, generator=g, dtype=torch.float64)
    (h.double() * w).sum().backward()
    (hr * w).sum().backward()
    grads = torch.cat([a.grad.double().flatten() for a in ins])
    ref = torch.cat([b.grad.flatten() for b in rins])
    nonfinite = int((~torch.isfinite(grads)).sum()) + int((~torch.isfinite(h)).sum())
    ok = torch.isfinite(grads)
    errors = {"h": ((h.double() - hr).norm() / hr.norm()).item(),
              "grads": ((grads[ok] - ref[ok]).norm() / ref[ok].norm()).item()}
    print(json.dumps(dict(case=name, nonfinite=nonfinite, errors=errors)), flush=True)


def at(name, index, value):
    def inject(q, k, v, i, f):
        {"q": q, "k": k, "v": v, "i": i, "f": f}[name][index] = value
    return inject


def both(*injects):
    def inject(*ts):
        for j in injects:
            j(*ts)
    return inject


def main():
    torch.set_num_threads(1)
    case("f_minus_inf", at("f", (0, 1, 5), -math.inf))
    case("f_minus_inf_sigmoid_init", at("f", (0, 1, 12), -math.inf), gate="sigmoid", init=True)
    case("f_minus_3e38_twice", both(at("f", (0, 1, 5), -3e38), at("f", (0, 1, 6), -3e38)))
    # resets at a chunk's first and last step, at the sequence's first and last step, two in one chunk
    case("f_resets_mixed", both(at("f", (0, 0, 8), -math.inf), at("f", (0, 0, 15), -3e38), at("f", (0, 0, 13), -3e38),
                                at("f", (0, 1, 0), -math.inf), at("f", (0, 1, 20), -math.inf)), chunk=4, init=True)
    # the final state won by a step after a reset: the gate epilogue routes the stabilizer's gradient past it
    case("f_minus_inf_final_route", at("f", (0, 0, 17), -math.inf), i_scale=20.0, init=True)
    # an infinite value touches no output before its step (the gradients are not defined: outputs only)
    case("v_inf", at("v", (0, 1, 6, 0), math.inf), grad=False)
    case("k_inf", at("k", (0, 1, 6, 0), math.inf), grad=False)
    case("v_minus_inf_fp16", at("v", (0, 0, 3, 2), -math.inf), grad=False, dtype=torch.float16)
    near_zero_denominator("fp16_near_zero_denominator", 1e-4)
    near_zero_denominator("fp16_near_zero_denominator_4e-5", 4e-5)


if __name__ == "__main__":
    main()
