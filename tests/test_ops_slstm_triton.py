"""The Triton sLSTM kernels under TRITON_INTERPRET=1 on CPU, against the float64 reference.

TRITON_INTERPRET must be set before the kernels are defined, and other tests must not see it, so the
kernels run in one child process (this file run as a script) that checks every case and reports the
relative errors; the tests below assert on them. Tiny shapes: the interpreter is slow.
"""
import json
import os
import sys
from pathlib import Path

import pytest

# B, S, NH, DH, block_j, forget_gate, with_state, dtype, tolerance
CASES = {
    "odd_dh_with_state": (2, 3, 2, 5, None, "sigmoid", True, "float32", 2e-5),
    "two_programs_per_head_exp": (3, 4, 1, 20, 16, "exp", False, "float32", 2e-5),
    "two_batch_blocks": (17, 2, 2, 16, None, "sigmoid", False, "float32", 2e-5),
    "two_programs_per_head_state": (2, 5, 1, 20, 16, "sigmoid", True, "float32", 2e-5),
    "single_step_exp_state": (2, 1, 3, 4, None, "exp", True, "float32", 2e-5),
    "two_k_chunks_streamed_r": (2, 3, 1, 300, 256, "sigmoid", True, "float32", 2e-5),
    "streamed_r_exp": (3, 3, 2, 20, 16, "exp", True, "stream", 2e-5),
    # the configuration used on CUDA: no register-held R/h_prev; a whole head per program syncs per step
    "cuda_config_whole_head": (2, 4, 2, 16, None, "sigmoid", True, "cuda", 2e-5),
    "cuda_config_split_head": (3, 3, 1, 40, None, "exp", True, "cuda", 2e-5),
    # R kept on chip in two K pieces (40 -> 32 + 16 rows, 72 -> 64 + 16 with padding)
    "resident_two_k_pieces_split_head": (2, 4, 2, 40, 16, "sigmoid", True, "cuda", 2e-5),
    "resident_two_k_pieces_whole_head": (3, 3, 1, 24, 32, "exp", True, "cuda", 2e-5),
    "resident_padded_pieces_fp16": (2, 3, 1, 72, 32, "sigmoid", True, "float16_cuda", 3e-3),
    "streamed_split_head_state": (2, 4, 1, 40, 16, "sigmoid", True, "stream_cuda", 2e-5),
    "extreme_preactivations": (2, 6, 1, 16, None, "sigmoid", True, "extreme", 1e-4),
    # bf16 dots are not emulated correctly by the Triton 3.6 interpreter (numpy has no bf16); fp16 takes
    # the same low-precision path here, and benchmarks/bench_slstm.py checks bf16 on the GPU.
    "float16_inputs": (2, 4, 2, 16, None, "sigmoid", True, "float16", 3e-3),
}
# packed documents in one launch (cu_seqlens), each from its own initial state, against the float64
# recurrence run on every document alone: documents per row (rows side by side, each starting a document),
# NH, DH, block_j, forget_gate, launch overrides, tolerance
PACKED = {
    "packed_registers": ([[3, 1, 4]], 2, 5, None, "sigmoid", {}, 2e-5),
    "packed_whole_head_cuda_config": ([[3, 1, 4]], 2, 16, None, "exp", {"registers": False}, 2e-5),
    "packed_split_head": ([[2, 1, 3]], 1, 20, 16, "sigmoid", {}, 2e-5),
    "packed_streamed_r": ([[2, 3, 1]], 2, 20, 16, "exp", {"resident_limit": 0, "registers": False}, 2e-5),
    "packed_one_document_of_one_step": ([[1]], 1, 4, None, "sigmoid", {}, 2e-5),
    "packed_rows_registers": ([[3, 1, 2], [6], [2, 4]], 2, 5, None, "sigmoid", {}, 2e-5),
    "packed_rows_split_head_cuda_config": ([[1, 4], [2, 3]], 1, 20, 16, "exp", {"registers": False}, 2e-5),
}
# 16-bit x and R (b and the states float32): the recurrent products take h and the gate gradients as hi + lo
# 16-bit pairs, so everything the kernels return in float32 (h, final states, db, initial-state gradients)
# is within float32-level error of float64; dx and dR come back in fp16 (one rounding, <= 2^-11 relative).
# One rounded product alone gives ~6e-5 in h and ~1e-4 in the state gradients here. Same fields as PACKED
# (one row of one document: no packing).
SPLIT16 = {
    "fp16_split_head_resident_two_pieces": ([[8]], 1, 40, 16, "sigmoid", {"registers": False}, 2e-5),
    "fp16_streamed_r": ([[6]], 2, 20, 16, "exp", {"resident_limit": 0, "registers": False}, 2e-5),
    "fp16_registers": ([[8]], 2, 16, None, "sigmoid", {}, 2e-5),
    "fp16_packed_rows_split_head": ([[2, 3], [1, 4]], 1, 20, 16, "sigmoid", {"registers": False}, 2e-5),
}
FP16_ROUNDING = 2.0**-11


