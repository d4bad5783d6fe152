"""The `triton` backend of `flashxlstm.ops.mlstm`: launch wrappers and the autograd Function.

    h, (C, n, m) = mlstm_triton(q, k, v, i, f, state, chunk_size=64, eps=1e-6, input_gate="exp",
                                cu_seqlens=None)
    h, (C, n, m) = mlstm_triton_variant(..., variant=Variant(...))   # the same op with explicit launch choices

Forward: by default chunk-parallel, two launches: the state entering every chunk written to memory
(chunk_states.py), then every chunk's outputs in parallel (chunk_output.py). Packed documents
(cu_seqlens) and segments take the fused walk (forward.py: one program per sequence and DV block
carrying the state in registers), as does Variant(forward="walk"). Backward: the prep kernel
(backward.py), then by default chunk-parallel over time windows, last first (chunk_backward.py: the
forward's chunk states recomputed from the fp32 state the forward saved at the window's start, the
backward state at every chunk end, then dv and dq, dk for every chunk in parallel; the log forget
gradient summed from the pairs of steps that straddle each gate); packed documents, segments and
Variant(backward="walk") take the walks (backward.py: dkv backwards, dq forwards; the log forget
gradient as a reverse cumulative sum, ~30x less precise in bf16); then the gate epilogue (gate_rows.py,
one launch, after the chunk-parallel backward; gates.py, torch, after the walks). Gradients flow to q, k,
v, i, f and to all three parts of the initial state; the returned state carries gradients too. Inputs
bf16, fp16 or fp32 (matrix products in that precision, fp32 accumulation; fp32 inputs use 3xTF32
products), gates, stabilizers and states fp32. float64 inputs go to the torch chunkwise form.

Launch settings come from launch_plan.py: a pure function of the input dtype, head dims, chunk_size and
the device's shared memory, so every chunk_size, dtype and head dim either launches or raises ValueError
before any launch; results do not depend on the chunk length beyond rounding. Should the compiler still
ask for more shared memory than the device has, the launch is retried with a plan for a smaller budget
(remembered per shape), so Triton's OutOfResources never reaches the caller.

Sequence parallelism (Variant.segment_tokens, off by default): each sequence is cut into segments whose
initial states come from a torch pass (segments.py), and the walks run all (sequence, segment) pairs in
parallel; autograd chains the kernels' initial-state gradients through the scan. Measured slower on an
H200 where B * NH * ceil(DV / 64) already fills the GPU. Packed documents (cu_seqlens) are never cut.

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
from .backward import (mlstm_bwd_dkv_kernel, mlstm_bwd_dq_kernel, mlstm_bwd_finalize_kernel,
                       mlstm_bwd_prep_kernel)
from .chunk_backward import (mlstm_chunk_bwd_dqk_kernel, mlstm_chunk_bwd_dv_kernel,
                             mlstm_chunk_bwd_states_kernel)
from .chunk_output import mlstm_chunk_output_kernel
from .chunk_states import mlstm_chunk_states_kernel
from .forward import mlstm_fwd_kernel
from .gate_rows import gate_grads_rows
from .gates import gate_grads
from .launch_plan import chunk_parallel_plan, walk_plan
from .segments import segment_states

cdiv = triton.cdiv


@dataclass(frozen=True)
class Variant:
    """Launch choices that do not change the op's math (up to rounding); the benchmarks and tests pass them.

    forward / backward: "chunkparallel" or "walk", for sequences without cu_seqlens or segments.
    window_steps: the chunk-parallel backward takes the sequence in time windows of about this many steps
    (last first) and holds the chunk and backward states of one window only (2 * B * NH * window / L *
    DQK * DV values in the input dtype). On an H200 (bf16, 7B heads) 2048-step windows cost 0.2 ms over
    4096 and keep (8, 16, 4096, 128, 128) at TFLA's activation memory or below.
    segment_tokens: steps per segment for sequence parallelism (a multiple of 16; 0 = off), used when the
    sequence holds at least min_segments of them.
    cp / walk: overrides of the launch plans (keys of launch_plan's plans), e.g. (("stages_o", 2),).
    """
    forward: str = "chunkparallel"
    backward: str = "chunkparallel"
    window_steps: int = 2048
    segment_tokens: int = 0
    min_segments: int = 2
    cp: tuple = field(default=())
    walk: tuple = field(default=())

    def __post_init__(self):
        for name in ("forward", "backward"):
            if getattr(self, name) not in ("chunkparallel", "walk"):
                raise ValueError(f"mlstm(triton): Variant.{name} must be 'chunkparallel' or 'walk', "
                                 f"got {getattr(self, name)!r}")
        if self.window_steps < 16:
            raise ValueError(f"mlstm(triton): Variant.window_steps must be >= 16, got {self.window_steps}")

        # the op's argument (custom op arguments are plain types), made once: torch.compile reads it as a constant
        object.__setattr__(self, "_json", json.dumps(dataclasses.asdict(self), sort_keys=True))

    def to_json(self) -> str:
        return self._json

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def from_json(text: str) -> "Variant":
        fields = json.loads(text)
        for name in ("cp", "walk"):
            fields[name] = tuple(tuple(pair) for pair in fields[name])
        return Variant(**fields)


DEFAULT_VARIANT = Variant()

# The shared-memory budget each (device, dtype size, head dims, chunk) plans with: the device's limit,
# lowered for good when a compiled kernel asks for more than its estimate (see _planned).
_BUDGETS: dict[tuple, int] = {}


@functools.lru_cache(maxsize=256)
def _plan_cached(kind: str, elem: int, DQK: int, DV: int, chunk: int, budget: int, overrides: tuple) -> dict:
    make = chunk_parallel_plan if kind == "cp" else walk_plan
    return make(elem, DQK, DV, chunk, budget, dict(overrides))


def _plan(kind: str, elem: int, DQK: int, DV: int, chunk: int, budget: int, overrides: tuple) -> dict:
    """The launch plan (computed once per set of numbers; a fresh dict, so callers may not alter the cache)."""
    return dict(_plan_cached(kind, elem, DQK, DV, chunk, budget, overrides))


def _planned(kind: str, q: Tensor, DV: int, chunk: int, overrides: tuple, run):
    """run(plan) with the plan of `kind` ("cp" or "walk") for q's dtype, head dims and device; on Triton's
    OutOfResources (nothing has run yet then) the budget shrinks by the reported excess and the call repeats."""
    elem, DQK = q.element_size(), q.shape[-1]
    limit = shared_memory_limit(q.device)
    key = (kind, str(q.device), elem, DQK, DV, chunk, overrides)
    for _ in range(6):
        budget = _BUDGETS.get(key, limit)
        plan = _plan(kind, elem, DQK, DV, chunk, budget, overrides)
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


def _precision(dtype: torch.dtype) -> str:
    return "tf32x3" if dtype == torch.float32 else "tf32"


class _Spans:
    """How the kernels cut the input into spans (one program row each), and the per-span state layout.

    Packed documents: spans = documents, states (N, NH, ...). Otherwise spans = NSEG segments of TSEG
    steps per sequence (NSEG = 1: the whole sequence), states (B, NH, NSEG, ...), of which the last
    segment's final state is the one returned.
    """

    def __init__(self, q: Tensor, cu: Tensor | None, tseg: int):
        B, NH, S, _ = q.shape
        self.B, self.NH, self.S, self.varlen = B, NH, S, cu is not None
        if cu is not None:
            self.N, self.TSEG, self.NSEG = cu.numel() - 1, S, 1
            self.cu_k = cu.to(device=q.device, dtype=torch.int32).contiguous()
            self.prefix = (self.N, NH)
        else:
            self.TSEG = tseg if 0 < tseg < S else S
            self.NSEG = cdiv(S, self.TSEG)
            self.N = B * self.NSEG
            self.cu_k = torch.zeros(2, dtype=torch.int32, device=q.device)
            self.prefix = (B, NH, self.NSEG) if self.NSEG > 1 else (B, NH)

    @property
    def segmented(self) -> bool:
        return self.NSEG > 1

    def doc_offsets(self) -> Tensor:
        """(N + 1,) offsets of the spans in the packed per-head order (NH, B*S), documents in (b, s) order;
        on the CPU unless they are the caller's cu_seqlens (so that reading them does not wait for the GPU)."""
        if self.varlen:
            return self.cu_k.long()
        starts = (torch.arange(self.B)[:, None] * self.S + torch.arange(self.NSEG)[None, :] * self.TSEG).reshape(-1)
        return torch.cat([starts, starts.new_full((1,), self.B * self.S)])

    def to_docs(self, x: Tensor) -> Tensor:
        """per-span numbers in state layout -> (NH, N) in document order."""
        if self.varlen:
            return x.T
        return x.reshape(self.B, self.NH, self.NSEG).permute(1, 0, 2).reshape(self.NH, self.N)

    def from_docs(self, x: Tensor) -> Tensor:
        if self.varlen:
            return x.T
        return x.reshape(self.NH, self.B, self.NSEG).permute(1, 0, 2).reshape(self.prefix)

    def last(self, x: Tensor) -> Tensor:
        """the final state returned to the caller: the last segment's."""
        return x[:, :, -1].contiguous() if self.segmented else x

    def full(self, x: Tensor) -> Tensor:
        """a gradient of the returned final state spread over all spans (zeros except the last segment)."""
        if not self.segmented:
            return x
        out = x.new_zeros(self.prefix + x.shape[2:])
        out[:, :, -1] = x
        return out


def _outputs(q: Tensor, v: Tensor, cu: Tensor | None, chunk: int, tseg: int, variant: Variant, train: bool):
    """Shapes and dtypes of the forward op's outputs, a function of its arguments alone (the op's fake function
    and its implementation allocate from it): h, C, n, m, then the residuals hlo (h's rounding residual, empty
    unless 16-bit with gradients), mstat, dstat (per step), and the fp32 states entering every backward window
    (Ew, En, Em; zero windows unless the chunk-parallel backward will need more than one)."""
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    prefix = (B if cu is None else cu.shape[0] - 1, NH)
    lo = (B, NH, S, DV) if v.dtype != torch.float32 and train else (0,)
    window = _window(S, chunk, variant, train, cu is None and not tseg)
    NW = triton.cdiv(S, window) if window else 0
    f32 = torch.float32
    return [(q.shape[:3] + (DV,), v.dtype), (prefix + (DQK, DV), f32), (prefix + (DQK,), f32), (prefix, f32),
            (lo, v.dtype), (q.shape[:3], f32), (q.shape[:3], f32),
            ((NW, B * NH, DQK, DV), f32), ((NW, B * NH, DQK), f32), ((NW, B * NH), f32)]


def _window(S: int, chunk: int, variant: Variant, train: bool, chunk_parallel: bool) -> int:
    """Steps per time window of the chunk-parallel backward whose entry states the forward saves, or 0 (the
    whole sequence is one window: no gradients, the walks, or a sequence no longer than one window). A multiple
    of `chunk`, so that every chunk length the plans take (a power of two, at most `chunk`) divides it."""
    if not (train and chunk_parallel and variant.forward == variant.backward == "chunkparallel"):
        return 0
    window = max(chunk, variant.window_steps // chunk * chunk)
    return window if S > window else 0


def _empty(shapes, device) -> list[Tensor]:
    return [torch.empty(shape, dtype=dt, device=device) for shape, dt in shapes]


def _forward(q, k, v, i, f, C0, n0, m0, cu, chunk, eps, input_gate, tseg, variant, train):
    """The forward launches (see the module docstring); returns the tensors `_outputs` describes."""
    if cu is not None:
        check_cu_seqlens_values(cu, q.shape[2])
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    i, f = i.float().contiguous(), f.float().contiguous()
    C0, n0, m0 = C0.float().contiguous(), n0.float().contiguous(), m0.float().contiguous()
    DQK, DV = q.shape[-1], v.shape[-1]
    sp = _Spans(q, cu, tseg)
    h, Cl, nl, ml, hlo, mstat, dstat, *entries = _empty(_outputs(q, v, cu, chunk, tseg, variant, train), q.device)
    store_lo = hlo.numel() > 0
    hlo_k = hlo if store_lo else h  # a pointer the kernels do not write
    Cf = torch.empty(sp.prefix + (DQK, DV), dtype=torch.float32, device=q.device)
    nf = torch.empty(sp.prefix + (DQK,), dtype=torch.float32, device=q.device)
    mf = torch.empty(sp.prefix, dtype=torch.float32, device=q.device)
    if variant.forward == "chunkparallel" and not sp.varlen and not sp.segmented:
        window = _window(q.shape[2], chunk, variant, train, True)
        _planned("cp", q, DV, chunk, variant.cp, lambda cfg: _chunk_parallel_forward(
            q, k, v, i, f, C0, n0, m0, h, hlo_k, Cf, nf, mf, mstat, dstat, cfg, eps, input_gate, store_lo,
            window, entries if window else ()))
    else:
        def walk(cfg):
            mlstm_fwd_kernel[(sp.N * sp.NH, cdiv(DV, cfg["BV"]))](
                q, k, v, i, f, C0, n0, m0, h, hlo_k, Cf, nf, mf, mstat, dstat, sp.cu_k, sp.S, sp.TSEG, sp.NSEG,
                DQK**-0.5, eps, NH=sp.NH, DQK=DQK, DV=DV, L=cfg["L"], BK=cfg["BK"], BV=cfg["BV"],
                EXP_GATE=input_gate == "exp", IS_VARLEN=sp.varlen, PREC=_precision(q.dtype), STORE_LO=store_lo,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            )
        _planned("walk", q, DV, chunk, variant.walk, walk)
    Cl.copy_(sp.last(Cf))
    nl.copy_(sp.last(nf))
    ml.copy_(sp.last(mf))
    return [h, Cl, nl, ml, hlo, mstat, dstat, *entries]


def _backward(dh, dCf, dnf, dmf, h, Cf, nf, mf, hlo, mstat, dstat, Ew, En, Em, q, k, v, i, f, C0, n0, m0, cu,
              chunk, eps, input_gate, tseg, variant, train):
    """The backward launches; gradients of q, k, v, i, f, C0, n0, m0 in the inputs' dtypes."""
    dtypes = [t.dtype for t in (q, k, v, i, f, C0, n0, m0)]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    i, f = i.float().contiguous(), f.float().contiguous()
    C0, n0, m0 = C0.float().contiguous(), n0.float().contiguous(), m0.float().contiguous()
    sp = _Spans(q, cu, tseg)
    store_lo = hlo.numel() > 0
    hlo = hlo if store_lo else h
    entries = (Ew, En, Em) if Ew.shape[0] else ()
    window = _window(q.shape[2], chunk, variant, train, not sp.varlen and not sp.segmented) if entries else 0
    NH = sp.NH
    DV = v.shape[-1]
    dev = q.device
    dh = dh.contiguous()
    # <dC, C> + <dn, n> of the returned final states (float64, one number per returned state)
    dfinal = (dCf.double() * Cf.double()).sum((-2, -1)) + (dnf.double() * nf.double()).sum(-1)
    dCf = sp.full(dCf.float()).contiguous()
    dnf = sp.full(dnf.float()).contiguous()
    dmf = sp.full(dmf.float())
    dfinal = sp.full(dfinal)

    R = h.numel() // DV
    rz, dden, dfo = (torch.empty(q.shape[:3], dtype=torch.float32, device=dev) for _ in range(3))
    BR = 32
    mlstm_bwd_prep_kernel[(cdiv(R, BR),)](
        h, hlo, dh, mstat, dstat, rz, dden, dfo, R, eps, DV=DV, BR=BR, BVP=min(128, next_pow2(DV)),
        HAS_LO=store_lo, num_warps=4)

    if variant.backward == "chunkparallel" and not sp.varlen and not sp.segmented:
        grads = _planned("cp", q, DV, chunk, variant.cp, lambda cfg: _chunk_parallel_backward(
            q, k, v, i, f, C0, n0, m0, mstat, rz, dden, dh, dCf, dnf, cfg, input_gate, entries, window))
    else:
        grads = _planned("walk", q, DV, chunk, variant.walk, lambda cfg: _walk_backward(
            q, k, v, i, f, C0, n0, m0, mstat, rz, dden, dfo, dh, dCf, dnf, sp, cfg, input_gate))
    dq, dk, dv, dC0, dn0, dli, forget = grads

    if "dlogf" in forget and not sp.varlen and not sp.segmented:  # one launch (gate_rows.py)
        di, df, dm0_routed = gate_grads_rows(i, f, m0, dli, forget["dlogf"], dfinal, dmf, input_gate)
    else:
        S = sp.S
        packed = lambda t: t.transpose(0, 1).reshape(NH, -1)  # (B, NH, S) -> (NH, B*S)
        unpack = lambda t: t.reshape(NH, -1, S).transpose(0, 1).to(torch.float32)
        di, df, dm0_routed = gate_grads(packed(i), packed(f), sp.to_docs(m0), packed(dli), sp.to_docs(dfinal),
                                        sp.to_docs(dmf), sp.doc_offsets(), input_gate,
                                        **{k: packed(t) for k, t in forget.items()})
        di, df, dm0_routed = unpack(di), unpack(df), sp.from_docs(dm0_routed)
    dm0 = (dC0 * C0).sum((-2, -1)) + (dn0 * n0).sum(-1) + dm0_routed.float()
    return [g.to(dt) for g, dt in zip((dq, dk, dv, di, df, dC0, dn0, dm0), dtypes)]


# The op as two torch custom ops (the pattern of ops/custom_ops.py), so torch.compile records one call each and
# never traces into the launchers. Variant travels as its JSON text (custom op arguments are plain types).
_Outs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_Grads = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op(f"{LIB}::mlstm_triton_fwd", mutates_args=())
def _forward_op(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, C0: Tensor, n0: Tensor, m0: Tensor,
                cu_seqlens: Tensor | None, chunk: int, eps: float, input_gate: str, tseg: int, variant: str,
                train: bool) -> _Outs:
    return tuple(_forward(q, k, v, i, f, C0, n0, m0, cu_seqlens, chunk, eps, input_gate, tseg,
                          Variant.from_json(variant), train))


@_forward_op.register_fake
def _(q, k, v, i, f, C0, n0, m0, cu_seqlens, chunk, eps, input_gate, tseg, variant, train):
    return tuple(_empty(_outputs(q, v, cu_seqlens, chunk, tseg, Variant.from_json(variant), train), q.device))


@torch.library.custom_op(f"{LIB}::mlstm_triton_bwd", mutates_args=())
def _backward_op(dh: Tensor, dCf: Tensor, dnf: Tensor, dmf: Tensor, h: Tensor, Cf: Tensor, nf: Tensor, mf: Tensor,
                 hlo: Tensor, mstat: Tensor, dstat: Tensor, Ew: Tensor, En: Tensor, Em: Tensor, q: Tensor, k: Tensor,
                 v: Tensor, i: Tensor, f: Tensor, C0: Tensor, n0: Tensor, m0: Tensor, cu_seqlens: Tensor | None,
                 chunk: int, eps: float, input_gate: str, tseg: int, variant: str, train: bool) -> _Grads:
    return tuple(_backward(dh, dCf, dnf, dmf, h, Cf, nf, mf, hlo, mstat, dstat, Ew, En, Em, q, k, v, i, f, C0, n0,
                           m0, cu_seqlens, chunk, eps, input_gate, tseg, Variant.from_json(variant), train))


@_backward_op.register_fake
def _(dh, dCf, dnf, dmf, h, Cf, nf, mf, hlo, mstat, dstat, Ew, En, Em, q, k, v, i, f, C0, n0, m0, *_):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v, i, f, C0, n0, m0))


