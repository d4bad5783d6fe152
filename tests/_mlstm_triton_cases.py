"""Child process of test_ops_mlstm_triton.py: runs the Triton mLSTM kernels under TRITON_INTERPRET=1.

Prints one JSON line per case: {"case", "errors": {name: relative error}, "tol", "nan"}.
"""
from __future__ import annotations

import json
import os

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402

import flashxlstm.ops.mlstm_cell as M  # noqa: E402
INF = float("inf")


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def emit(case, errors, tol, nan=False, **extra):
    print(json.dumps(dict(case=case, errors=errors, tol=tol, nan=bool(nan), **extra)), flush=True)


def sequence_case(case, B, NH, S, DQK, DV, *, gate="exp", init=None, cu=None, chunk=16, dtype=torch.float32,
                  gate_range=None, masked=(), tol=2e-4, seed=0, window=2048, hold=None, cp=()):
    """window: the backward's time window in steps. hold=(value, steps): the input gate pre-activation is
    value (plus up to 1) for the first `steps` steps. cp: launch plan overrides."""
    from flashxlstm.ops.mlstm_cell.triton import function as tfn
    variant = tfn.Variant(window_steps=window, cp=cp)
    _sequence_case(case, B, NH, S, DQK, DV, gate=gate, init=init, cu=cu, chunk=chunk, dtype=dtype,
                   gate_range=gate_range, masked=masked, tol=tol, seed=seed, variant=variant, hold=hold)


def _sequence_case(case, B, NH, S, DQK, DV, *, gate, init, cu, chunk, dtype, gate_range, masked, tol, seed,
                   variant, hold=None):
    g = torch.Generator().manual_seed(seed)
    nseq = B if cu is None else len(cu) - 1
    q, k = (torch.randn(B, NH, S, DQK, generator=g) for _ in range(2))
    v = torch.randn(B, NH, S, DV, generator=g)
    if gate_range is None:
        i = torch.randn(B, NH, S, generator=g) * 2
        f = torch.randn(B, NH, S, generator=g) * 2 + 2
    else:
        i = torch.rand(B, NH, S, generator=g) * 2 * gate_range - gate_range
        f = torch.rand(B, NH, S, generator=g) * 2 * gate_range - gate_range
    for a, b in masked:
        i[..., a:b], f[..., a:b] = -INF, INF
    if hold is not None:
        i[..., :hold[1]] = hold[0] + torch.rand(B, NH, hold[1], generator=g)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    state = None
    if init == "random":
        state = (torch.randn(nseq, NH, DQK, DV, generator=g), torch.randn(nseq, NH, DQK, generator=g),
                 torch.randn(nseq, NH, generator=g))
    elif init == "empty":
        state = (torch.randn(nseq, NH, DQK, DV, generator=g), torch.randn(nseq, NH, DQK, generator=g),
                 torch.full((nseq, NH), -INF))
    cut = None if cu is None else torch.tensor(cu, dtype=torch.int32)

    def run(backend_call, cast):
        ins = [cast(t).clone().requires_grad_(True) for t in (q, k, v, i, f)]
        st = None if state is None else [cast(s).clone().requires_grad_(init == "random") for s in state]
        h, (C, n, m) = backend_call(*ins, state=None if st is None else tuple(st), input_gate=gate, cu_seqlens=cut)
        return ins, st, h, C, n, m

    from flashxlstm.ops.mlstm_cell.triton.function import mlstm_variant
    ins, st, h, C, n, m = run(lambda *a, **kw: mlstm_variant(*a, chunk_size=chunk, variant=variant, **kw), lambda t: t)
    rins, rst, hr, Cr, nr, mr = run(M.mlstm_reference, lambda t: t.double())
    w = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (hr, Cr, nr, mr)]
    finite = lambda t: torch.where(torch.isfinite(t), t, 0.0)
    loss = sum((x.double() * y).sum() for x, y in zip((h, C, n, finite(m)), w))
    loss_ref = sum((x * y).sum() for x, y in zip((hr, Cr, nr, finite(mr)), w))
    loss.backward()
    loss_ref.backward()
    errors = {"h": rel(h, hr), "C": rel(C, Cr), "n": rel(n, nr),
              "m": rel(finite(m), finite(mr)) + float((torch.isinf(m) != torch.isinf(mr)).any())}
    nan = any(torch.isnan(t).any() for t in (h, C, n))
    for name, a, b in zip("qkvif", ins, rins):
        errors["d" + name] = rel(a.grad, b.grad)
        nan |= bool(torch.isnan(a.grad).any())
    if init == "random":
        for name, a, b in zip(("dC0", "dn0", "dm0"), st, rst):
            errors[name] = rel(a.grad, b.grad)
    emit(case, errors, tol, nan)