def _child() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from test_ops_slstm import make, rand_state, rel

    from flashxlstm.ops import slstm_reference
    from flashxlstm.ops.slstm_cell import triton as tri
    from flashxlstm.ops.slstm_cell.triton import slstm_triton

    for name, (B, S, NH, DH, block_j, fg, with_state, kind, _) in CASES.items():
        gen = torch.Generator().manual_seed(len(name))
        dtype = torch.float16 if kind.startswith("float16") else torch.float32
        x, R, b = make(gen, B, S, NH, DH, scale=2.0)
        if kind == "extreme":
            x = (torch.rand(x.shape, generator=gen, dtype=torch.float64) * 2 - 1) * 30
            x[:, ::2] = x[:, ::2].sign() * 30
        state = list(rand_state(gen, B, NH, DH, dtype=torch.float64)) if with_state else []
        x, R, b = (t.to(dtype) for t in (x, R, b))
        w = torch.randn(B, S, NH, DH, generator=gen, dtype=torch.float64)
        wc = [torch.randn(B, NH, DH, generator=gen, dtype=torch.float64) for _ in range(4)]

        def run(fn, dt):
            inputs = [t.detach().to(dt).requires_grad_(True) for t in (x, R, b, *state)]
            h, st = fn(inputs)
            loss = (h.double() * w).sum() + sum((s.double() * v).sum() for s, v in zip(st, wc))
            return [h, *st], torch.autograd.grad(loss, inputs)

        zero = lambda: tuple(torch.zeros(B, NH, DH) for _ in range(4))
        tune = {}
        if kind.startswith("stream"):
            tune["resident_limit"] = 0
        if kind.endswith("cuda"):
            tune["registers"] = False
        # with as many "SMs" as heads, each program runs both batch blocks of this case one after another
        tri._num_sms = (lambda device: NH) if name == "two_batch_blocks" else (lambda device: 1 << 30)
        out, grads = run(lambda t: slstm_triton(t[0], t[1], t[2], tuple(t[3:]) or zero(), forget_gate=fg,
                                                 block_j=block_j, tune=tune), dtype)
        out_ref, grads_ref = run(lambda t: slstm_reference(t[0], t[1], t[2], state=tuple(t[3:]) or None,
                                                           forget_gate=fg), torch.float64)
        with torch.no_grad():  # the inference path: no saved tensors, one state slot
            h_inf, st_inf = slstm_triton(x, R, b, tuple(t.float() for t in state) or zero(), forget_gate=fg,
                                         block_j=block_j, tune=tune)
        p = tri.plan(B, NH, DH, torch.device("cpu"), block_j, dot_dtype=dtype, **tune)
        print(json.dumps({
            "case": name,
            "plan": {k: p[k] for k in ("R_RESIDENT", "KR1", "REG", "NJ")},
            "inference": [rel(a, c) for a, c in zip([h_inf, *st_inf], out_ref)],
            "outputs": [rel(a, c) for a, c in zip(out, out_ref)],
            "grads": [rel(a, c) for a, c in zip(grads, grads_ref)],
            "finite": bool(all(torch.isfinite(t).all() for t in (*out, *grads))),
        }), flush=True)
    tri._num_sms = lambda device: 1 << 30
    cases = [(name, case, torch.float32) for name, case in PACKED.items()]
    cases += [(name, case, torch.float16) for name, case in SPLIT16.items()]
    for name, (rows, NH, DH, block_j, fg, tune, _), dtype in cases:
        gen = torch.Generator().manual_seed(len(name))
        lens = [n for row in rows for n in row]
        B, S, N = len(rows), sum(rows[0]), len(lens)
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()]) if N > 1 else None
        x, R, b = make(gen, B, S, NH, DH, scale=2.0)
        state = list(rand_state(gen, N, NH, DH, dtype=torch.float64))
        w = [torch.randn(B, S, NH, DH, generator=gen, dtype=torch.float64)]
        w += [torch.randn(N, NH, DH, generator=gen, dtype=torch.float64) for _ in range(4)]
        loss = lambda outs: sum((o.double() * v).sum() for o, v in zip(outs, w))
        xs = [t.to(dtype if j < 2 else torch.float32).requires_grad_(True) for j, t in enumerate((x, R, b, *state))]
        h, st = slstm_triton(xs[0], xs[1], xs[2], tuple(xs[3:]), forget_gate=fg, block_j=block_j, tune=tune,
                             cu_seqlens=cu)
        out = [h, *st]
        grads = torch.autograd.grad(loss(out), xs)
        with torch.no_grad():
            h_inf, st_inf = slstm_triton(*(t.detach() for t in xs[:3]), tuple(t.detach() for t in xs[3:]),
                                         forget_gate=fg, block_j=block_j, tune=tune, cu_seqlens=cu)
        ys = [t.detach().double().requires_grad_(True) for t in xs]
        flat = ys[0].reshape(1, B * S, 4, NH, DH)
        pieces = []
        for d, (a, e) in enumerate(zip([0, *torch.tensor(lens).cumsum(0).tolist()], torch.tensor(lens).cumsum(0).tolist())):
            hd, sd = slstm_reference(flat[:, a:e], ys[1], ys[2], state=tuple(s[d : d + 1] for s in ys[3:]),
                                     forget_gate=fg)
            pieces.append([hd, *sd])
        ref = [torch.cat([p[0] for p in pieces], 1).view(B, S, NH, DH)]
        ref += [torch.cat(parts) for parts in zip(*[p[1:] for p in pieces])]
        grads_ref = torch.autograd.grad(loss(ref), ys)
        p = tri.plan(B, NH, DH, torch.device("cpu"), block_j, dot_dtype=dtype, **tune)
        print(json.dumps({
            "case": name,
            "plan": {k: p[k] for k in ("R_RESIDENT", "REG", "NJ", "stepwise", "KR1")},
            "inference": [rel(a, c) for a, c in zip([h_inf, *st_inf], ref)],
            "outputs": [rel(a, c) for a, c in zip(out, ref)],
            "grads": [rel(a, c) for a, c in zip(grads, grads_ref)],
            "finite": bool(all(torch.isfinite(t).all() for t in (*out, *grads))),
        }), flush=True)