link_backward(_forward_op, _backward_op, n_outputs=4, differentiable=range(8))


def _walk_backward(q, k, v, i, f, C0, n0, m0, mstat, rz, dden, dfo, dh, dCf, dnf, sp, cfg, input_gate):
    """The walks (backward.py): dkv backwards and dq forwards, one program per span and DV block."""
    DQK, DV = q.shape[-1], v.shape[-1]
    BK = cfg["BK"]
    R = q.numel() // DQK
    BR = 32
    NH = sp.NH
    zeros = lambda shape: torch.zeros(shape, dtype=torch.float32, device=q.device)
    dk32, dq32, dli = zeros(q.shape), zeros(q.shape), zeros(q.shape[:3])
    dv = torch.empty_like(v)
    dC0, dn0 = zeros(C0.shape), zeros(n0.shape)
    grid = (sp.N * NH, cdiv(DV, cfg["BV"]))
    common = dict(NH=NH, DQK=DQK, DV=DV, L=cfg["L"], BK=BK, BV=cfg["BV"], EXP_GATE=input_gate == "exp",
                  IS_VARLEN=sp.varlen, PREC=_precision(q.dtype), num_warps=cfg["num_warps"],
                  num_stages=cfg["num_stages"])
    bounds = (sp.cu_k, sp.S, sp.TSEG, sp.NSEG, DQK**-0.5)
    mlstm_bwd_dkv_kernel[grid](q, k, v, i, f, m0, mstat, rz, dden, dh, dCf, dnf, dk32, dli, dv, dC0, dn0,
                               *bounds, **common)
    mlstm_bwd_dq_kernel[grid](k, v, i, f, C0, n0, m0, mstat, rz, dden, dh, dq32, *bounds, **common)

    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dF = torch.empty_like(rz)
    mlstm_bwd_finalize_kernel[(cdiv(R, BR),)](dk32, dq32, dk, dq, dfo, dli, dF, R, DQK=DQK, BR=BR,
                                                    BK=BK, num_warps=4)
    del dk32, dq32
    return dq, dk, dv, dC0, dn0, dli, {"dF": dF}


