"""The `triton` backend of `flashxlstm.ops.mlstm`: launch wrappers and the autograd Function.

    h, (C, n, m) = mlstm_triton(q, k, v, i, f, state, chunk_size=64, eps=1e-6, input_gate="exp",
                                cu_seqlens=None)

Forward (FORWARD["variant"]): by default chunk-parallel, two launches: the state entering every chunk
written to memory (chunk_states.py), then every chunk's outputs in parallel (chunk_output.py). Packed
documents (cu_seqlens) and segments keep the fused walk (forward.py: one program per sequence and DV
block carrying the state in registers), as does FORWARD["variant"] = "walk". Backward: the prep kernel
(backward.py), then by default chunk-parallel over time windows, last first (chunk_backward.py: the
forward's chunk states recomputed from the fp32 state the forward saved at the window's start, the
backward state at every chunk end, then dv and dq, dk for every chunk in parallel; the log forget
gradient summed from the pairs of steps that straddle each gate); packed documents, segments and
BACKWARD["variant"] = "walk" take the walks (backward.py: dkv backwards, dq forwards; the log forget
gradient as a reverse cumulative sum, ~30x less precise in bf16); then the gate epilogue (gate_rows.py,
one launch, after the chunk-parallel backward; gates.py, torch, after the walks). Gradients flow to q, k, v, i, f and to all three parts of the initial
state; the returned state carries gradients too. Inputs bf16, fp16 or fp32 (matrix products in that precision, fp32
accumulation; fp32 inputs use 3xTF32 products), gates, stabilizers and states fp32. float64 inputs
go to the torch chunkwise form. The chunk-parallel forward uses chunks of chunk_size rounded up to a
power of two (16 to 128) steps, the walks min(that, 32); results do not depend on the chunk size
beyond rounding.

Sequence parallelism (opt-in, `SEGMENT`): each sequence is cut into segments whose initial states come
from a torch pass (segments.py: per-segment summaries by batched matmul, then a scan over segments),
and the same kernels walk all (sequence, segment) pairs in parallel; autograd chains the kernels'
initial-state gradients through the scan. Packed documents (cu_seqlens) are never cut.

torch.compile does not trace into the op: it graph-breaks around it (torch.compiler.disable) and the
autograd Function runs as is, so compiled models keep these kernels and their gradients.

Launch settings live in `_cp_config` (chunk-parallel passes) and `_fwd_config` / `_bwd_config` (walks);
`CP_CONFIG` / `FWD_CONFIG` / `BWD_CONFIG` (keyed by the padded head dim) override them, which is how
benchmarks/bench_mlstm.py --cp-sweep / --sweep compare variants. What each pass computes, why, and what limits
it: docs/kernels.md.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from .backward import (mlstm_bwd_dkv_kernel, mlstm_bwd_dq_kernel, mlstm_bwd_finalize_kernel,
                       mlstm_bwd_prep_kernel)
from .chunk_backward import (mlstm_chunk_bwd_dqk_kernel, mlstm_chunk_bwd_dv_kernel,
                             mlstm_chunk_bwd_states_kernel)
from .chunk_output import mlstm_chunk_output_kernel
from .chunk_states import mlstm_chunk_states_kernel
from .common import next_pow2
from .forward import mlstm_fwd_kernel
from .gate_rows import gate_grads_rows
from .gates import gate_grads
from .segments import segment_states

# Launch settings; the benchmark may override them to compare variants. Keys: (BK,) -> dict
FWD_CONFIG: dict = {}
BWD_CONFIG: dict = {}
# Sequence parallelism (segments.py): steps per segment (0: off) and the fewest segments worth cutting
# into. Off by default: on an H200 the 7B-head shape (B 8) ran 19% slower with 1024-step segments
# (fw 12.4 vs 10.4 ms, fwbw 58.1 vs 49.1 ms) because the walk already fills every SM with one program
# (255 registers x 256 threads) for several waves; segments only add programs. Expected to pay when
# B * NH * ceil(DV / 64) < the SM count (batch-1 prefill), not measured yet (docs/kernels.md).
SEGMENT: dict = {"tokens": 0, "min_segments": 2}


# Which forward runs for sequences without cu_seqlens and without segments: "chunkparallel" (chunk
# states to memory, then all chunks' outputs in parallel: chunk_states.py, chunk_output.py) or "walk"
# (one fused program per sequence and DV block: forward.py). Packed documents and segments always walk.
# H200, bf16: chunk-parallel fw 2.91 ms at the 7B heads (B 8, T 8192; TFLA xl_chunk 4.99), the walk 10.3
# (benchmarks/README.md).
FORWARD: dict = {"variant": "chunkparallel"}
# Which backward runs where the chunk-parallel forward may: "chunkparallel" (chunk_backward.py) or "walk"
# (backward.py). window_steps: the chunk-parallel backward takes the sequence in time windows of this
# many steps (last first) and holds the chunk and backward states of one window only
# (2 * B * NH * window/64 * DQK * DV values in the input dtype; see _chunk_parallel_backward).
# H200, bf16, fw+bw at the 7B heads (benchmarks/README.md): 13.1 ms and 4.11 GB of activations with
# 2048-step windows (TFLA xl_chunk 18.3 ms, 6.53 GB); the walks 41.7 ms, 3.91 GB (session 2). 4096-step
# windows were 0.2 ms faster there but leave (8, 16, 4096, 128, 128) without windows, above TFLA's memory.
BACKWARD: dict = {"variant": "chunkparallel", "window_steps": 2048}
# Launch settings of the chunk-parallel forward and backward, keyed by the padded head dim; overrides for the benchmark.
CP_CONFIG: dict = {}


def _cp_config(BK: int, DV: int, chunk: int) -> dict:
    # measured on an H200 (call 1): 4 warps beat 8, BV 64 beat 128, 3 pipeline stages beat 1 and 2 (3.90 vs
    # 4.39 / 4.59 ms at the 7B heads); L = 128 halves the states pass but slows the output pass more.
    # Output pass: BV 128 at 8 warps, where it needs 125-128 registers (2 programs of 8 warps per SM; BV 64
    # at 4 warps: 165, 3 of 4; BV 64 at 8 warps was 1.4x slower): 1.56 -> 1.35 ms at the 7B heads, 1.08 ->
    # 1.01 at (8, 16, 8192, 128, 256), 0.29 -> 0.27 at (8, 16, 4096, 128, 128) (H200, mlstm_forward_sweep.py
    # call B, benchmarks/results/mlstm_forward_sweep.md). BV_o / warps_o also launch the backward's dv pass
    # (123-125 registers, no spill in the sm_90 report at BV 128, 8 warps; its time not yet measured).
    # States pass: a cap of 128 registers per thread (4 programs per SM instead of 2, 24-28 B spill):
    # 1.83 -> 1.58 ms at the 7B heads, -7% / -10% on the other head dims (call B, same file).
    # Backward (_s, _o also serve its state and dv passes; _b its dq/dk pass): dq/dk at 4 warps and 3
    # stages (88 B spill, 2 programs per SM) beat 8 warps (206 registers, 1 per SM): 5.25 -> 2.70 ms at the
    # 7B heads, 3.68 -> 2.07 at (8, 16, 8192, 128, 256), 2.91 -> 1.78 at (4, 16, 16384, 128, 128) (H200,
    # bench_mlstm.py --bw-sweep, benchmarks/README.md). The backward state walk capped at
    # 128 registers (4 programs per SM instead of 2): 2.59 -> 2.45 ms at the 7B heads, 0.46 -> 0.41 at
    # (8, 16, 4096, 128, 128) (168: 2.33 / 0.43); the states-pass cap is neutral inside the backward.
    # maxnreg_o: the output pass's cap (none: a cap of 128 at 2 stages was slower in call B).
    BV_o = min(128, next_pow2(DV))
    cfg = {"L": chunk, "BK_s": min(64, BK), "BV_s": min(64, next_pow2(DV)), "warps_s": 4, "stages_s": 3,
           "maxnreg_s": 128, "maxnreg_g": 128, "maxnreg_o": None,
           "BK_o": min(64, BK), "BV_o": BV_o, "warps_o": 8 if BV_o >= 128 else 4, "stages_o": 3,
           "BK_b": min(64, BK), "BV_b": min(64, next_pow2(DV)), "warps_b": 4, "stages_b": 3}
    cfg.update(CP_CONFIG.get(BK, {}))
    return cfg


def _cap(maxnreg: int | None) -> dict:
    """Launch option capping registers per thread (none under the interpreter, which has no registers)."""
    return {"maxnreg": maxnreg} if maxnreg and os.environ.get("TRITON_INTERPRET") != "1" else {}


def _fwd_config(BK: int, DV: int, chunk: int) -> dict:
    # Measured on an H200 (docs/kernels.md): BV = 64 beat 32 by 1.6-1.7x. L = 32 because
    # Triton 3.6 miscompiles the bf16 wgmma path this kernel takes at L = 64 (wrong h; fp32 was right).
    cfg = {"L": min(chunk, 32), "BV": min(64, next_pow2(DV)), "num_warps": 8, "num_stages": 1}
    cfg.update(FWD_CONFIG.get(BK, {}))
    return cfg


def _bwd_config(BK: int, DV: int, chunk: int) -> dict:
    cfg = {"L": min(chunk, 32), "BV": min(64, next_pow2(DV)), "num_warps": 8, "num_stages": 1}
    cfg.update(BWD_CONFIG.get(BK, {}))
    return cfg


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
            self.NSEG = triton_cdiv(S, self.TSEG)
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


class MLSTMTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, cu, chunk, eps, input_gate, tseg):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        i, f = i.float().contiguous(), f.float().contiguous()
        C0, n0, m0 = C0.float().contiguous(), n0.float().contiguous(), m0.float().contiguous()
        DQK, DV = q.shape[-1], v.shape[-1]
        sp = _Spans(q, cu, tseg)
        BK = next_pow2(DQK)
        cfg = _fwd_config(BK, DV, chunk)
        h = torch.empty_like(v)
        store_lo = v.dtype != torch.float32 and any(ctx.needs_input_grad[:8])
        hlo = torch.empty_like(v) if store_lo else h
        mstat = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        dstat = torch.empty_like(mstat)
        Cf = torch.empty(sp.prefix + (DQK, DV), dtype=torch.float32, device=q.device)
        nf = torch.empty(sp.prefix + (DQK,), dtype=torch.float32, device=q.device)
        mf = torch.empty(sp.prefix, dtype=torch.float32, device=q.device)
        entries = ()
        if FORWARD["variant"] == "chunkparallel" and not sp.varlen and not sp.segmented:
            windowed = any(ctx.needs_input_grad[:8]) and BACKWARD["variant"] == "chunkparallel"
            entries = _chunk_parallel_forward(q, k, v, i, f, C0, n0, m0, h, hlo, Cf, nf, mf, mstat, dstat, chunk,
                                              eps, input_gate, store_lo, windowed)
        else:
            grid = (sp.N * sp.NH, triton_cdiv(DV, cfg["BV"]))
            mlstm_fwd_kernel[grid](
                q, k, v, i, f, C0, n0, m0, h, hlo, Cf, nf, mf, mstat, dstat, sp.cu_k, sp.S, sp.TSEG, sp.NSEG,
                DQK**-0.5, eps, NH=sp.NH, DQK=DQK, DV=DV, L=cfg["L"], BK=BK, BV=cfg["BV"],
                EXP_GATE=input_gate == "exp", IS_VARLEN=sp.varlen, PREC=_precision(q.dtype), STORE_LO=store_lo,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            )
        Cf, nf, mf = sp.last(Cf), sp.last(nf), sp.last(mf)
        ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, h, hlo, mstat, dstat, Cf, nf, *entries)
        ctx.meta = (sp, chunk, eps, input_gate, store_lo)
        return h, Cf, nf, mf

    @staticmethod
    def backward(ctx, dh, dCf, dnf, dmf):
        q, k, v, i, f, C0, n0, m0, h, hlo, mstat, dstat, Cf, nf, *entries = ctx.saved_tensors
        sp, chunk, eps, input_gate, store_lo = ctx.meta
        NH = sp.NH
        DQK, DV = q.shape[-1], v.shape[-1]
        BK = next_pow2(DQK)
        cfg = _bwd_config(BK, DV, chunk)
        dev = q.device
        zeros = lambda shape: torch.zeros(shape, dtype=torch.float32, device=dev)
        dh = zeros(h.shape).to(h.dtype) if dh is None else dh.contiguous()
        # <dC, C> + <dn, n> of the returned final states (float64, one number per returned state)
        state_prefix = Cf.shape[:-2]
        dfinal = zeros(state_prefix).double()
        if dCf is not None:
            dfinal += (dCf.double() * Cf.double()).sum((-2, -1))
        if dnf is not None:
            dfinal += (dnf.double() * nf.double()).sum(-1)
        dCf = sp.full(zeros(Cf.shape) if dCf is None else dCf.float()).contiguous()
        dnf = sp.full(zeros(nf.shape) if dnf is None else dnf.float()).contiguous()
        dmf = sp.full(zeros(state_prefix) if dmf is None else dmf.float())
        dfinal = sp.full(dfinal)

        R = h.numel() // DV
        rz, dden, dfo = (torch.empty(q.shape[:3], dtype=torch.float32, device=dev) for _ in range(3))
        BR = 32
        mlstm_bwd_prep_kernel[(triton_cdiv(R, BR),)](
            h, hlo, dh, mstat, dstat, rz, dden, dfo, R, eps, DV=DV, BR=BR, BVP=min(128, next_pow2(DV)),
            HAS_LO=store_lo, num_warps=4)

        if BACKWARD["variant"] == "chunkparallel" and not sp.varlen and not sp.segmented:
            grads = _chunk_parallel_backward(q, k, v, i, f, C0, n0, m0, mstat, rz, dden, dh, dCf, dnf, chunk,
                                             input_gate, entries)
        else:
            grads = _walk_backward(q, k, v, i, f, C0, n0, m0, mstat, rz, dden, dfo, dh, dCf, dnf, sp, cfg, input_gate)
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
        return dq, dk, dv, di, df, dC0, dn0, dm0, None, None, None, None, None


def _walk_backward(q, k, v, i, f, C0, n0, m0, mstat, rz, dden, dfo, dh, dCf, dnf, sp, cfg, input_gate):
    """The walks (backward.py): dkv backwards and dq forwards, one program per span and DV block."""
    DQK, DV = q.shape[-1], v.shape[-1]
    BK = next_pow2(DQK)
    R = q.numel() // DQK
    BR = 32
    NH = sp.NH
    zeros = lambda shape: torch.zeros(shape, dtype=torch.float32, device=q.device)
    dk32, dq32, dli = zeros(q.shape), zeros(q.shape), zeros(q.shape[:3])
    dv = torch.empty_like(v)
    dC0, dn0 = zeros(C0.shape), zeros(n0.shape)
    grid = (sp.N * NH, triton_cdiv(DV, cfg["BV"]))
    common = dict(NH=NH, DQK=DQK, DV=DV, L=cfg["L"], BK=BK, BV=cfg["BV"], EXP_GATE=input_gate == "exp",
                  IS_VARLEN=sp.varlen, PREC=_precision(q.dtype), num_warps=cfg["num_warps"],
                  num_stages=cfg["num_stages"])
    bounds = (sp.cu_k, sp.S, sp.TSEG, sp.NSEG, DQK**-0.5)
    mlstm_bwd_dkv_kernel[grid](q, k, v, i, f, m0, mstat, rz, dden, dh, dCf, dnf, dk32, dli, dv, dC0, dn0,
                               *bounds, **common)
    mlstm_bwd_dq_kernel[grid](k, v, i, f, C0, n0, m0, mstat, rz, dden, dh, dq32, *bounds, **common)

    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dF = torch.empty_like(rz)
    mlstm_bwd_finalize_kernel[(triton_cdiv(R, BR),)](dk32, dq32, dk, dq, dfo, dli, dF, R, DQK=DQK, BR=BR,
                                                    BK=BK, num_warps=4)
    del dk32, dq32
    return dq, dk, dv, dC0, dn0, dli, {"dF": dF}


def _chunk_parallel_backward(q, k, v, i, f, C0, n0, m0, mstat, rz, dden, dh, dCf, dnf, chunk, input_gate, entries):
    """chunk_backward.py over time windows, last window first: in each, the forward's chunk states are
    recomputed (chunk_states.py, from the fp32 state the forward saved at the window's start), the backward
    state at every chunk end is walked backwards from the gradient leaving the window, then dv and dq, dk
    run for all its chunks at once. The chunk and backward states of one window are all that is held:
    2 * B * NH * (window chunks) * DQK * DV values in the input dtype. Without saved entries (a forward
    that did not expect this backward) the whole sequence is one window.
    """
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    cfg = _cp_config(next_pow2(DQK), DV, chunk)
    L, BH = cfg["L"], B * NH
    NT = triton_cdiv(S, L)
    dev = q.device
    if entries:
        Ew, En, Em = entries
        W = triton_cdiv(NT, Ew.shape[0])
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
        mlstm_chunk_bwd_states_kernel[(triton_cdiv(DQK, cfg["BK_s"]), triton_cdiv(DV, cfg["BV_s"]), BH)](
            q, i, f, m0, mstat, rz, dden, dh, G_out, gn_out, gs, gns_w, G_in, gn_in, S, nt, c_first, scale,
            BK=cfg["BK_s"], BV=cfg["BV_s"], num_warps=cfg["warps_s"], num_stages=cfg["stages_s"],
            **_cap(cfg["maxnreg_g"]), **common)
        mlstm_chunk_bwd_dv_kernel[(triton_cdiv(DV, cfg["BV_o"]), nt, BH)](
            q, k, i, f, m0, mstat, rz, dh, gs, dv, S, nt, c_first, scale, BK=cfg["BK_o"], BV=cfg["BV_o"],
            num_warps=cfg["warps_o"], num_stages=cfg["stages_o"], **common)
        mlstm_chunk_bwd_dqk_kernel[(triton_cdiv(DQK, cfg["BK_b"]), nt, BH)](
            q, k, v, i, f, m0, mstat, rz, dden, dh, cs, ns_w, ms_w, gs, gns_w, dq, dk, dli, dlogf, S, nt, c_first,
            scale, BK=cfg["BK_b"], BV=cfg["BV_b"], num_warps=cfg["warps_b"], num_stages=cfg["stages_b"], **common)
        if w == NW - 1:  # the caller's dCf, dnf are read-only: from here on ping-pong between own buffers
            G_out, gn_out = torch.empty_like(C0), torch.empty_like(n0)
        G_out, G_in, gn_out, gn_in = G_in, G_out, gn_in, gn_out
    return dq, dk, dv, G_out, gn_out, dli, {"dlogf": dlogf}


def _chunk_parallel_forward(q, k, v, i, f, C0, n0, m0, h, hlo, Cf, nf, mf, mstat, dstat, chunk, eps,
                            input_gate, store_lo, windowed):
    """Pass 1 writes the state entering every chunk, pass 2 computes all chunks' outputs in parallel.

    The chunk states live only during the forward: B * NH * ceil(S / L) * DQK * DV values in the input
    dtype, plus fp32 n and m. With `windowed` (the chunk-parallel backward will run) and a sequence longer
    than one backward window (BACKWARD["window_steps"]), pass 1 also writes the fp32 state entering every
    window, which is returned (Ew, En, Em) for the backward to restart from; otherwise () is returned.
    """
    cfg = _cp_config(next_pow2(q.shape[-1]), v.shape[-1], chunk)
    L = cfg["L"]
    NT = triton_cdiv(q.shape[2], L)
    W = max(1, int(BACKWARD["window_steps"]) // L)
    entries = ()
    if windowed and NT > W:
        NW, BH = triton_cdiv(NT, W), q.shape[0] * q.shape[1]
        entries = (torch.empty((NW, BH) + C0.shape[2:], dtype=torch.float32, device=q.device),
                   torch.empty((NW, BH) + n0.shape[2:], dtype=torch.float32, device=q.device),
                   torch.empty((NW, BH), dtype=torch.float32, device=q.device))
    Cs, ns, ms = chunk_states(k, v, i, f, C0, n0, m0, Cf, nf, mf, cfg, input_gate, entries=entries,
                              every=W if entries else 0)
    chunk_outputs(q, k, v, i, f, Cs, ns, ms, h, hlo, mstat, dstat, cfg, eps, input_gate, store_lo)
    return entries


def chunk_states(k, v, i, f, C0, n0, m0, Cf, nf, mf, cfg, input_gate, *, out=None, c_first=0, n_chunks=None,
                 entries=(), every=0):
    """Launch pass 1 (chunk_states.py) over n_chunks chunks from c_first (default: all) and return the
    states entering each (BH, n_chunks, ...), in `out` (flat buffers) when given. With every > 0, also
    write the fp32 state entering every every-th chunk into `entries` (Ew, En, Em)."""
    B, NH, S, DQK = k.shape
    DV = v.shape[-1]
    L, BH = cfg["L"], B * NH
    NT = triton_cdiv(S, L) - c_first if n_chunks is None else n_chunks
    if out is None:
        out = (torch.empty(BH * NT * DQK * DV, dtype=k.dtype, device=k.device),
               torch.empty(BH * NT * DQK, dtype=torch.float32, device=k.device),
               torch.empty(BH * NT, dtype=torch.float32, device=k.device))
    Cs, ns, ms = out[0].view(BH, NT, DQK, DV), out[1].view(BH, NT, DQK), out[2].view(BH, NT)
    Ew, En, Em = entries if every else (Cf, nf, mf)  # unused without every
    mlstm_chunk_states_kernel[(triton_cdiv(DQK, cfg["BK_s"]), triton_cdiv(DV, cfg["BV_s"]), BH)](
        k, v, i, f, C0, n0, m0, Cs, ns, ms, Cf, nf, mf, Ew, En, Em, S, NT, c_first, DQK=DQK, DV=DV, L=L,
        BK=cfg["BK_s"], BV=cfg["BV_s"], EXP_GATE=input_gate == "exp", PREC=_precision(k.dtype), EVERY=every,
        num_warps=cfg["warps_s"], num_stages=cfg["stages_s"], **_cap(cfg["maxnreg_s"]))
    return Cs, ns, ms


def chunk_outputs(q, k, v, i, f, Cs, ns, ms, h, hlo, mstat, dstat, cfg, eps, input_gate, store_lo):
    """Launch pass 2 (chunk_output.py): h (and h_lo), m_t and den_t for every chunk in parallel."""
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    NT = Cs.shape[1]
    mlstm_chunk_output_kernel[(triton_cdiv(DV, cfg["BV_o"]), NT, B * NH)](
        q, k, v, i, f, Cs, ns, ms, h, hlo, mstat, dstat, S, NT, DQK**-0.5, eps, DQK=DQK, DV=DV, L=cfg["L"],
        BK=cfg["BK_o"], BV=cfg["BV_o"], EXP_GATE=input_gate == "exp", PREC=_precision(q.dtype),
        STORE_LO=store_lo, num_warps=cfg["warps_o"], num_stages=cfg["stages_o"], **_cap(cfg["maxnreg_o"]))


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


@torch.compiler.disable  # torch.compile graph-breaks around the op and runs it as is (with autograd)
def mlstm_triton(q, k, v, i, f, state, *, chunk_size=64, eps=1e-6, input_gate="exp", cu_seqlens=None):
    """The registered `triton` sequence backend (see the module docstring)."""
    if q.dtype == torch.float64:
        from .. import BACKENDS  # the torch chunkwise form handles float64 (per document)
        return BACKENDS["chunkwise"](q, k, v, i, f, state, chunk_size=chunk_size, eps=eps,
                                     input_gate=input_gate, cu_seqlens=cu_seqlens)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"mlstm(triton): q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    chunk = min(128, next_pow2(chunk_size))
    C0, n0, m0 = state
    tseg = segment_length(q, cu_seqlens)
    if tseg:
        C0, n0, m0 = segment_states(k, v, i, f, C0, n0, m0, tseg, input_gate)
    h, C, n, m = MLSTMTritonFn.apply(q, k, v, i, f, C0, n0, m0, cu_seqlens, chunk, float(eps), input_gate, tseg)
    return h, (C, n, m)


def segment_length(q: Tensor, cu_seqlens: Tensor | None) -> int:
    """Steps per segment for sequence parallelism (segments.py), or 0 for one walk per sequence.

    SEGMENT["tokens"] steps per segment (a multiple of 16; 0 switches segments off), used when the
    sequence holds at least SEGMENT["min_segments"] of them. Packed documents (cu_seqlens) are not cut.
    """
    tokens = int(SEGMENT["tokens"])
    if cu_seqlens is not None or tokens <= 0:
        return 0
    tokens = -(-tokens // 16) * 16
    return tokens if q.shape[2] >= SEGMENT["min_segments"] * tokens else 0
