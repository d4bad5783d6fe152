"""The `triton` backend of `flashxlstm.ops.mlstm`: launch wrappers and the custom ops.

    h, (C, n, m) = mlstm_triton(q, k, v, i, f, state, chunk_size=64, eps=1e-6, input_gate="exp",
                                cu_seqlens=None)
    h, (C, n, m) = mlstm_triton_variant(..., variant=Variant(...))   # the same op with explicit launch choices

One kernel family, chunk-parallel, for every input, packed documents (cu_seqlens) included: sequences (rows
(b, h), or documents of one head) are cut into chunks from their own start (common.py), so a chunk never
holds two documents and the state resets at every document start. Forward, two launches: the state entering
every chunk written to memory (chunk_states.py), then every chunk's outputs in parallel (chunk_output.py).
Backward: the prep kernel, then over time windows, last first (chunk_backward.py: the forward's chunk states
recomputed from the fp32 state the forward saved at the window's start, the backward state at every chunk
end, then dv and dq, dk for every chunk in parallel; the log forget gradient summed from the pairs of steps
that straddle each gate), then the gate epilogue (gate_rows.py, one launch). Gradients flow to q, k, v, i, f
and to all three parts of the initial state; the returned state carries gradients too. Inputs bf16, fp16 or
fp32 (matrix products in that precision, fp32 accumulation; fp32 inputs use 3xTF32 products), gates,
stabilizers and states fp32. float64 inputs go to the torch chunkwise form. Nothing here waits for the GPU:
the chunk numbering of cu_seqlens is built with device operations and an upper bound of the chunk count.

Launch settings come from launch_plan.py: a pure function of the input dtype, head dims, chunk_size and
the device's shared memory, so every chunk_size, dtype and head dim either launches or raises ValueError
before any launch; results do not depend on the chunk length beyond rounding. Should the compiler still
ask for more shared memory than the device has, the launch is retried with a plan for a smaller budget
(remembered per shape), so Triton's OutOfResources never reaches the caller.

Forward and backward are torch custom ops (flashxlstm::mlstm_triton_fwd / mlstm_triton_bwd, the pattern of
ops/custom_ops.py) with fake functions that derive every output shape from the arguments alone, so
torch.compile(fullgraph=True) records one call each, with no graph break and no host sync in the traced
path (the cu_seqlens values are checked inside the op, on real tensors). What each pass computes, why, and
what limits it: docs/kernels.md.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field

import torch
import triton
from torch import Tensor
from triton.runtime.errors import OutOfResources

from ...custom_ops import LIB, link_backward
from ...triton_support import interpreting, next_pow2, shared_memory_limit
from ..checks import check_cu_seqlens_values
from .chunk_backward import (mlstm_bwd_prep_kernel, mlstm_chunk_bwd_dqk_kernel, mlstm_chunk_bwd_dv_kernel,
                             mlstm_chunk_bwd_states_kernel)
from .chunk_output import mlstm_chunk_output_kernel
from .chunk_states import mlstm_chunk_states_kernel
from .gate_rows import gate_grads_rows
from .launch_plan import chunk_parallel_defaults, chunk_parallel_plan

cdiv = triton.cdiv


@dataclass(frozen=True)
class Variant:
    """Launch choices that do not change the op's math (up to rounding); the benchmarks and tests pass them.

    window_steps: the backward takes the sequence in time windows of about this many steps (last first) and
    holds the chunk and backward states of one window only (2 * B * NH * window / L * DQK * DV values in the
    input dtype; with cu_seqlens the windows run over the chunks of all documents of a head). On an H200
    (bf16, 7B heads) 2048-step windows cost 0.2 ms over 4096 and keep (8, 16, 4096, 128, 128) at TFLA's
    activation memory or below.
    cp: overrides of the launch plan (keys of launch_plan's plans), e.g. (("stages_o", 2),).
    keep_h_lo: with 16-bit inputs and gradients, the forward also stores h's rounding residual h - round(h)
    (B, NH, S, DV in the input dtype: as many bytes as h) and the backward's prep kernel sums dh . h from
    h + h_lo; False keeps only h (the residual's memory saved; the prep sums from the rounded h: the accuracy
    each way is in docs/kernels.md). No effect without gradients or with fp32 inputs.
    """
    window_steps: int = 2048
    cp: tuple = field(default=())
    keep_h_lo: bool = True

    def __post_init__(self):
        if self.window_steps < 16:
            raise ValueError(f"mlstm(triton): Variant.window_steps must be >= 16, got {self.window_steps}")
        if not isinstance(self.keep_h_lo, bool):
            raise TypeError(f"mlstm(triton): Variant.keep_h_lo must be a bool, got {self.keep_h_lo!r}")

        # the op's argument (custom op arguments are plain types), made once: torch.compile reads it as a constant
        object.__setattr__(self, "_json", json.dumps(dataclasses.asdict(self), sort_keys=True))

    def to_json(self) -> str:
        return self._json

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def from_json(text: str) -> "Variant":
        fields = json.loads(text)
        fields["cp"] = tuple(tuple(pair) for pair in fields["cp"])
        return Variant(**fields)


DEFAULT_VARIANT = Variant()
_NO_H_LO = Variant(keep_h_lo=False)  # DEFAULT_VARIANT without h's rounding residual

# The shared-memory budget each (device, dtype size, head dims, chunk) plans with: the device's limit,
# lowered for good when a compiled kernel asks for more than its estimate (see _planned).
_BUDGETS: dict[tuple, int] = {}


@functools.lru_cache(maxsize=256)
def _plan_cached(elem: int, DQK: int, DV: int, chunk: int, budget: int, overrides: tuple) -> dict:
    return chunk_parallel_plan(elem, DQK, DV, chunk, budget, dict(overrides))


def _planned(q: Tensor, DV: int, chunk: int, overrides: tuple, run):
    """run(plan) with the launch plan for q's dtype, head dims and device; on Triton's OutOfResources
    (nothing has run yet then) the budget shrinks by the reported excess and the call repeats. The budget
    only ever shrinks, so the chunk length of the plan only ever shrinks too."""
    elem, DQK = q.element_size(), q.shape[-1]
    limit = shared_memory_limit(q.device)
    key = (str(q.device), elem, DQK, DV, chunk, overrides)
    for _ in range(6):
        budget = _BUDGETS.get(key, limit)
        plan = dict(_plan_cached(elem, DQK, DV, chunk, budget, overrides))  # a fresh dict: the cache stays intact
        try:
            return run(plan)
        except OutOfResources as e:
            need, have = int(getattr(e, "required", 0) or 0), int(getattr(e, "limit", 0) or 0)
            _BUDGETS[key] = budget - max(need - have, budget // 8)
    raise ValueError(f"mlstm(triton): the kernels for DQK={DQK}, DV={DV}, chunk {chunk} with {q.dtype} inputs do not "
                     f"fit this device's {limit} bytes of shared memory; use bf16 inputs, smaller heads or "
                     f"another backend")


def _cap(maxnreg: int | None) -> dict:
    """Launch option capping registers per thread (none under the interpreter, which has no registers)."""
    return {"maxnreg": maxnreg} if maxnreg and not interpreting() else {}


def _use_descriptors(cfg: dict, *tensors: Tensor) -> bool:
    """Whether the forward passes load through tensor descriptors (plan key "desc"): TMA needs 16-byte aligned
    base addresses and row strides. Device-side descriptors take a small scratch buffer per launch from
    Triton's allocator, which is pointed at torch's caching allocator here."""
    if not cfg.get("desc") or any(t.data_ptr() % 16 or (t.shape[-1] * t.element_size()) % 16 for t in tensors):
        return False
    device = tensors[0].device
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=device))
    return True


def _precision(dtype: torch.dtype) -> str:
    return "tf32x3" if dtype == torch.float32 else "tf32"


class _Chunks:
    """The sequences the kernels walk and the numbering of their chunks of L steps (common.py).

    Without cu_seqlens: B * NH sequences (rows) of NT = ceil(S / L) chunks each, one carry slot per row.
    With cu_seqlens (B == 1, N documents): N * NH sequences; the chunks of one head are numbered through its
    documents (coff: the first chunk of each document, cdoc: the document of each chunk), one carry slot per
    head, and NT = ceil(S / L) + N chunk slots per head, an upper bound of sum_d ceil(len_d / L) that needs no
    look at the offsets (slots past the last chunk hold no steps).
    """

    def __init__(self, q: Tensor, cu: Tensor | None, L: int):
        B, NH, S, _ = q.shape
        self.S, self.NH, self.varlen = S, NH, cu is not None
        self.NT = _chunk_slots(S, cu, L)
        self.nseq = B * NH if cu is None else (cu.numel() - 1) * NH
        self.ncarry = B * NH if cu is None else NH
        if cu is None:
            self.cu = self.coff = self.cdoc = torch.zeros(2, dtype=torch.int32, device=q.device)  # unused
        else:
            cu64 = cu.to(device=q.device, dtype=torch.int64)
            nch = (cu64[1:] - cu64[:-1] + (L - 1)) // L
            coff = torch.cat([nch.new_zeros(1), nch.cumsum(0)])
            slots = torch.arange(self.NT, device=q.device)
            self.cdoc = torch.searchsorted(coff[1:], slots, right=True).clamp_(max=cu.numel() - 2).to(torch.int32)
            self.cu, self.coff = cu64.to(torch.int32), coff.to(torch.int32)

    def tables(self) -> tuple:
        return self.cu, self.coff

    def chunk_tables(self) -> tuple:
        return self.cu, self.coff, self.cdoc


def _chunk_slots(S: int, cu: Tensor | None, L: int) -> int:
    return cdiv(S, L) if cu is None else cdiv(S, L) + cu.shape[0] - 1


def _windows(q: Tensor, cu: Tensor | None, chunk: int, variant: Variant, train: bool) -> tuple[int, int, int]:
    """(steps per backward time window, windows, carry slots) of the fp32 states the forward saves for the
    backward, from the arguments alone; (0, 0, carry slots) when the whole sequence is one window (no
    gradients, or a sequence that fits one window). The window is a multiple of `chunk`, so every chunk length
    the plans take (a power of two, at most `chunk`) divides it. Without cu_seqlens window w starts at step
    w * window of every row, whatever the chunk length; with cu_seqlens it starts at chunk w * window / L0 of
    the head's chunk numbering for the default chunk length L0 (launch_plan), and the saved states serve only a
    forward and a backward that both ran with L0 (see _chunk_parallel_backward)."""
    B, NH, S, DQK = q.shape
    NC = B * NH if cu is None else NH
    window = max(chunk, variant.window_steps // chunk * chunk)
    if not train:
        return 0, 0, NC
    if cu is None:
        return (window, cdiv(S, window), NC) if S > window else (0, 0, NC)
    L0 = _default_chunk(q, chunk)
    NT, W = _chunk_slots(S, cu, L0), window // L0
    return (window, cdiv(NT, W), NC) if NT > W else (0, 0, NC)


def _default_chunk(q: Tensor, chunk: int) -> int:
    return chunk_parallel_defaults(q.shape[-1], 16, chunk, q.element_size())["L"]


def _outputs(q: Tensor, v: Tensor, cu: Tensor | None, chunk: int, variant: Variant, train: bool):
    """Shapes and dtypes of the forward op's outputs, a function of its arguments alone (the op's fake function
    and its implementation allocate from it): h, C, n, m, then the residuals hlo (h's rounding residual, empty
    unless 16-bit with gradients and variant.keep_h_lo), mstat, dstat (per step), and the fp32 states entering
    every backward window (Ew, En, Em; zero windows when the backward takes the sequence as one window)."""
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    prefix = (B if cu is None else cu.shape[0] - 1, NH)
    lo = (B, NH, S, DV) if v.dtype != torch.float32 and train and variant.keep_h_lo else (0,)
    _, NW, NC = _windows(q, cu, chunk, variant, train)
    f32 = torch.float32
    return [(q.shape[:3] + (DV,), v.dtype), (prefix + (DQK, DV), f32), (prefix + (DQK,), f32), (prefix, f32),
            (lo, v.dtype), (q.shape[:3], f32), (q.shape[:3], f32),
            ((NW, NC, DQK, DV), f32), ((NW, NC, DQK), f32), ((NW, NC), f32)]


def _empty(shapes, device) -> list[Tensor]:
    return [torch.empty(shape, dtype=dt, device=device) for shape, dt in shapes]


def _forward(q, k, v, i, f, C0, n0, m0, cu, chunk, eps, input_gate, variant, train):
    """The forward launches (see the module docstring); returns the tensors `_outputs` describes."""
    if cu is not None:
        check_cu_seqlens_values(cu, q.shape[2])
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    i, f = i.float().contiguous(), f.float().contiguous()
    C0, n0, m0 = C0.float().contiguous(), n0.float().contiguous(), m0.float().contiguous()
    DV = v.shape[-1]
    h, Cf, nf, mf, hlo, mstat, dstat, *entries = _empty(_outputs(q, v, cu, chunk, variant, train), q.device)
    store_lo = hlo.numel() > 0
    hlo_k = hlo if store_lo else h  # a pointer the kernels do not write
    window = _windows(q, cu, chunk, variant, train)[0]

    _planned(q, DV, chunk, variant.cp, lambda cfg: _chunk_parallel_forward(
        q, k, v, i, f, C0, n0, m0, h, hlo_k, Cf, nf, mf, mstat, dstat, cu, cfg, eps, input_gate, store_lo,
        window, entries if window else (), _default_chunk(q, chunk)))
    return [h, Cf, nf, mf, hlo, mstat, dstat, *entries]


def _backward(dh, dCf, dnf, dmf, h, Cf, nf, mf, hlo, mstat, dstat, Ew, En, Em, q, k, v, i, f, C0, n0, m0, cu,
              chunk, eps, input_gate, variant, train):
    """The backward launches; gradients of q, k, v, i, f, C0, n0, m0 in the inputs' dtypes."""
    dtypes = [t.dtype for t in (q, k, v, i, f, C0, n0, m0)]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    i, f = i.float().contiguous(), f.float().contiguous()
    C0, n0, m0 = C0.float().contiguous(), n0.float().contiguous(), m0.float().contiguous()
    store_lo = hlo.numel() > 0
    hlo = hlo if store_lo else h
    entries = (Ew, En, Em) if Ew.shape[0] else ()
    window = _windows(q, cu, chunk, variant, train)[0] if entries else 0
    DV = v.shape[-1]
    dev = q.device
    dh = dh.contiguous()
    # <dC, C> + <dn, n> of the returned final states (float64, one number per returned state)
    dfinal = (dCf.double() * Cf.double()).sum((-2, -1)) + (dnf.double() * nf.double()).sum(-1)
    dCf, dnf, dmf = dCf.float().contiguous(), dnf.float().contiguous(), dmf.float().contiguous()

    R = h.numel() // DV
    rz, dden = (torch.empty(q.shape[:3], dtype=torch.float32, device=dev) for _ in range(2))
    BR = 32
    mlstm_bwd_prep_kernel[(cdiv(R, BR),)](
        h, hlo, dh, mstat, dstat, rz, dden, R, eps, DV=DV, BR=BR, BVP=min(128, next_pow2(DV)),
        HAS_LO=store_lo, num_warps=4)
    dq, dk, dv, dC0, dn0, dli, dlogf, cu32 = _planned(
        q, DV, chunk, variant.cp, lambda cfg: _chunk_parallel_backward(
            q, k, v, i, f, C0, n0, m0, mstat, rz, dden, dh, dCf, dnf, cu, cfg, input_gate, entries, window,
            _default_chunk(q, chunk)))
    di, df, dm0_routed = gate_grads_rows(i, f, m0, dli, dlogf, dfinal, dmf, input_gate, cu32 if cu is not None else None)
    dm0 = (dC0 * C0).sum((-2, -1)) + (dn0 * n0).sum(-1) + dm0_routed
    return [g.to(dt) for g, dt in zip((dq, dk, dv, di, df, dC0, dn0, dm0), dtypes)]