def _chunk_parallel_backward(q, k, v, i, f, C0, n0, m0, mstat, rz, dden, dh, dCf, dnf, cfg, input_gate, entries,
                             window):
    """chunk_backward.py over time windows, last window first: in each, the forward's chunk states are
    recomputed (chunk_states.py, from the fp32 state the forward saved at the window's start), the backward
    state at every chunk end is walked backwards from the gradient leaving the window, then dv and dq, dk
    run for all its chunks at once. The chunk and backward states of one window are all that is held:
    2 * B * NH * (window chunks) * DQK * DV values in the input dtype. Without saved entries (a forward
    that did not expect this backward) the whole sequence is one window. `window`: the steps per window
    of the saved entries (a multiple of the forward's chunk length; the chunk length here may be smaller).
    """
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    if entries:
        cfg = dict(cfg, L=min(cfg["L"], window & -window))  # a chunk length that divides the window
    L, BH = cfg["L"], B * NH
    NT = cdiv(S, L)
    dev = q.device
    if entries:
        Ew, En, Em = entries
        W = window // L
    else:
        Ew, En, Em, W = C0.reshape((1, BH) + C0.shape[2:]), n0.reshape(1, BH, DQK), m0.reshape(1, BH), NT
    NW = Ew.shape[0]
    Cs = torch.empty(BH * W * DQK * DV, dtype=q.dtype, device=dev)
    Gs = torch.empty_like(Cs)
    ns, gns = (torch.empty(BH * W * DQK, dtype=torch.float32, device=dev) for _ in range(2))
    ms = torch.empty(BH * W, dtype=torch.float32, device=dev)
    spare = (torch.empty_like(C0), torch.empty_like(n0), torch.empty_like(m0))
    # the gradient leaving the current window, and the one entering it (ping-pong)
    G_out, gn_out = dCf.reshape(C0.shape), dnf.reshape(n0.shape)
    G_in, gn_in = torch.empty_like(C0), torch.empty_like(n0)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dli = torch.zeros(q.shape[:3], dtype=torch.float32, device=dev)
    dlogf = torch.zeros_like(dli)
    common = dict(DQK=DQK, DV=DV, L=L, EXP_GATE=input_gate == "exp", PREC=_precision(q.dtype))
    scale = DQK**-0.5
    for w in reversed(range(NW)):
        c_first = w * W
        nt = min(W, NT - c_first)
        cs, ns_w, ms_w = Cs[: BH * nt * DQK * DV], ns[: BH * nt * DQK], ms[: BH * nt]
        gs, gns_w = Gs[: BH * nt * DQK * DV], gns[: BH * nt * DQK]
        chunk_states(k, v, i, f, Ew[w], En[w], Em[w], *spare, cfg, input_gate, out=(cs, ns_w, ms_w),
                     c_first=c_first, n_chunks=nt)
        mlstm_chunk_bwd_states_kernel[(cdiv(DQK, cfg["BK_s"]), cdiv(DV, cfg["BV_s"]), BH)](
            q, i, f, m0, mstat, rz, dden, dh, G_out, gn_out, gs, gns_w, G_in, gn_in, S, nt, c_first, scale,
            BK=cfg["BK_s"], BV=cfg["BV_s"], num_warps=cfg["warps_s"], num_stages=cfg["stages_s"],
            **_cap(cfg["maxnreg_g"]), **common)
        mlstm_chunk_bwd_dv_kernel[(cdiv(DV, cfg["BV_o"]), nt, BH)](
            q, k, i, f, m0, mstat, rz, dh, gs, dv, S, nt, c_first, scale, BK=cfg["BK_o"], BV=cfg["BV_o"],
            num_warps=cfg["warps_o"], num_stages=cfg["stages_o"], **common)
        mlstm_chunk_bwd_dqk_kernel[(cdiv(DQK, cfg["BK_b"]), nt, BH)](
            q, k, v, i, f, m0, mstat, rz, dden, dh, cs, ns_w, ms_w, gs, gns_w, dq, dk, dli, dlogf, S, nt, c_first,
            scale, BK=cfg["BK_b"], BV=cfg["BV_b"], num_warps=cfg["warps_b"], num_stages=cfg["stages_b"], **common)
        if w == NW - 1:  # the caller's dCf, dnf are read-only: from here on ping-pong between own buffers
            G_out, gn_out = torch.empty_like(C0), torch.empty_like(n0)
        G_out, G_in, gn_out, gn_in = G_in, G_out, gn_in, gn_out
    return dq, dk, dv, G_out, gn_out, dli, {"dlogf": dlogf}