@pytest.fixture(scope="module")
def interpreted():
    from conftest import require_triton, run_interpreter_cases

    require_triton()
    return run_interpreter_cases(Path(__file__), timeout=1800)


@pytest.mark.parametrize("case", sorted(CASES))
def test_triton_kernels_match_reference(interpreted, case):
    tol = CASES[case][-1]
    r = interpreted[case]
    if case.startswith("resident"):  # the case exercises what its name says
        assert r["plan"]["R_RESIDENT"] and not r["plan"]["REG"], r["plan"]
        assert r["plan"]["KR1"] > 0, r["plan"]
    if case.startswith("stream"):
        assert not r["plan"]["R_RESIDENT"], r["plan"]
    assert r["finite"]
    for name, err in zip(["h", "c", "n", "m", "h_last"], r["inference"]):
        assert err < tol, f"{case} (no grad): {name} relative error {err:.2e} >= {tol:.0e}"
    names = ["h", "c", "n", "m", "h_last", "dx", "dR", "db", "dc0", "dn0", "dm0", "dh0"]
    for name, err in zip(names, r["outputs"] + r["grads"]):
        assert err < tol, f"{case}: {name} relative error {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("case", sorted(PACKED))
def test_packed_documents_in_one_launch_match_documents_alone(interpreted, case):
    tol = PACKED[case][-1]
    r = interpreted[case]
    assert r["finite"]
    names = ["h", "c", "n", "m", "h_last"]
    for name, err in zip(names, r["inference"]):
        assert err < tol, f"{case} (no grad): {name} relative error {err:.2e} >= {tol:.0e}"
    for name, err in zip(names + ["dx", "dR", "db", "dc0", "dn0", "dm0", "dh0"], r["outputs"] + r["grads"]):
        assert err < tol, f"{case}: {name} relative error {err:.2e} >= {tol:.0e}"
    if "split_head" in case:  # two programs per head: the stepwise launches carry the resets across
        assert r["plan"]["NJ"] == 2 and r["plan"]["stepwise"], r["plan"]
    if case.endswith("registers"):
        assert r["plan"]["REG"], r["plan"]