# The op as two torch custom ops (the pattern of ops/custom_ops.py), so torch.compile records one call each and
# never traces into the launchers. Variant travels as its JSON text (custom op arguments are plain types).
_Outs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_Grads = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op(f"{LIB}::mlstm_triton_fwd", mutates_args=())
def _forward_op(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, C0: Tensor, n0: Tensor, m0: Tensor,
                cu_seqlens: Tensor | None, chunk: int, eps: float, input_gate: str, variant: str,
                train: bool) -> _Outs:
    return tuple(_forward(q, k, v, i, f, C0, n0, m0, cu_seqlens, chunk, eps, input_gate, Variant.from_json(variant),
                          train))


@_forward_op.register_fake
def _(q, k, v, i, f, C0, n0, m0, cu_seqlens, chunk, eps, input_gate, variant, train):
    return tuple(_empty(_outputs(q, v, cu_seqlens, chunk, Variant.from_json(variant), train), q.device))


@torch.library.custom_op(f"{LIB}::mlstm_triton_bwd", mutates_args=())
def _backward_op(dh: Tensor, dCf: Tensor, dnf: Tensor, dmf: Tensor, h: Tensor, Cf: Tensor, nf: Tensor, mf: Tensor,
                 hlo: Tensor, mstat: Tensor, dstat: Tensor, Ew: Tensor, En: Tensor, Em: Tensor, q: Tensor, k: Tensor,
                 v: Tensor, i: Tensor, f: Tensor, C0: Tensor, n0: Tensor, m0: Tensor, cu_seqlens: Tensor | None,
                 chunk: int, eps: float, input_gate: str, variant: str, train: bool) -> _Grads:
    return tuple(_backward(dh, dCf, dnf, dmf, h, Cf, nf, mf, hlo, mstat, dstat, Ew, En, Em, q, k, v, i, f, C0, n0,
                           m0, cu_seqlens, chunk, eps, input_gate, Variant.from_json(variant), train))