def step_case(case, *, gate="exp", out=False, empty=False, tol=1e-6):
    g = torch.Generator().manual_seed(1)
    B, NH, DQK, DV = 3, 2, 24, 40
    q, k = (torch.randn(B, NH, DQK, generator=g) for _ in range(2))
    v = torch.randn(B, NH, DV, generator=g)
    i, f = torch.randn(B, NH, generator=g) * 3, torch.randn(B, NH, generator=g) * 3
    st = (torch.randn(B, NH, DQK, DV, generator=g), torch.randn(B, NH, DQK, generator=g), torch.randn(B, NH, generator=g))
    if empty:
        st = (st[0], st[1], torch.full((B, NH), -INF))
    if out:
        from flashxlstm.ops.mlstm_cell.triton.step import mlstm_step_triton
        bufs = (torch.full((B, NH, DV), float("nan")), torch.full_like(st[0], float("nan")),
                torch.full_like(st[1], float("nan")), torch.full_like(st[2], float("nan")))
        h, (C, n, m) = mlstm_step_triton(q, k, v, i, f, st, input_gate=gate, out=bufs)
        assert h is bufs[0] and C is bufs[1]
    else:
        h, (C, n, m) = M.mlstm_step(q, k, v, i, f, state=st, backend="triton", input_gate=gate)
    d = lambda t: t.double()
    hr, (Cr, nr, mr) = M.mlstm_step(d(q), d(k), d(v), d(i), d(f), state=tuple(map(d, st)), backend="torch",
                                    input_gate=gate)
    errors = {"h": rel(h, hr), "C": rel(C, Cr), "n": rel(n, nr), "m": rel(m, mr)}
    emit(case, errors, tol, any(torch.isnan(t).any() for t in (h, C, n, m)))


def gate_rows_case(case, gate):
    """The gate epilogue kernel (gate_rows.py) against the torch form (gates.py, float64) it replaces:
    three blocks of steps, initial stabilizers finite or -inf, the final stabilizer won by a step or by
    the initial state, masked steps."""
    from flashxlstm.ops.mlstm_cell.triton.gate_rows import gate_grads_rows
    from flashxlstm.ops.mlstm_cell.triton.gates import gate_grads
    g = torch.Generator().manual_seed(3)
    B, NH, S = 2, 3, 2500
    i = torch.randn(B, NH, S, generator=g) * 3
    f = torch.randn(B, NH, S, generator=g) * 2 + 3
    i[0, 1, 2000:], f[0, 1, 2000:] = -INF, INF
    m0 = torch.randn(B, NH, generator=g) * 4
    m0[1, 0] = -INF
    m0[1, 2] = 1000.0  # the initial state wins (F_e is about -125 here)
    dli, dlogf = torch.randn(B, NH, S, generator=g), torch.randn(B, NH, S, generator=g)
    dfinal, dmf = torch.randn(B, NH, generator=g, dtype=torch.float64), torch.randn(B, NH, generator=g)
    di, df, dm0 = gate_grads_rows(i, f, m0, dli, dlogf, dfinal, dmf, gate)
    packed = lambda t: t.transpose(0, 1).reshape(NH, -1)
    docs = lambda t: t.T.contiguous()
    cu = torch.arange(B + 1) * S
    ri, rf, rm = gate_grads(packed(i), packed(f), docs(m0), packed(dli), docs(dfinal), docs(dmf), cu, gate,
                            dlogf=packed(dlogf))
    unpack = lambda t: t.reshape(NH, B, S).transpose(0, 1)
    errors = {"di": rel(di, unpack(ri)), "df": rel(df, unpack(rf)), "dm0": rel(dm0, rm.T)}
    emit(case, errors, 1e-6, any(torch.isnan(t).any() for t in (di, df, dm0)))


