"""Child process of test_norm_gate_seq.py: the fused head norm x output gate (ops/fused/head_norm_gate_seq.py)
under TRITON_INTERPRET=1, one JSON line per case; the test file holds the tolerances.

Each op case compares the Triton op (forward and backward) and the unfused torch expression in the same input
dtype against the float64 unfused expression, on fresh inputs at odd sizes: h a transposed (strided) view as
the layer hands it, o a column slice of a wider tensor, with and without bias, out_dtype default and bf16,
extreme values (a constant head row, h scaled by 1e3, |o| up to 40). The model cases train a tiny xLSTMLarge
with the fused op and with the modules (loss and every parameter gradient, float32), compiled with
fullgraph=True (aot_eager, so no C++ compiler) against eager, and count the bytes autograd saves per step.
"""
from __future__ import annotations

import os

import torch
from _case_output import emit, rel

from flashxlstm import xLSTMLarge, xLSTMLargeConfig
from flashxlstm.ops.fused.head_norm_gate_seq import (head_norm_gate_linear, head_norm_gate_linear_reference,
                                                     head_norm_gate_seq, head_norm_gate_seq_reference)

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
torch.manual_seed(20261203)


def inputs(B, NH, S, DH, dtype, bias, extreme):
    h = torch.randn(B, S, NH, DH, dtype=torch.float64) * 2 + 0.5
    wide = torch.randn(B, S, NH * DH + 13, dtype=torch.float64) * 3
    if extreme:
        h[0, 1, 0] = 7.25            # a constant head row: variance 0
        h[:, 2:5] *= 1e3             # large magnitudes
        wide[:, :, 3:9] = 40.0 * torch.sign(wide[:, :, 3:9])  # saturated gates
    w = torch.randn(NH * DH, dtype=torch.float64)
    b = torch.randn(NH * DH, dtype=torch.float64) if bias else None
    return h, wide, w, b


def run(fn, h, wide, params, dtype, g):
    """fn's output and the gradients of h, wide (through the o slice) and the parameters (float32, or float64
    for the float64 run; None stays None); h as the (B, NH, S, DH) view."""
    h = h.to(dtype).clone().requires_grad_()
    wide = wide.to(dtype).clone().requires_grad_()
    pdt = dtype if dtype == torch.float64 else torch.float32
    params = [None if p is None else p.to(pdt).clone().requires_grad_() for p in params]
    y = fn(h.transpose(1, 2), wide[..., 7:7 + params[0].numel()], *params)
    y.backward(g.to(y.dtype))
    return [y.detach(), h.grad, wide.grad] + [p.grad for p in params if p is not None]


def op_case(kind: str, dtype_name: str, B, NH, S, DH, bias: bool, extreme: bool, out_bf16: bool) -> None:
    """kind "norm": head_norm_gate_seq; "linear": head_norm_gate_linear into P = 29 outputs (biases with `bias`)."""
    dtype = getattr(torch, dtype_name)
    h, wide, w, b = inputs(B, NH, S, DH, dtype, bias, extreme)
    out_dtype = torch.bfloat16 if out_bf16 else None
    names = ["y", "dh", "do", "dw"] + (["db"] if bias else [])
    if kind == "norm":
        params, P = [w, b], NH * DH
        fused_fn = lambda *a: head_norm_gate_seq(*a, eps=1e-5, out_dtype=out_dtype, backend="triton")
        ref_fn = lambda dt: (lambda *a: head_norm_gate_seq_reference(*a, eps=1e-5, out_dtype=dt))
    else:
        P = 29
        pw = torch.randn(P, NH * DH, dtype=torch.float64) / (NH * DH) ** 0.5
        pb = torch.randn(P, dtype=torch.float64) if bias else None
        params = [w, b, pw, pb]
        names += ["dproj_w"] + (["dproj_b"] if bias else [])
        fused_fn = lambda *a: head_norm_gate_linear(*a, eps=1e-5, compute_dtype=out_dtype, backend="triton")
        ref_fn = lambda dt: (lambda *a: head_norm_gate_linear_reference(*a, eps=1e-5, compute_dtype=dt))
    g = torch.randn(B, S, P, dtype=torch.float64)
    want = run(ref_fn(None), h, wide, params, torch.float64, g)
    fused = run(fused_fn, h, wide, params, dtype, g)
    unfused = run(ref_fn(out_dtype), h, wide, params, dtype, g)
    emit(f"{kind}_{dtype_name}_{B}x{NH}x{S}x{DH}_bias{int(bias)}_extreme{int(extreme)}_out{'bf16' if out_bf16 else 'auto'}",
         dtype=dtype_name, y_dtype=str(fused[0].dtype), want_y_dtype=str(unfused[0].dtype),
         fused={n: rel(a, r) for n, a, r in zip(names, fused, want)},
         unfused={n: rel(a, r) for n, a, r in zip(names, unfused, want)},
         finite=all(bool(torch.isfinite(t).all()) for t in fused))