@_backward_op.register_fake
def _(dh, dCf, dnf, dmf, h, Cf, nf, mf, hlo, mstat, dstat, Ew, En, Em, q, k, v, i, f, C0, n0, m0, *_):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v, i, f, C0, n0, m0))


link_backward(_forward_op, _backward_op, n_outputs=4, differentiable=range(8))


def _chunk_parallel_forward(q, k, v, i, f, C0, n0, m0, h, hlo, Cf, nf, mf, mstat, dstat, cu, cfg, eps,
                            input_gate, store_lo, window, entries, L0):
    """Pass 1 writes the state entering every chunk, pass 2 computes all chunks' outputs in parallel.

    The chunk states live only during the forward: (B * NH or NH) * NT * DQK * DV values in the input dtype,
    plus fp32 n and m. With entries (Ew, En, Em) and `window` steps per backward window (_windows), pass 1 also
    writes the fp32 state entering every window, for the backward to restart from: without cu_seqlens at a
    chunk length that divides the window; with cu_seqlens only when the plan's chunk length is the default L0
    (the backward checks the same; see _chunk_parallel_backward).
    """
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    if entries and cu is None:
        cfg = dict(cfg, L=min(cfg["L"], window & -window))  # a chunk length that divides the window
    L = cfg["L"]
    every = window // L if entries and (cu is None or L == L0) else 0
    ch = _Chunks(q, cu, L)
    NT, NC = ch.NT, ch.ncarry
    Cs = torch.empty(NC * NT * DQK * DV, dtype=q.dtype, device=q.device)
    ns = torch.empty(NC * NT * DQK, dtype=torch.float32, device=q.device)
    ms = torch.empty(NC * NT, dtype=torch.float32, device=q.device)
    desc = _use_descriptors(cfg, q, k, v)
    _states(ch, k, v, i, f, (C0, n0, m0), (C0, n0, m0), (Cs, ns, ms), (Cf, nf, mf),
            tuple(entries) if every else (Cf, nf, mf), 0, NT, every, cfg, input_gate, desc)
    common = dict(DQK=DQK, DV=DV, L=L, NH=NH, EXP_GATE=input_gate == "exp", PREC=_precision(q.dtype),
                  IS_VARLEN=ch.varlen, DESC=desc)
    mlstm_chunk_output_kernel[(cdiv(DV, cfg["BV_o"]), NT, NC)](
        q, k, v, i, f, Cs, ns, ms, h, hlo, mstat, dstat, *ch.chunk_tables(), S, NT, DQK**-0.5, eps,
        BK=cfg["BK_o"], BV=cfg["BV_o"], STORE_LO=store_lo, num_warps=cfg["warps_o"], num_stages=cfg["stages_o"],
        **_cap(cfg["maxnreg_o"]), **common)