@pytest.mark.parametrize("case", sorted(SPLIT16))
def test_16bit_dots_keep_float32_accuracy(interpreted, case):
    tol = SPLIT16[case][-1]
    r = interpreted[case]
    assert r["finite"]
    names = ["h", "c", "n", "m", "h_last", "dx", "dR", "db", "dc0", "dn0", "dm0", "dh0"]
    for name, err in zip(names, r["outputs"] + r["grads"]):
        limit = FP16_ROUNDING + tol if name in ("dx", "dR") else tol
        assert err < limit, f"{case}: {name} relative error {err:.2e} >= {limit:.1e}"
    # without gradients one 16-bit product per step: each step's raw is off by <= 2^-11 of its recurrent part
    for name, err in zip(names[:5], r["inference"]):
        assert err < FP16_ROUNDING, f"{case} (no grad): {name} relative error {err:.2e}"
    p = r["plan"]
    if "split_head" in case:
        assert p["NJ"] >= 2 and not p["REG"], p
    if "two_pieces" in case:
        assert p["R_RESIDENT"] and p["KR1"] > 0, p
    if "streamed" in case:
        assert not p["R_RESIDENT"], p
    if case.endswith("registers"):
        assert p["REG"], p


if __name__ == "__main__":
    _child()


def test_plan_defaults_on_cuda(monkeypatch):
    """The launch choices measured fastest on an H200 (`git show 363a467:benchmarks/results/slstm_kernels.md`); pure Python."""
    import torch

    from flashxlstm.ops.slstm_cell import triton as tri

    monkeypatch.setattr(tri, "_num_sms", lambda device: 132)
    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    p = tri.plan(16, 1, 768, cuda, dot_dtype=bf16)
    assert (p["BJ"], p["NJ"], p["R_RESIDENT"], p["KR0"], p["KR1"], p["barrier"]) == (16, 48, True, 512, 256, True)
    p = tri.plan(16, 4, 256, cuda, dot_dtype=bf16)
    assert (p["BJ"], p["NJ"], p["R_RESIDENT"], p["KR1"]) == (32, 8, True, 0)
    p = tri.plan(16, 8, 64, cuda, dot_dtype=bf16)
    assert (p["BJ"], p["NJ"], p["R_RESIDENT"], p["REG"]) == (32, 2, True, False)
    p = tri.plan(16, 8, 64, cuda, dot_dtype=bf16, inference=True)  # no gradients: a head per program
    assert (p["BJ"], p["NJ"], p["R_RESIDENT"], p["REG"], p["barrier"]) == (64, 1, True, True, False)
    p = tri.plan(16, 1, 768, cuda, dot_dtype=torch.float32)  # fp32 dots run without tensor cores: streamed
    assert (p["BJ"], p["R_RESIDENT"], p["REG"]) == (32, False, False)
    p = tri.plan(16, 1, 768, cuda, dot_dtype=bf16, resident=False, block_k=128, num_warps=8)
    assert (p["R_RESIDENT"], p["BK"], p["num_warps"]) == (False, 128, 8)
