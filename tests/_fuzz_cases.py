"""Seeded fuzz cases for every mLSTM and sLSTM backend against the float64 recurrence (issue 12).

Each case draws a shape, a chunk size, a carried state (none, random, or empty with m = -inf), a gate scale
from 1 to 1e3 (log-uniform) and, one case in three, a value outside the math at one step (f = -inf, i = -inf,
a masked step i = -inf / f = +inf, v = inf; sLSTM: raw i = -inf); it runs one backend in float32 and the
float64 step-by-step reference on the same float32 inputs, and records, over the entries where the reference is finite: the relative error (norm of the
difference over the norm of the reference) and the number of non-finite values ("bad"). Gradients of a fixed
random loss are compared the same way where the backend has a backward.

Run as a script (with TRITON_INTERPRET=1, as tests/test_fuzz_ops.py does in a child process) it fuzzes the
Triton backends at tiny shapes, values outside the math included, and prints one JSON line per backend
(`--case JSON` runs one given mLSTM case).
"""
from __future__ import annotations

import json
import math
import random
import sys

import torch

from flashxlstm.ops import mlstm, mlstm_reference, mlstm_step, slstm, slstm_reference

MLSTM_BACKENDS = ("recurrent", "parallel", "chunkwise", "step")
SLSTM_BACKENDS = ("recurrent", "fused")


def tolerance(scale: float) -> float:
    """fp32 against float64: gate sums of size ~scale lose about scale * 2^-24 per step in the exponent."""
    return 1e-5 * max(1.0, scale)


def gradient_tolerance(scale: float) -> float:
    """The gradients of one loss, compared jointly (see _compare): conditioning grows with the gate scale as for
    the outputs, with a few more roundings on the way back."""
    return 3e-5 * max(1.0, scale)


def _compare(out, ref, joint: bool = False, log_scale: tuple[int, ...] = ()) -> tuple[float, int]:
    """Relative error over the entries where ref is finite, and the count of non-finite values there.

    Per tensor, or over all tensors together (joint: the gradients of one loss, where an input whose gradient
    is ~1e-13 in float64 and rounds to 0 in float32, such as a saturated forget gate, is no error).
    log_scale: indices of tensors in log space (the stabilizer m), whose rounding is absolute: their error is
    taken relative to max(|m|, 1) per entry (an m of 1e-25 computed as -6e-5 from gate sums of size 100 is
    the float32 rounding of those sums, and the state it stands for differs by a factor exp(6e-5))."""
    bad, pairs = 0, []
    for j, (a, b) in enumerate(zip(out, ref)):
        mask = torch.isfinite(b)
        a, b = a.double()[mask], b[mask]
        finite = torch.isfinite(a)
        bad += int((~finite).sum())
        a, b = a[finite], b[finite]
        if j in log_scale:  # the same measure with the reference's entries floored at 1 in magnitude
            pairs.append(((a - b) / b.abs().clamp_min(1.0), torch.ones_like(b)))
        else:
            pairs.append((a - b, b))
    if joint:
        pairs = [(torch.cat([d for d, _ in pairs]), torch.cat([b for _, b in pairs]))]
    err = max(((d.norm() / b.norm().clamp_min(1e-30)).item() for d, b in pairs if d.numel()), default=0.0)
    return err, bad


def _record(summary: dict, backend: str, kind: str, err: float, bad: int, scale: float, case: dict) -> None:
    s = summary.setdefault(backend, {"cases": 0, "worst_rel_error": 0.0, "worst_error_over_tolerance": 0.0,
                                     "nonfinite_where_reference_finite": 0, "gradient_cases": 0,
                                     "worst_gradient_rel_error": 0.0, "worst_gradient_error_over_tolerance": 0.0,
                                     "gradient_nonfinite": 0})
    if kind == "out":
        s["cases"] += 1
        if err >= s["worst_rel_error"]:
            s["worst_rel_error"], s["worst_case"] = err, case
        s["worst_error_over_tolerance"] = max(s["worst_error_over_tolerance"], err / tolerance(scale))
        s["nonfinite_where_reference_finite"] += bad
    else:
        s["gradient_cases"] += 1
        if err >= s["worst_gradient_rel_error"]:
            s["worst_gradient_rel_error"], s["worst_gradient_case"] = err, case
        if bad:
            s.setdefault("gradient_nonfinite_cases", []).append(case)
        s["worst_gradient_error_over_tolerance"] = max(s["worst_gradient_error_over_tolerance"],
                                                       err / gradient_tolerance(scale))
        s["gradient_nonfinite"] += bad


