"""The mLSTM layer's output glue over a sequence, forward and backward: per-head LayerNorm, weight, sigmoid gate.

    y = head_norm_gate_seq(h, o, weight, bias=None, eps=1e-6, out_dtype=None, backend="auto")
    out = head_norm_gate_linear(h, o, weight, bias, proj_weight, proj_bias=None, eps=1e-6, compute_dtype=None,
                                backend="auto")        # F.linear(y, proj_weight, proj_bias), y not kept

h (B, NH, S, DH): the mLSTM op's output, read where it lies (any strides with unit stride along DH);
o (B, S, NH * DH): the output-gate pre-activation (unit stride along the last dim, any row stride, e.g. a
column slice of a stacked projection); weight, bias (NH * DH,). Returns y (B, S, NH * DH) in `out_dtype`
(default: the dtype the unfused expression gives):

    y = sigmoid(o) * (round_h(LayerNorm_DH(h)) * weight + bias)         (h transposed to (B, S, NH, DH))

with the normalised value rounded once to h's dtype (where the per-head LayerNorm module rounds) and the rest
in float32, rounded once to out_dtype. In training the output goes straight into the out-projection: with
out_dtype the autocast dtype it is written once in that dtype instead of in float32 and cast again.

Why one op for this and not the compiler's fusion: the backward writes dh in h's (B, NH, S, DH) layout, which
is the layout the mLSTM op's backward reads (no transposing copy in between), and it sums the weight and bias
gradients in the same pass that computes dh and do (per-program partial sums), where the compiled form reads
the upstream gradient, h and o a second time for them. Forward and backward are torch custom ops
(ops/custom_ops.py), opaque to torch.compile. backend "triton" runs the Triton kernels (CUDA, or the CPU
interpreter with TRITON_INTERPRET=1); "torch" the unfused expression; "auto" (ops/choose.py) Triton on CUDA
unless float64. Gradients: dh in h's dtype, do in o's dtype, dweight and dbias in their own dtypes (float32
sums); the rounding of the normalised value passes the gradient through unchanged.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ..choose import choose_backend
from ..custom_ops import LIB, link_backward

__all__ = ["head_norm_gate_seq", "head_norm_gate_seq_reference", "head_norm_gate_linear",
           "head_norm_gate_linear_reference"]


def head_norm_gate_seq_reference(h: Tensor, o: Tensor, weight: Tensor, bias: Tensor | None = None,
                                 eps: float = 1e-6, out_dtype: torch.dtype | None = None) -> Tensor:
    """The unfused expression (nn MultiHeadLayerNorm, then the sigmoid product), differentiable by autograd."""
    B, NH, S, DH = h.shape
    y = F.layer_norm(h.transpose(1, 2), (DH,), eps=eps).reshape(B, S, NH * DH) * weight
    if bias is not None:
        y = y + bias
    y = torch.sigmoid(o) * y
    return y if out_dtype is None else y.to(out_dtype)


def _check(h: Tensor, o: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if h.dim() != 4:
        raise ValueError(f"head_norm_gate_seq: h must be (B, NH, S, DH), got shape {tuple(h.shape)}")
    B, NH, S, DH = h.shape
    if tuple(o.shape) != (B, S, NH * DH):
        raise ValueError(f"head_norm_gate_seq: o must be (B, S, NH * DH) = {(B, S, NH * DH)} for h of shape "
                         f"{tuple(h.shape)}, got {tuple(o.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (NH * DH,):
            raise ValueError(f"head_norm_gate_seq: {name} must be (NH * DH,) = ({NH * DH},), got {tuple(t.shape)}")
    for name, t in (("h", h), ("o", o), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"head_norm_gate_seq: {name} must be floating point, got {t.dtype}")
        if t is not None and t.device != h.device:
            raise ValueError(f"head_norm_gate_seq: {name} is on {t.device}, h on {h.device}; expected one device")


def _use_triton(h: Tensor, backend: str) -> bool:
    from ..mlstm_cell.triton import triton_usable

    available = ("torch", "triton") if triton_usable() else ("torch",)
    return choose_backend("head_norm_gate_seq", backend, available, fallback="torch", device=h.device,
                          dtype=h.dtype) == "triton"


def _promoted(*tensors: Tensor | None) -> torch.dtype:
    """The dtype torch's type promotion gives the tensors that are present (the unfused form's result dtype)."""
    dtype = None
    for t in tensors:
        if t is not None:
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype


def _kernel_layout(h: Tensor, o: Tensor) -> tuple[Tensor, Tensor]:
    """h with unit stride in its last dim; o as rows the kernels reach with one token stride (_token_rows)."""
    if h.stride(-1) != 1:
        h = h.contiguous()
    return h, _token_rows(o)[0]


def _token_rows(x: Tensor) -> tuple[Tensor, int]:
    """x (B, S, F) and the stride r such that token t = b * S + s starts at t * r (unit stride along F).

    With S == 1 the rows are x.stride(0) apart; `contiguous()` does not normalise the stride of a size-1 dim,
    so x.stride(1) can be anything there. With B == 1 only x.stride(1) matters."""
    B, S = x.shape[0], x.shape[1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    if S == 1:
        return x, x.stride(0)
    if B > 1 and x.stride(0) != S * x.stride(1):
        x = x.contiguous()
    return x, x.stride(1)


def head_norm_gate_seq(h: Tensor, o: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-6,
                       out_dtype: torch.dtype | None = None, backend: str = "auto") -> Tensor:
    """See the module docstring."""
    _check(h, o, weight, bias)
    if not _use_triton(h, backend):
        return head_norm_gate_seq_reference(h, o, weight, bias, eps, out_dtype)
    if out_dtype is None:
        out_dtype = _promoted(h, o, weight, bias)
    h, o = _kernel_layout(h, o)
    b = weight.new_zeros(0) if bias is None else bias
    return _forward_op(h, o, weight, b, bias is not None, float(eps), out_dtype)[0]


# ---- the custom ops (Triton imported only when they run) ----

def _token_blocks(T: int, NH: int, BT: int, device: torch.device) -> int:
    """Programs along the tokens: enough to fill the GPU a few times over, each walking its share of blocks."""
    import triton

    blocks = triton.cdiv(max(T, 1), BT)
    if device.type == "cuda":
        return max(1, min(blocks, triton.cdiv(4 * _sm_count(device.index), NH)))
    return min(blocks, 2)  # the interpreter: two programs, so the partial sums are exercised


@functools.lru_cache(maxsize=None)
def _sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index
                                            ).multi_processor_count


def _layout(h: Tensor):
    import triton

    B, NH, S, DH = h.shape
    BD = triton.next_power_of_2(DH)
    BT = max(2, min(64, 4096 // BD))
    return B, NH, S, DH, BD, BT


def _fwd_impl(h, o, weight, b, has_bias, eps, out_dtype):
    from .head_norm_gate_kernels import head_norm_gate_seq_fwd_kernel

    B, NH, S, DH, BD, BT = _layout(h)
    T = B * S
    out = torch.empty((B, S, NH * DH), dtype=out_dtype, device=h.device)
    mean = torch.empty((B, S, NH), dtype=torch.float32, device=h.device)
    rstd = torch.empty_like(mean)
    if T:
        import triton

        o, o_rows = _token_rows(o)
        head_norm_gate_seq_fwd_kernel[(triton.cdiv(T, BT), NH)](
            h, o, weight, b, out, mean, rstd, T, S, NH, DH, h.stride(0), h.stride(1), h.stride(2),
            o_rows, eps, BT=BT, BD=BD, HAS_BIAS=has_bias, num_warps=4)
    return out, mean, rstd


def _bwd_impl(dout, out, mean, rstd, h, o, weight, b, has_bias):
    from .head_norm_gate_kernels import head_norm_gate_seq_bwd_kernel

    B, NH, S, DH, BD, BT = _layout(h)
    T = B * S
    dout, dout_rows = _token_rows(dout)
    o, o_rows = _token_rows(o)
    dh = torch.empty((B, NH, S, DH), dtype=h.dtype, device=h.device)
    do = torch.empty((B, S, NH * DH), dtype=o.dtype, device=o.device)
    NP = _token_blocks(T, NH, BT, h.device)
    # every program writes its whole row of partial sums (zeros where it had no tokens)
    alloc = torch.empty if T else torch.zeros  # with no tokens no program runs: the sums are zero
    dw_part = alloc((NP, NH * DH), dtype=torch.float32, device=h.device)
    db_part = alloc((NP, NH * DH), dtype=torch.float32, device=h.device) if has_bias else dw_part
    if T:
        head_norm_gate_seq_bwd_kernel[(NP, NH)](
            dout, h, o, weight, b, mean, rstd, dh, do, dw_part, db_part, T, S, NH, DH, NP,
            h.stride(0), h.stride(1), h.stride(2), o_rows, dout_rows,
            BT=BT, BD=BD, HAS_BIAS=has_bias, num_warps=8)
    dw = dw_part.sum(0).to(weight.dtype)
    db = db_part.sum(0).to(b.dtype) if has_bias else torch.zeros_like(b)
    return dh, do, dw, db


@torch.library.custom_op(f"{LIB}::head_norm_gate_seq_fwd", mutates_args=())
def _forward_op(h: Tensor, o: Tensor, weight: Tensor, b: Tensor, has_bias: bool, eps: float,
                out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    return _fwd_impl(h, o, weight, b, has_bias, eps, out_dtype)


@_forward_op.register_fake
def _(h, o, weight, b, has_bias, eps, out_dtype):
    B, NH, S, DH = h.shape
    mean = h.new_empty((B, S, NH), dtype=torch.float32)
    return h.new_empty((B, S, NH * DH), dtype=out_dtype), mean, torch.empty_like(mean)


@torch.library.custom_op(f"{LIB}::head_norm_gate_seq_bwd", mutates_args=())
def _backward_op(dout: Tensor, out: Tensor, mean: Tensor, rstd: Tensor, h: Tensor, o: Tensor, weight: Tensor,
                 b: Tensor, has_bias: bool, eps: float, out_dtype: torch.dtype
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _bwd_impl(dout, out, mean, rstd, h, o, weight, b, has_bias)


@_backward_op.register_fake
def _(dout, out, mean, rstd, h, o, weight, b, has_bias, eps, out_dtype):
    B, NH, S, DH = h.shape
    return (h.new_empty((B, NH, S, DH)), o.new_empty(o.shape),
            torch.empty_like(weight), torch.empty_like(b))


link_backward(_forward_op, _backward_op, n_outputs=1, differentiable=range(4))


# ---- with the out-projection: y is recomputed in the backward instead of kept ----

def head_norm_gate_linear_reference(h: Tensor, o: Tensor, weight: Tensor, bias: Tensor | None, proj_weight: Tensor,
                                    proj_bias: Tensor | None, eps: float = 1e-6,
                                    compute_dtype: torch.dtype | None = None) -> Tensor:
    """F.linear(head_norm_gate_seq_reference(...), proj_weight, proj_bias), everything in compute_dtype."""
    y = head_norm_gate_seq_reference(h, o, weight, bias, eps, compute_dtype)
    cast = (lambda t: t) if compute_dtype is None else (lambda t: None if t is None else t.to(compute_dtype))
    return F.linear(y, cast(proj_weight), cast(proj_bias))


def head_norm_gate_linear(h: Tensor, o: Tensor, weight: Tensor, bias: Tensor | None, proj_weight: Tensor,
                          proj_bias: Tensor | None = None, eps: float = 1e-6, compute_dtype: torch.dtype | None = None,
                          backend: str = "auto") -> Tensor:
    """out (B, S, P) = F.linear(y, proj_weight, proj_bias) with y = head_norm_gate_seq(h, o, weight, bias, eps) in
    compute_dtype (default: the promoted dtype of the inputs; under autocast pass the autocast dtype), the
    projection's weight and bias cast to compute_dtype and the matmul in it (what autocast does to a Linear).

    The backward recomputes y from h, o and the saved per-head mean and 1/std (one more read of h and o)
    instead of keeping it between forward and backward: the Linear would keep its input, NH * DH values per
    token in compute_dtype, and Inductor's compiled unfused form keeps it too (on an H200 at the large-1.3b
    layer shape, 16384 tokens: 73 MiB kept per layer against this op's 1 MiB of means and 1/stds;
    benchmarks/bench_norm_gate.py). Gradients reach h, o, weight, bias, proj_weight and proj_bias, each in its
    own dtype."""
    _check(h, o, weight, bias)
    if proj_weight.dim() != 2 or proj_weight.shape[1] != o.shape[-1]:
        raise ValueError(f"head_norm_gate_linear: proj_weight must be (P, NH * DH = {o.shape[-1]}), got "
                         f"{tuple(proj_weight.shape)}")
    if proj_bias is not None and tuple(proj_bias.shape) != (proj_weight.shape[0],):
        raise ValueError(f"head_norm_gate_linear: proj_bias must be ({proj_weight.shape[0]},), got "
                         f"{tuple(proj_bias.shape)}")
    for name, t in (("proj_weight", proj_weight), ("proj_bias", proj_bias)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"head_norm_gate_linear: {name} must be floating point, got {t.dtype}")
        if t is not None and t.device != h.device:
            raise ValueError(f"head_norm_gate_linear: {name} is on {t.device}, h on {h.device}; expected one device")
    if not _use_triton(h, backend):
        return head_norm_gate_linear_reference(h, o, weight, bias, proj_weight, proj_bias, eps, compute_dtype)
    if compute_dtype is None:
        compute_dtype = _promoted(h, o, weight, bias, proj_weight, proj_bias)
    h, o = _kernel_layout(h, o)
    b = weight.new_zeros(0) if bias is None else bias
    pb = proj_weight.new_zeros(0) if proj_bias is None else proj_bias
    return _linear_forward_op(h, o, weight, b, proj_weight, pb, bias is not None, proj_bias is not None, float(eps),
                              compute_dtype)[0]


def _project(y: Tensor, proj_weight: Tensor, pb: Tensor, has_proj_bias: bool, dt: torch.dtype) -> Tensor:
    return F.linear(y, proj_weight.to(dt), pb.to(dt) if has_proj_bias else None)


@torch.library.custom_op(f"{LIB}::head_norm_gate_linear_fwd", mutates_args=())
def _linear_forward_op(h: Tensor, o: Tensor, weight: Tensor, b: Tensor, proj_weight: Tensor, pb: Tensor,
                       has_bias: bool, has_proj_bias: bool, eps: float, compute_dtype: torch.dtype
                       ) -> tuple[Tensor, Tensor, Tensor]:
    y, mean, rstd = _fwd_impl(h, o, weight, b, has_bias, eps, compute_dtype)
    return _project(y, proj_weight, pb, has_proj_bias, compute_dtype), mean, rstd


@_linear_forward_op.register_fake
def _(h, o, weight, b, proj_weight, pb, has_bias, has_proj_bias, eps, compute_dtype):
    B, NH, S, DH = h.shape
    mean = h.new_empty((B, S, NH), dtype=torch.float32)
    return h.new_empty((B, S, proj_weight.shape[0]), dtype=compute_dtype), mean, torch.empty_like(mean)


@torch.library.custom_op(f"{LIB}::head_norm_gate_linear_bwd", mutates_args=())
def _linear_backward_op(dout: Tensor, mean: Tensor, rstd: Tensor, h: Tensor, o: Tensor, weight: Tensor, b: Tensor,
                        proj_weight: Tensor, pb: Tensor, has_bias: bool, has_proj_bias: bool, eps: float,
                        compute_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    y = _fwd_impl(h, o, weight, b, has_bias, eps, compute_dtype)[0]  # recomputed (the saved mean / rstd agree)
    dout = dout.to(compute_dtype)
    d2, y2 = dout.reshape(-1, dout.shape[-1]), y.reshape(-1, y.shape[-1])
    dproj_w = (d2.t() @ y2).to(proj_weight.dtype)
    dproj_b = d2.sum(0, dtype=torch.float32).to(pb.dtype) if has_proj_bias else torch.zeros_like(pb)
    dy = (dout @ proj_weight.to(compute_dtype))
    dh, do, dw, db = _bwd_impl(dy, None, mean, rstd, h, o, weight, b, has_bias)
    return dh, do, dw, db, dproj_w, dproj_b


@_linear_backward_op.register_fake
def _(dout, mean, rstd, h, o, weight, b, proj_weight, pb, *_):
    B, NH, S, DH = h.shape
    return (h.new_empty((B, NH, S, DH)), o.new_empty(o.shape), torch.empty_like(weight), torch.empty_like(b),
            torch.empty_like(proj_weight), torch.empty_like(pb))


def _linear_setup_context(ctx, inputs, output):
    h, o, weight, b, proj_weight, pb, has_bias, has_proj_bias, eps, compute_dtype = inputs
    ctx.constants = (has_bias, has_proj_bias, eps, compute_dtype)
    ctx.save_for_backward(output[1], output[2], h, o, weight, b, proj_weight, pb)  # not the output itself


def _linear_backward(ctx, dout, _dmean, _drstd):
    if dout is None:
        dout = ctx.saved_tensors[2].new_zeros(ctx.saved_tensors[2].shape[0], ctx.saved_tensors[2].shape[2],
                                              ctx.saved_tensors[6].shape[0])
    grads = _linear_backward_op(dout, *ctx.saved_tensors, *ctx.constants)
    return (*grads, None, None, None, None)


torch.library.register_autograd(_linear_forward_op, _linear_backward, setup_context=_linear_setup_context)