def _chunk_parallel_forward(q, k, v, i, f, C0, n0, m0, h, hlo, Cf, nf, mf, mstat, dstat, cfg, eps,
                            input_gate, store_lo, window, entries):
    """Pass 1 writes the state entering every chunk, pass 2 computes all chunks' outputs in parallel.

    The chunk states live only during the forward: B * NH * ceil(S / L) * DQK * DV values in the input
    dtype, plus fp32 n and m. With window > 0 (the chunk-parallel backward will run over windows of that many
    steps), pass 1 also writes the fp32 state entering every window into `entries` (Ew, En, Em), for the
    backward to restart from.
    """
    if window:
        cfg = dict(cfg, L=min(cfg["L"], window & -window))  # a chunk length that divides the window
    Cs, ns, ms = chunk_states(k, v, i, f, C0, n0, m0, Cf, nf, mf, cfg, input_gate, entries=entries,
                              every=window // cfg["L"] if window else 0)
    chunk_outputs(q, k, v, i, f, Cs, ns, ms, h, hlo, mstat, dstat, cfg, eps, input_gate, store_lo)


def chunk_states(k, v, i, f, C0, n0, m0, Cf, nf, mf, cfg, input_gate, *, out=None, c_first=0, n_chunks=None,
                 entries=(), every=0):
    """Launch pass 1 (chunk_states.py) over n_chunks chunks from c_first (default: all) and return the
    states entering each (BH, n_chunks, ...), in `out` (flat buffers) when given. With every > 0, also
    write the fp32 state entering every every-th chunk into `entries` (Ew, En, Em)."""
    B, NH, S, DQK = k.shape
    DV = v.shape[-1]
    L, BH = cfg["L"], B * NH
    NT = cdiv(S, L) - c_first if n_chunks is None else n_chunks
    if out is None:
        out = (torch.empty(BH * NT * DQK * DV, dtype=k.dtype, device=k.device),
               torch.empty(BH * NT * DQK, dtype=torch.float32, device=k.device),
               torch.empty(BH * NT, dtype=torch.float32, device=k.device))
    Cs, ns, ms = out[0].view(BH, NT, DQK, DV), out[1].view(BH, NT, DQK), out[2].view(BH, NT)
    Ew, En, Em = entries if every else (Cf, nf, mf)  # unused without every
    mlstm_chunk_states_kernel[(cdiv(DQK, cfg["BK_s"]), cdiv(DV, cfg["BV_s"]), BH)](
        k, v, i, f, C0, n0, m0, Cs, ns, ms, Cf, nf, mf, Ew, En, Em, S, NT, c_first, DQK=DQK, DV=DV, L=L,
        BK=cfg["BK_s"], BV=cfg["BV_s"], EXP_GATE=input_gate == "exp", PREC=_precision(k.dtype), EVERY=every,
        num_warps=cfg["warps_s"], num_stages=cfg["stages_s"], **_cap(cfg["maxnreg_s"]))
    return Cs, ns, ms


def chunk_outputs(q, k, v, i, f, Cs, ns, ms, h, hlo, mstat, dstat, cfg, eps, input_gate, store_lo):
    """Launch pass 2 (chunk_output.py): h (and h_lo), m_t and den_t for every chunk in parallel."""
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    NT = Cs.shape[1]
    mlstm_chunk_output_kernel[(cdiv(DV, cfg["BV_o"]), NT, B * NH)](
        q, k, v, i, f, Cs, ns, ms, h, hlo, mstat, dstat, S, NT, DQK**-0.5, eps, DQK=DQK, DV=DV, L=cfg["L"],
        BK=cfg["BK_o"], BV=cfg["BV_o"], EXP_GATE=input_gate == "exp", PREC=_precision(q.dtype),
        STORE_LO=store_lo, num_warps=cfg["warps_o"], num_stages=cfg["stages_o"], **_cap(cfg["maxnreg_o"]))


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
    C0, n0, m0 = state
    tseg = segment_length(q, cu_seqlens, variant)
    if tseg:
        C0, n0, m0 = segment_states(k, v, i, f, C0, n0, m0, tseg, input_gate)
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, i, f, C0, n0, m0))
    h, C, n, m = _forward_op(q, k, v, i, f, C0, n0, m0, cu_seqlens, chunk, float(eps), input_gate, tseg,
                             variant.to_json(), train)[:4]
    return h, (C, n, m)


def mlstm_triton(q, k, v, i, f, state, *, chunk_size=64, eps=1e-6, input_gate="exp", cu_seqlens=None):
    """The registered `triton` sequence backend (see the module docstring)."""
    return mlstm_triton_variant(q, k, v, i, f, state, chunk_size=chunk_size, eps=eps, input_gate=input_gate,
                                cu_seqlens=cu_seqlens)


def segment_length(q: Tensor, cu_seqlens: Tensor | None, variant: Variant = DEFAULT_VARIANT) -> int:
    """Steps per segment for sequence parallelism (segments.py), or 0 for one walk per sequence.

    variant.segment_tokens steps per segment, rounded up to a multiple of 16 (0 switches segments off), used
    when the sequence holds at least variant.min_segments of them. Packed documents are not cut.
    """
    tokens = int(variant.segment_tokens)
    if cu_seqlens is not None or tokens <= 0:
        return 0
    tokens = -(-tokens // 16) * 16
    return tokens if q.shape[2] >= variant.min_segments * tokens else 0


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
