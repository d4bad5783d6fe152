"""Child process of test_ops_mlstm_h_lo.py: the mLSTM Triton op's keep_h_lo option under TRITON_INTERPRET=1.

Prints one JSON line per case (the format of _mlstm_triton_cases.py):
  h_lo_{bf16,fp16}_{keep,drop}   forward and gradients against the float64 reference with a random initial state,
                                 the same inputs each way (bf16: extreme gates in [-30, 30] and masked steps)
  h_lo_layer_{keep,drop}         the gradients of q, k, v, i, f, o with h taken by the per-head LayerNorm x
                                 sigmoid(o) as in mLSTMLargeLayer, bf16, gates in [-15, 15], a zero state
  h_lo_saved_op                  bytes saved for backward by flashxlstm.ops.mlstm(backend="triton"), bf16,
                                 with and without the residual, and the size of h
  h_lo_saved_layer               the same through mLSTMLargeLayer with packed documents (cu_seqlens: the
                                 trainer's path) and the option set on the layer

Triton's interpreter multiplies bf16 tiles as the raw uint16 bits it stores them in (numpy has no bf16), so
the bf16 cases run with its dot given fp32 copies of bf16 operands (`bf16_dots`): exact products of the
bf16 values, summed in fp32, what the tensor cores compute.
"""
from __future__ import annotations

import contextlib
import os

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _mlstm_triton_cases as cases  # noqa: E402
import flashxlstm.ops.mlstm_cell as M  # noqa: E402
from flashxlstm.ops.mlstm_cell.triton import function as tfn  # noqa: E402


@contextlib.contextmanager
def bf16_dots():
    """Triton's interpreter dot with bf16 operands widened to fp32 first (see the module docstring)."""
    import triton.language as tl
    from triton.runtime import interpreter as interp

    original = interp.InterpreterBuilder.create_dot

    def widen(t):
        if t.dtype.scalar != tl.bfloat16:
            return t
        return interp.TensorHandle(interp._convert_float(t.data, tl.bfloat16, tl.float32, None).view(np.float32),
                                   tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    interp.InterpreterBuilder.create_dot = create_dot
    try:
        yield
    finally:
        interp.InterpreterBuilder.create_dot = original


def accuracy_cases():
    """bf16 with extreme gates (where the residual matters most), fp16 with ordinary gates (fp16's 10 mantissa
    bits leave little for the residual to add); the same inputs with and without the residual."""
    for dtype, name, extreme in ((torch.bfloat16, "bf16", True), (torch.float16, "fp16", False)):
        for keep in (True, False):
            with bf16_dots():
                cases._sequence_case(f"h_lo_{name}_{'keep' if keep else 'drop'}", 1, 2, 96, 32, 64, gate="exp",
                                     init="random", cu=None, chunk=32, dtype=dtype,
                                     gate_range=30.0 if extreme else None, masked=((3, 9),) if extreme else (),
                                     tol=0, seed=2, variant=tfn.Variant(keep_h_lo=keep))


LAYER_GRADS = ("dq", "dk", "dv", "di", "df", "do")


def layer_case(S, DQK, DV, dtype, seed, keep, gate_range=None, masked=()) -> dict:
    """The op as the mLSTM layer uses it in training: from a zero state, h into the per-head LayerNorm times
    sigmoid(o) (head_norm_gate_seq_reference, its weight and bias random), a loss with random weights on that
    output only (the returned state unused). Relative errors of the gradients of q, k, v, i, f, o against the
    same composition in float64 (the step-by-step recurrence)."""
    from flashxlstm.ops.fused.head_norm_gate_seq import head_norm_gate_seq_reference
    from flashxlstm.ops.mlstm_cell import mlstm_reference
    from flashxlstm.ops.mlstm_cell.triton.function import mlstm_variant

    g = torch.Generator().manual_seed(seed)
    B, NH = 1, 2
    q, k = (torch.randn(B, NH, S, DQK, generator=g) for _ in range(2))
    v = torch.randn(B, NH, S, DV, generator=g)
    if gate_range is None:
        i, f = torch.randn(B, NH, S, generator=g) * 2, torch.randn(B, NH, S, generator=g) * 2 + 2
    else:
        i, f = ((torch.rand(B, NH, S, generator=g) * 2 - 1) * gate_range for _ in range(2))
    for a, b in masked:
        i[..., a:b], f[..., a:b] = -float("inf"), float("inf")
    o = torch.randn(B, S, NH * DV, generator=g)
    weight, bias = 1 + 0.1 * torch.randn(NH * DV, generator=g), 0.1 * torch.randn(NH * DV, generator=g)
    w = torch.randn(B, S, NH * DV, generator=g, dtype=torch.float64)
    q, k, v, o = q.to(dtype), k.to(dtype), v.to(dtype), o.to(dtype)

    def run(cast, op):
        ins = [cast(t).clone().requires_grad_(True) for t in (q, k, v, i, f, o)]
        h, _ = op(*ins[:5])
        y = head_norm_gate_seq_reference(h, ins[5], cast(weight), cast(bias), 1e-6)
        (y.double() * w).sum().backward()
        return ins

    with bf16_dots():
        ours = run(lambda t: t, lambda *a: mlstm_variant(*a, chunk_size=64, variant=tfn.Variant(keep_h_lo=keep)))
    ref = run(lambda t: t.double(), lambda *a: mlstm_reference(*a))
    return {name: cases.rel(a.grad, b.grad) for name, a, b in zip(LAYER_GRADS, ours, ref)}


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for the backward while fn() runs."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def saved_op_case():
    g = torch.Generator().manual_seed(4)
    B, NH, S, DQK, DV = 2, 2, 40, 16, 32
    ins = [torch.randn(B, NH, S, d, generator=g).bfloat16().requires_grad_(True) for d in (DQK, DQK, DV)]
    ins += [torch.randn(B, NH, S, generator=g).requires_grad_(True) for _ in range(2)]
    run = lambda keep: saved_bytes(lambda: M.mlstm(*ins, backend="triton", chunk_size=16, keep_h_lo=keep))
    cases.emit("h_lo_saved_op", {}, 0, keep=run(True), drop=run(False), h_bytes=B * NH * S * DV * 2)


def saved_layer_case():
    from flashxlstm.nn.mlstm_large_layer import mLSTMLargeLayer

    torch.manual_seed(5)
    B, S, D = 2, 24, 32
    x = torch.randn(B, S, D, dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0, 10, 24, 48], dtype=torch.int32)
    out = {}
    for keep in (True, False):
        layer = mLSTMLargeLayer(D, 2, qk_dim=16, v_dim=D, chunk_size=16, backend="triton", norm_gate_backend="torch",
                                keep_h_lo=keep).to(torch.bfloat16).train()
        out["keep" if keep else "drop"] = saved_bytes(lambda: layer(x, cu_seqlens=cu))
    cases.emit("h_lo_saved_layer", {}, 0, h_bytes=B * S * D * 2, **out)


def layer_cases():
    """bf16, gates within the model's soft cap: the composition where the residual hurts most."""
    for keep in (True, False):
        errors = layer_case(96, 32, 64, torch.bfloat16, 1, keep, gate_range=15.0)
        cases.emit(f"h_lo_layer_{'keep' if keep else 'drop'}", errors, 0)


def main():
    accuracy_cases()
    layer_cases()
    saved_op_case()
    saved_layer_case()


if __name__ == "__main__":
    main()