def _states(ch, k, v, i, f, init, carry, out, final, entries, c0, c1, every, cfg, input_gate, desc):
    """Launch pass 1 (chunk_states.py) over the window [c0, c1) of chunks: the states entering each chunk into
    out = (Cs, ns, ms) (slots carry * (c1 - c0) + gc - c0), final states into `final`, and with every > 0 the
    fp32 state entering every every-th chunk into `entries` (Ew, En, Em)."""
    DQK, DV = k.shape[-1], v.shape[-1]
    mlstm_chunk_states_kernel[(cdiv(DQK, cfg["BK_s"]), cdiv(DV, cfg["BV_s"]), ch.nseq)](
        k, v, i, f, *init, *carry, *out, *final, *entries, *ch.tables(), ch.S, ch.NT, c0, c1, c1 - c0, ch.ncarry,
        DQK=DQK, DV=DV, L=cfg["L"], BK=cfg["BK_s"], BV=cfg["BV_s"], NH=ch.NH, EXP_GATE=input_gate == "exp",
        PREC=_precision(k.dtype), EVERY=every, IS_VARLEN=ch.varlen, DESC=desc, num_warps=cfg["warps_s"],
        num_stages=cfg["stages_s"], **_cap(cfg["maxnreg_s"]))


def _chunk_parallel_backward(q, k, v, i, f, C0, n0, m0, mstat, rz, dden, dh, dCf, dnf, cu, cfg, input_gate, entries,
                             window, L0):
    """chunk_backward.py over time windows of chunks, last window first: in each, the forward's chunk states are
    recomputed (chunk_states.py, from the fp32 state the forward saved at the window's start), the backward
    state at every chunk end is walked backwards, then dv and dq, dk run for all its chunks at once. The chunk
    and backward states of one window are all that is held: 2 * (carry slots) * (window chunks) * DQK * DV
    values in the input dtype. Without saved entries (a forward that did not expect this backward) the whole
    sequence is one window. With cu_seqlens the windows are counted in chunks of the default length L0; a plan
    with another chunk length (after a shrunk shared-memory budget) takes the whole sequence as one window, and
    since the budget only shrinks, a backward with L0 implies a forward with L0, which saved the entries.
    Sequences that straddle a window boundary pass their state (forward) and gradient (backward) through
    per-carry buffers.
    """
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    if entries and cu is None:
        cfg = dict(cfg, L=min(cfg["L"], window & -window))  # a chunk length that divides the window
    L = cfg["L"]
    if cu is not None and L != L0:
        entries = ()
    ch = _Chunks(q, cu, L)
    NT, NC = ch.NT, ch.ncarry
    dev = q.device
    W = window // L if entries else NT
    NW = cdiv(NT, W)
    Cs = torch.empty(NC * W * DQK * DV, dtype=q.dtype, device=dev)
    Gs = torch.empty_like(Cs)
    ns, gns = (torch.empty(NC * W * DQK, dtype=torch.float32, device=dev) for _ in range(2))
    ms = torch.empty(NC * W, dtype=torch.float32, device=dev)
    spare = (torch.empty_like(C0), torch.empty_like(n0), torch.empty_like(m0))
    # the gradient carried across window boundaries: in from the window after, out to the one before
    g_in = (torch.empty((NC, DQK, DV), dtype=torch.float32, device=dev),
            torch.empty((NC, DQK), dtype=torch.float32, device=dev))
    g_out = (torch.empty_like(g_in[0]), torch.empty_like(g_in[1]))
    dC0, dn0 = torch.empty_like(C0), torch.empty_like(n0)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dli = torch.zeros(q.shape[:3], dtype=torch.float32, device=dev)
    dlogf = torch.zeros_like(dli)
    common = dict(DQK=DQK, DV=DV, L=L, NH=NH, EXP_GATE=input_gate == "exp", PREC=_precision(q.dtype),
                  IS_VARLEN=ch.varlen)
    scale = DQK**-0.5
    for w in reversed(range(NW)):
        c0, c1 = w * W, min(NT, (w + 1) * W)
        nt = c1 - c0
        carry = tuple(e[w] for e in entries) if entries else (C0, n0, m0)  # unused without entries (c0 == 0)
        _states(ch, k, v, i, f, (C0, n0, m0), carry, (Cs, ns, ms), spare, spare, c0, c1, 0, cfg, input_gate,
                _use_descriptors(cfg, k, v))
        mlstm_chunk_bwd_states_kernel[(cdiv(DQK, cfg["BK_s"]), cdiv(DV, cfg["BV_s"]), ch.nseq)](
            q, i, f, m0, mstat, rz, dden, dh, dCf, dnf, *g_in, Gs, gns, dC0, dn0, *g_out, *ch.tables(),
            S, NT, c0, c1, nt, scale, BK=cfg["BK_s"], BV=cfg["BV_s"], num_warps=cfg["warps_s"],
            num_stages=cfg["stages_s"], **_cap(cfg["maxnreg_g"]), **common)
        mlstm_chunk_bwd_dv_kernel[(cdiv(DV, cfg["BV_o"]), nt, NC)](
            q, k, i, f, m0, mstat, rz, dh, Gs, dv, *ch.chunk_tables(), S, c0, nt, scale, BK=cfg["BK_o"],
            BV=cfg["BV_o"], num_warps=cfg["warps_o"], num_stages=cfg["stages_o"], **common)
        mlstm_chunk_bwd_dqk_kernel[(cdiv(DQK, cfg["BK_b"]), nt, NC)](
            q, k, v, i, f, m0, mstat, rz, dden, dh, Cs, ns, ms, Gs, gns, dq, dk, dli, dlogf, *ch.chunk_tables(),
            S, c0, nt, scale, BK=cfg["BK_b"], BV=cfg["BV_b"], num_warps=cfg["warps_b"], num_stages=cfg["stages_b"],
            **common)
        g_in, g_out = g_out, g_in
    return dq, dk, dv, dC0, dn0, dli, dlogf, ch.cu