def _grads(outputs, inputs, weights):
    loss = sum((o.double() * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, inputs, allow_unused=True)


MLSTM_BAD = ("none", "f_minus_inf", "i_minus_inf", "masked_step", "v_inf")


def mlstm_case(rng: random.Random, max_dim: int = 9, max_len: int = 40, bad_values: bool = True) -> dict:
    """bad_values: one step in three gets a value outside the math (MLSTM_BAD) at a random step and head."""
    S = rng.randint(1, max_len)
    bad = rng.choice(MLSTM_BAD[1:]) if bad_values and rng.random() < 1 / 3 else "none"
    return dict(B=rng.randint(1, 2), NH=rng.randint(1, 2), S=S, DQK=rng.randint(1, max_dim),
                DV=rng.randint(1, max_dim), chunk=rng.choice([1, 2, 3, 4, 8, 16, 64]),
                state=rng.choice(["none", "random", "empty"]), scale=10 ** rng.uniform(0, 3),
                gate=rng.choice(["exp", "sigmoid"]), bad=bad, bad_step=rng.randrange(S), seed=rng.randrange(2**31))


def _inject_mlstm(case, v, i, f) -> None:
    t, bad = case["bad_step"], case["bad"]
    if bad == "f_minus_inf":
        f[:, -1, t] = float("-inf")
    elif bad == "i_minus_inf":
        i[:, -1, t] = float("-inf")
    elif bad == "masked_step":
        i[:, -1, t], f[:, -1, t] = float("-inf"), float("inf")
    elif bad == "v_inf":
        v[:, -1, t, 0] = float("inf")


def run_mlstm(case: dict, backends, summary: dict, gradients: bool = True) -> None:
    g = torch.Generator().manual_seed(case["seed"])
    B, NH, S, DQK, DV, scale = case["B"], case["NH"], case["S"], case["DQK"], case["DV"], case["scale"]
    q, k = torch.randn(B, NH, S, DQK, generator=g), torch.randn(B, NH, S, DQK, generator=g)
    v = torch.randn(B, NH, S, DV, generator=g)
    i, f = torch.randn(B, NH, S, generator=g) * scale, torch.randn(B, NH, S, generator=g) * scale + 2.0
    _inject_mlstm(case, v, i, f)
    state = None
    if case["state"] == "random":
        state = (torch.randn(B, NH, DQK, DV, generator=g), torch.rand(B, NH, DQK, generator=g),
                 torch.randn(B, NH, generator=g) * scale)
    elif case["state"] == "empty":
        state = (torch.zeros(B, NH, DQK, DV), torch.zeros(B, NH, DQK), torch.full((B, NH), -math.inf))
    inputs = [t.requires_grad_(gradients) for t in (q, k, v, i, f)]
    h_ref, st_ref = mlstm_reference(*inputs, state=state, input_gate=case["gate"])
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (h_ref, *st_ref)]
    gradients = gradients and case["bad"] != "v_inf"  # an infinite v makes the loss infinite: no gradient to compare
    g_ref = _grads((h_ref, *st_ref), inputs, weights) if gradients else None
    for backend in backends:
        if backend == "step":
            st, hs = state, []
            for t in range(S):
                h_t, st = mlstm_step(*(x[:, :, t] for x in inputs), state=st, input_gate=case["gate"])
                hs.append(h_t)
            h = torch.stack(hs, dim=2)
        else:
            h, st = mlstm(*inputs, state=state, backend=backend, chunk_size=case["chunk"], input_gate=case["gate"])
        _record(summary, f"mlstm/{backend}", "out", *_compare((h, *st), (h_ref, *st_ref), log_scale=(3,)), scale,
                case)
        if gradients:
            grads = _grads((h, *st), inputs, weights)
            _record(summary, f"mlstm/{backend}", "grad", *_compare(grads, g_ref, joint=True), scale, case)


def slstm_case(rng: random.Random, max_dim: int = 8, max_len: int = 30, bad_values: bool = True) -> dict:
    """bad_values: one case in three gets raw i = -inf at a random step of one head (that step is skipped)."""
    S = rng.randint(1, max_len)
    return dict(B=rng.randint(1, 2), S=S, NH=rng.randint(1, 3), DH=rng.randint(1, max_dim),
                state=rng.choice(["none", "random"]), scale=10 ** rng.uniform(0, 3),
                gate=rng.choice(["sigmoid", "exp"]), bad=bool(bad_values and rng.random() < 1 / 3),
                bad_step=rng.randrange(S), seed=rng.randrange(2**31))


def run_slstm(case: dict, backends, summary: dict, gradients: bool = True) -> None:
    g = torch.Generator().manual_seed(case["seed"])
    B, S, NH, DH, scale = case["B"], case["S"], case["NH"], case["DH"], case["scale"]
    x = torch.randn(B, S, 4, NH, DH, generator=g) * scale
    if case["bad"]:
        x[:, case["bad_step"], 0, -1] = float("-inf")
    R = torch.randn(4, NH, DH, DH, generator=g) / DH**0.5
    b = torch.randn(4, NH, DH, generator=g)
    state = None
    if case["state"] == "random":
        state = (torch.randn(B, NH, DH, generator=g), torch.rand(B, NH, DH, generator=g) + 0.1,
                 torch.randn(B, NH, DH, generator=g) * scale, torch.randn(B, NH, DH, generator=g).tanh())
    inputs = [t.requires_grad_(gradients) for t in (x, R, b)]
    h_ref, st_ref = slstm_reference(*inputs, state=state, forget_gate=case["gate"])
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (h_ref, *st_ref)]
    g_ref = _grads((h_ref, *st_ref), inputs, weights) if gradients else None
    for backend in backends:
        h, st = slstm(*inputs, state=state, backend=backend, forget_gate=case["gate"])
        _record(summary, f"slstm/{backend}", "out", *_compare((h, *st), (h_ref, *st_ref), log_scale=(3,)), scale,
                case)
        if gradients:
            grads = _grads((h, *st), inputs, weights)
            _record(summary, f"slstm/{backend}", "grad", *_compare(grads, g_ref, joint=True), scale, case)


def main() -> None:
    """The Triton backends under the interpreter: tiny shapes (the interpreter runs each program in Python)."""
    torch.set_num_threads(1)
    summary: dict = {}
    if len(sys.argv) > 2 and sys.argv[1] == "--case":  # one mLSTM case, given as JSON
        run_mlstm(json.loads(sys.argv[2]), ("triton",), summary)
    else:
        rng = random.Random(12)
        for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 8):
            run_mlstm(mlstm_case(rng, max_dim=4, max_len=20), ("triton",), summary)
            run_slstm(slstm_case(rng, max_dim=4, max_len=8), ("triton",), summary)
    for backend, s in summary.items():
        print(json.dumps({"case": backend, **s}), flush=True)


if __name__ == "__main__":
    main()