def compile_case():
    """torch.compile (the default compiler) around the op, a custom op: same values and gradients as eager."""
    g = torch.Generator().manual_seed(2)
    ins = [torch.randn(1, 2, 20, 16, generator=g) for _ in range(3)] + [torch.randn(1, 2, 20, generator=g) for _ in range(2)]

    def loss(q, k, v, i, f):
        h, (C, n, m) = M.mlstm(q * 2, k, v, i, f, backend="triton", chunk_size=16)
        return h.sin().sum() + C.sum()

    grads = []
    for fn in (loss, torch.compile(loss)):
        xs = [t.clone().requires_grad_(True) for t in ins]
        out = fn(*xs)
        out.backward()
        grads.append([out.detach()] + [x.grad for x in xs])
    errors = {f"g{j}": rel(a, b) for j, (a, b) in enumerate(zip(*grads))}
    emit("compile", errors, 1e-4, any(torch.isnan(t).any() for t in grads[1]))


def main():
    emit("registry", {}, 0, sequence="triton" in M.BACKENDS, step="triton" in M.STEP_BACKENDS)
    sequence_case("s1", 2, 1, 1, 16, 16, init="random")
    sequence_case("odd_dims", 1, 2, 21, 24, 40, chunk=16)
    sequence_case("tail", 2, 2, 37, 16, 16, chunk=16)
    sequence_case("sigmoid_init", 1, 2, 40, 16, 24, gate="sigmoid", init="random", chunk=16)
    sequence_case("empty_init", 2, 1, 33, 16, 16, init="empty", chunk=32)
    sequence_case("masked_extreme", 1, 2, 45, 16, 16, init="empty", gate_range=30.0, masked=((0, 2), (3, 9), (40, 45)),
                  tol=5e-4)
    sequence_case("varlen", 1, 2, 50, 20, 16, init="random", cu=[0, 7, 30, 31, 50])
    sequence_case("varlen_sigmoid", 1, 1, 40, 16, 16, gate="sigmoid", cu=[0, 17, 40])
    sequence_case("fp16", 1, 1, 24, 16, 16, dtype=torch.float16, tol=1e-2)
    sequence_case("chunk_invariance", 1, 1, 70, 16, 16, chunk=32, init="random")
    # chunk-parallel forward: several DQK and DV blocks (80 = 64 + 16, 72 = 64 + 8), 64-step chunks, a tail
    sequence_case("cp_blocks", 1, 2, 150, 80, 72, chunk=64, init="random")
    sequence_case("cp_extreme_sigmoid", 1, 1, 70, 24, 40, gate="sigmoid", init="empty", gate_range=30.0,
                  masked=((0, 5), (30, 40)), chunk=32, tol=5e-4)
    # chunk-parallel backward (chunk_backward.py): initial-state gradients, odd dims, a tail, several
    # blocks, extreme gates with masked steps and an empty state, fp16
    sequence_case("cpb_init_odd", 2, 1, 37, 24, 40, chunk=16, init="random")
    sequence_case("cpb_blocks", 1, 2, 150, 80, 72, chunk=64, init="random")
    sequence_case("cpb_extreme_sigmoid", 1, 1, 70, 24, 40, gate="sigmoid", init="empty", gate_range=30.0,
                  masked=((0, 5), (30, 40)), chunk=32, tol=5e-4)
    sequence_case("cpb_s1", 2, 1, 1, 16, 16, init="random")
    sequence_case("cpb_fp16", 1, 1, 24, 16, 16, dtype=torch.float16, tol=1e-2)
    # fp16 at 512 steps: the log forget gradient from straddling pairs stays at the other gradients' error
    # (df 2.8e-4, dq 4.7e-4); a reverse cumulative sum of per-step terms gave df 1.4e-3
    sequence_case("cpb_fp16_long", 1, 1, 512, 64, 64, dtype=torch.float16, chunk=64, tol=7e-4)
    # the gate epilogue kernel (gate_rows.py) over more than one block of 1024 steps: the final stabilizer's
    # argmax in the second block, its gradient routed across the block boundary; sigmoid gate, masked steps
    sequence_case("cpb_rows_blocks", 1, 2, 1300, 16, 16, init="random", chunk=64)
    sequence_case("cpb_rows_blocks_sigmoid", 1, 1, 1300, 16, 16, gate="sigmoid", init="random",
                  masked=((1000, 1100),), chunk=64)
    # time windows in the chunk-parallel backward: 10 chunks of 16 in windows of 3 (the last one holds 1),
    # restarted from the forward's fp32 entry states; with masked steps and extreme gates across windows
    sequence_case("cpb_windows", 2, 1, 150, 24, 40, chunk=16, init="random", window=48)
    sequence_case("cpb_windows_extreme", 1, 2, 100, 16, 24, gate="sigmoid", init="empty", gate_range=30.0,
                  masked=((0, 5), (30, 70)), chunk=16, tol=5e-4, window=32)
    # packed documents (cu_seqlens) in the chunk-parallel kernels: every document starts its own chunks, so
    # chunks of one head have odd lengths (documents of 1, 3, 9 steps: shorter than a chunk), several DQK and
    # DV blocks, time windows whose boundaries fall inside documents (the state and its gradient carried
    # across), masked steps and extreme gates with an empty initial state, fp16, the gate epilogue kernel over
    # documents longer than one block of 1024 steps
    sequence_case("varlen_odd", 1, 2, 61, 24, 40, init="random", cu=[0, 1, 4, 33, 42, 61])
    sequence_case("varlen_blocks", 1, 1, 150, 80, 72, init="random", cu=[0, 9, 130, 150], chunk=64)
    sequence_case("varlen_windows", 1, 2, 150, 16, 24, gate="sigmoid", init="random", cu=[0, 3, 40, 41, 97, 150],
                  window=32)
    sequence_case("varlen_windows_extreme", 1, 1, 120, 16, 16, init="empty", gate_range=30.0, cu=[0, 50, 51, 120],
                  masked=((0, 5), (45, 70)), tol=5e-4, window=16)
    sequence_case("varlen_fp16", 1, 1, 70, 16, 16, dtype=torch.float16, cu=[0, 33, 70], init="random", tol=1e-2)
    # the forward's loads through tensor descriptors (plan key "desc"): chunk-sized descriptors clip the tail
    # chunk and every document's last chunk; windows inside documents
    sequence_case("desc_tail", 2, 1, 37, 24, 40, init="random", cp=(("desc", True),))
    sequence_case("desc_varlen_windows", 1, 2, 90, 16, 32, init="random", cu=[0, 3, 40, 41, 90], window=32,
                  cp=(("desc", True),))
    sequence_case("varlen_rows_blocks", 1, 1, 1300, 16, 16, init="random", cu=[0, 1100, 1300], chunk=64)
    # launch plans stepped down from the defaults (launch_plan.py): fp32 at chunk_size 256 (the H200's
    # OutOfResources case of issue 11: fewer stages, 32-wide DV blocks in the dq/dk pass), and DQK 512 in fp32
    # with packed documents
    sequence_case("plan_fp32_chunk256", 1, 1, 150, 64, 128, chunk=256, init="random")
    sequence_case("plan_dqk512_varlen", 1, 1, 20, 512, 24, chunk=256, init="random", cu=[0, 13, 20])
    # issue 12: the exp input gate near 90 for 32 steps, then ordinary steps and a partial last chunk; the
    # steps past the end were stabilized by 0 in the backward, so exp(b + m_c - 0) overflowed (NaN in df);
    # with packed documents every document's last chunk is such a partial chunk
    sequence_case("gate90_tail", 1, 2, 40, 16, 16, hold=(90.0, 32), init="random")
    sequence_case("gate90_tail_varlen", 1, 2, 40, 16, 16, hold=(90.0, 32), init="random", cu=[0, 21, 40])
    gate_rows_case("gate_rows_exp", "exp")
    gate_rows_case("gate_rows_sigmoid", "sigmoid")
    compile_case()
    step_case("step_exp")
    step_case("step_sigmoid", gate="sigmoid")
    step_case("step_out_buffers", out=True)
    step_case("step_empty_state", empty=True)
    from flashxlstm.ops.mlstm_cell.triton.step import mlstm_step_triton
    st = M.zero_state(1, 1, 16, 16, "cpu")
    try:
        mlstm_step_triton(torch.randn(1, 1, 16), torch.randn(1, 1, 16), torch.randn(1, 1, 16), torch.zeros(1, 1),
                          torch.zeros(1, 1), st, out=(torch.empty(1, 1, 16), st[0], torch.empty(1, 1, 16),
                                                      torch.empty(1, 1)))
        emit("step_overlap_error", {}, 0, message="no error raised")
    except ValueError as e:
        emit("step_overlap_error", {}, 0, message=str(e))


if __name__ == "__main__":
    main()