def mlstm_triton_variant(q, k, v, i, f, state, *, chunk_size=64, eps=1e-6, input_gate="exp", cu_seqlens=None,
                         variant: Variant = DEFAULT_VARIANT):
    """The op with explicit launch choices (see Variant); mlstm_triton is this with the defaults."""
    if q.dtype == torch.float64:
        from .. import BACKENDS  # the torch chunkwise form handles float64 (per document)
        return BACKENDS["chunkwise"](q, k, v, i, f, state, chunk_size=chunk_size, eps=eps,
                                     input_gate=input_gate, cu_seqlens=cu_seqlens)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"mlstm(triton): q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if int(chunk_size) < 1:
        raise ValueError(f"mlstm(triton): chunk_size must be a positive integer, got {chunk_size!r}")
    chunk = min(128, next_pow2(int(chunk_size)))
    if state is None:  # zeros, one state per sequence or document
        from ..recurrent import zero_state
        nseq = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
        state = zero_state(nseq, q.shape[1], q.shape[3], v.shape[-1], q.device, torch.float32)
    C0, n0, m0 = state
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, i, f, C0, n0, m0))
    h, C, n, m = _forward_op(q, k, v, i, f, C0, n0, m0, cu_seqlens, chunk, float(eps), input_gate, variant.to_json(),
                             train)[:4]
    return h, (C, n, m)