def layout_cases() -> None:
    """One token per row (S == 1) with o and the upstream gradient laid out batch-minor, so their stride along
    S is not the row stride; and zero tokens (S == 0), where no program runs and the parameter gradients are 0."""
    B, NH, DH = 3, 2, 8
    F = NH * DH
    h = torch.randn(B, NH, 1, DH, dtype=torch.float64)
    o = torch.randn(1, B, F, dtype=torch.float64).transpose(0, 1)  # strides (F, B * F, 1)
    g = torch.randn(1, B, F, dtype=torch.float64).transpose(0, 1)
    w, b = torch.randn(F, dtype=torch.float64), torch.randn(F, dtype=torch.float64)

    def grads(fn, dtype):
        leaves = [t.detach().to(dtype, copy=True).requires_grad_() for t in (h, o, w, b)]  # o keeps its strides
        y = fn(*leaves)
        y.backward(g.to(y.dtype))
        return [y.detach()] + [t.grad for t in leaves]

    want = grads(lambda *a: head_norm_gate_seq_reference(*a, eps=1e-5), torch.float64)
    got = grads(lambda *a: head_norm_gate_seq(*a, eps=1e-5, backend="triton"), torch.float32)
    emit("layout_s1_strided", errs={n: rel(a, r) for n, a, r in zip(("y", "dh", "do", "dw", "db"), got, want)})
    he = torch.randn(2, NH, 0, DH, requires_grad=True)
    oe = torch.randn(2, 0, F, requires_grad=True)
    we, be = torch.randn(F, requires_grad=True), torch.randn(F, requires_grad=True)
    head_norm_gate_seq(he, oe, we, be, backend="triton").sum().backward()
    emit("empty_tokens", dw_max=float(we.grad.abs().max()), db_max=float(be.grad.abs().max()))


def tiny_model(backend: str) -> xLSTMLarge:
    torch.manual_seed(7)
    cfg = xLSTMLargeConfig(embedding_dim=48, num_heads=3, num_blocks=1, vocab_size=97, chunk_size=16,
                           norm_gate_backend=backend, backend="chunkwise")
    model = xLSTMLarge(cfg).train()
    with torch.no_grad():  # weights away from their initial ones, so every gradient is non-trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def loss_and_grads(model, ids, compiled: bool):
    from flashxlstm.training.lm_loss import CausalLMLoss

    module = CausalLMLoss(model)
    if compiled:  # what `flashxlstm train --compile` does, with fullgraph=True: no graph break either
        for block in model.backbone.blocks:
            block.forward = torch.compile(block.forward, backend="aot_eager", fullgraph=True)
    cu = torch.tensor([0, ids.shape[1], 2 * ids.shape[1]])
    loss, count, _ = module(ids, torch.roll(ids, -1, 1), cu)
    (loss / count).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def saved_bytes(model, ids) -> int:
    """Bytes of the distinct tensors autograd saves for the backward in one forward of the loss, parameters
    (held anyway) left out."""
    from flashxlstm.training.lm_loss import CausalLMLoss

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, alive = {}, []

    def pack(t):  # kept alive until counted: a freed storage's address may be reused by another saved tensor
        alive.append(t)
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    module = CausalLMLoss(model, ce_chunk=10**9)
    cu = torch.tensor([0, ids.shape[1], 2 * ids.shape[1]])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = module(ids, torch.roll(ids, -1, 1), cu)
    del loss
    return sum(seen.values())


def model_cases() -> None:
    ids = torch.randint(0, 97, (2, 21))
    ref_loss, ref = loss_and_grads(tiny_model("torch"), ids, compiled=False)
    for compiled in (False, True):
        loss, grads = loss_and_grads(tiny_model("triton"), ids, compiled)
        emit(f"model_{'compiled' if compiled else 'eager'}", loss=rel(loss, ref_loss),
             grads=max(rel(grads[n], ref[n]) for n in ref), names=len(grads) == len(ref))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emit("saved_bytes_bf16_autocast", torch_path=saved_bytes(tiny_model("torch"), ids),
             fused=saved_bytes(tiny_model("triton"), ids))


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    for kind in ("norm", "linear"):
        op_case(kind, "float32", 3, 1, 19, 33, bias=True, extreme=False, out_bf16=False)
        op_case(kind, "float32", 1, 2, 5, 20, bias=False, extreme=False, out_bf16=True)
        op_case(kind, "bfloat16", 2, 3, 37, 24, bias=True, extreme=True, out_bf16=False)
        op_case(kind, "bfloat16", 2, 3, 37, 24, bias=False, extreme=False, out_bf16=True)
    layout_cases()
    t1 = time.perf_counter()
    model_cases()
    emit("timing", ops_s=t1 - t0, model_s=time.perf_counter() - t1)