def mlstm_triton(q, k, v, i, f, state, *, chunk_size=64, eps=1e-6, input_gate="exp", cu_seqlens=None,
                 keep_h_lo=True):
    """The registered `triton` sequence backend (see the module docstring); keep_h_lo: Variant.keep_h_lo."""
    return mlstm_triton_variant(q, k, v, i, f, state, chunk_size=chunk_size, eps=eps, input_gate=input_gate,
                                cu_seqlens=cu_seqlens, variant=DEFAULT_VARIANT if keep_h_lo else _NO_H_LO)


def mlstm_variant(q, k, v, i, f, *, state=None, chunk_size=64, eps=1e-6, input_gate="exp", cu_seqlens=None,
                  variant: Variant = DEFAULT_VARIANT):
    """`flashxlstm.ops.mlstm(..., backend="triton")` with explicit launch choices: the private entry point the
    benchmarks and tests use to run a variant (same input checks, same default state, h in v's dtype)."""
    from ..checks import check_mlstm_inputs
    from ..recurrent import compute_dtype, zero_state

    check_mlstm_inputs(q, k, v, i, f, state, input_gate, cu_seqlens)
    if state is None:
        nseq = q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
        state = zero_state(nseq, q.shape[1], q.shape[3], v.shape[-1], q.device, compute_dtype(q))
    h, state = mlstm_triton_variant(q, k, v, i, f, state, chunk_size=chunk_size, eps=eps, input_gate=input_gate,
                                    cu_seqlens=cu_seqlens, variant=variant)
    return h.to(v.dtype), state
