"""The "triton" backend of the sLSTM op: launches the persistent kernels of triton_kernels.py.

Block sizes: BB = 16 batch rows per dot (tensor cores need 16), BJ output units per program (see `plan`;
all programs must fit on the GPU at once, since a barrier across programs needs them resident); R either
stays on chip (R_RESIDENT, two K pieces KR0 + KR1 >= DH) or is streamed in chunks of BK rows per step.
Inputs of any float dtype; the dot runs in x's dtype (bf16/fp16 as the official kernels do, fp32 in IEEE
precision for fp32 and fp64 inputs) with fp32 accumulation; gates, states and gradients are fp32. With
gradients, the recurrent products multiply R by h (forward) and by the gate gradients (backward) split
into two 16-bit parts (hi + lo), so those operands keep about 16 significant bits (docs/kernels.md,
"Precision"); R is used as given in the dot dtype.

Under TRITON_INTERPRET=1 (CPU tests) the programs run one after another, so a barrier would wait forever:
there heads split over several programs are launched once per step ("stepwise", the launch boundary is the
barrier); a head in one program runs the whole sequence in one launch as on the GPU. The stepwise mode is
also the fallback when a shape would need more resident programs than the GPU has. Design and limits:
docs/kernels.md.

Forward and backward are torch custom ops (flashxlstm::slstm_triton_fwd / slstm_triton_bwd, the pattern of
ops/custom_ops.py), so torch.compile(fullgraph=True) records one call each, with no graph break.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..custom_ops import LIB, link_backward
from ..triton_support import interpreting as _interpreting
from ..triton_support import next_pow2
from .checks import SLSTMState

BB = 16
# R slices a program may keep on chip for all steps, in elements (4 gates x K x BJ). On CUDA the compiler keeps
# such a loop-invariant 16-bit dot operand in shared memory (227 KB per SM on an H200; the dot operands of a
# step need room too). fp32 dots (IEEE) run without tensor cores, with operands in registers: streamed there.
R_RESIDENT_MAX = 65536
R_RESIDENT_MAX_INTERPRET = 16384
INFERENCE_WHOLE_HEAD_MAX = 64  # head dims whose no-grad forward runs one program per head, h in registers
# Keeping h_prev (forward) and draw (backward) in registers (REG) when one program holds a head: the backward
# of that path fails to compile for sm_90 with Triton 3.6 (bf16 and fp32: layout propagation into the dot
# operand), so on CUDA the backward never uses it and the forward only when asked (plan's `registers`; its
# default is to use it everywhere but on CUDA).


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30
    return torch.cuda.get_device_properties(device).multi_processor_count


def k_pieces(DH: int) -> tuple[int, int]:
    """Two power-of-two row counts (>= 16; the second 0 when one suffices) that cover DH with little padding:
    768 -> (512, 256), 384 -> (256, 128), 64 -> (64, 0), 20 -> (16, 16)."""
    k0 = max(16, 1 << (DH.bit_length() - 1))
    return (k0, 0) if k0 >= DH else (k0, next_pow2(DH - k0))


def plan(B: int, NH: int, DH: int, device: torch.device, block_j: int | None = None,
         dot_dtype: torch.dtype = torch.bfloat16, resident: bool | None = None, block_k: int | None = None,
         num_warps: int | None = None, registers: bool | None = None, inference: bool = False,
         resident_limit: int | None = None) -> dict:
    """Block sizes and grid: (NH * NJ, NBP) programs, each (head, batch group) synchronised per step.

    BJ units per program (NJ = ceil(DH / BJ) programs per head). R_RESIDENT: the program's slice of R
    (4 x DH x BJ) is loaded once and stays on chip; chosen on CUDA for 16-bit dots when the slice fits
    (R_RESIDENT_MAX), halving BJ (more programs per head) until it does. Otherwise R is streamed from L2 in
    chunks of BK rows each step. REG (registers): a head held by one program keeps h_prev (forward) and
    draw (backward) in registers. block_j, resident, block_k, num_warps, registers and resident_limit (the
    R_RESIDENT_MAX bound) override the choices (the benchmark and tests pass them); None = the default.

    Defaults measured on an H200 (`git show 363a467:benchmarks/results/slstm_kernels.md`): resident R with BJ = 32
    for DH 64 and 256 and BJ = 16 (48 programs) for DH 768 was the fastest forward + backward; for a forward
    without gradients (`inference`) at DH <= 64 one program per head with h_prev in registers was faster
    still (1.36 vs 1.93 ms at 8 heads of 64, B 16, T 1024), so that is the inference default there.
    """
    sms = _num_sms(device)
    dhp = next_pow2(DH)
    cuda = device.type == "cuda"
    limit = resident_limit if resident_limit is not None else (R_RESIDENT_MAX if cuda else R_RESIDENT_MAX_INTERPRET)
    kr0, kr1 = k_pieces(DH)
    can_resident = not cuda or dot_dtype in (torch.bfloat16, torch.float16)
    if (inference and cuda and can_resident and DH <= INFERENCE_WHOLE_HEAD_MAX and NH <= sms and block_j is None
            and registers is None and resident is not False):
        block_j, registers = dhp, True
    if registers is None:
        registers = not cuda
    if block_j is None:
        block_j = 32 if DH > 32 else 16
        if (resident is None and can_resident) or resident:
            while 4 * (kr0 + kr1) * block_j > limit and block_j > 16:
                block_j //= 2
        while NH * -(-DH // block_j) > sms and block_j < dhp:
            block_j *= 2
    nj = -(-DH // block_j)
    reg = nj == 1 and registers and (resident is None or resident)
    if reg:  # a whole head per program, h_prev in registers: one K piece as wide as the unit block
        block_j = kr0 = max(block_j, dhp)
        kr1 = 0
        resident = True
    elif resident is None:
        resident = can_resident and 4 * (kr0 + kr1) * block_j <= limit
    block_k = block_k or min(256, dhp)
    nb = -(-B // BB)
    fits = NH * nj <= sms
    nbp = max(1, min(nb, sms // (NH * nj))) if fits else nb
    stepwise = not fits or (_interpreting() and nj > 1)  # the interpreter runs programs one by one
    barrier = nj > 1 and not stepwise
    return dict(BJ=block_j, BK=block_k, KR0=kr0, KR1=kr1, NJ=nj, NBP=nbp, R_RESIDENT=bool(resident), REG=reg,
                stepwise=stepwise, barrier=barrier, cta_sync=(nj == 1 and not reg), num_warps=num_warps or 4)


def _dot_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32


def _outputs(x: Tensor, nseq: int, train: bool) -> list[tuple[tuple, torch.dtype]]:
    """Shapes of the forward op's outputs, from its arguments alone (its fake function and its implementation
    allocate from them): H, c, n, m (nseq = B, or the documents when packed), then the residuals of the
    backward (raw pre-activations and the states of every step; empty without gradients)."""
    B, S, _, NH, DH = x.shape
    f32 = torch.float32
    res = ((B, S, 4, NH, DH), (B, S, NH, DH)) if train else ((0,), (0,))
    return [((B, S, NH, DH), f32), ((nseq, NH, DH), f32), ((nseq, NH, DH), f32), ((nseq, NH, DH), f32),
            (res[0], f32), (res[1], f32), (res[1], f32), (res[1], f32)]


def _document_steps(cu_seqlens: Tensor, B: int, S: int) -> tuple[Tensor, Tensor]:
    """For B rows of S steps holding packed documents (cu_seqlens over the flattened B * S steps, every row
    starting a document): RST (B, S + 1) int32, the document starting at each step, -1 elsewhere (and in
    column S); FIN (B, S), the document ending at each step. Built on the device (no host sync)."""
    cu = cu_seqlens.long()
    docs = torch.arange(cu.shape[0] - 1, device=cu.device, dtype=torch.int32)
    rst = torch.full((B * S,), -1, device=cu.device, dtype=torch.int32).index_copy(0, cu[:-1], docs).view(B, S)
    rst = torch.cat([rst, rst.new_full((B, 1), -1)], dim=1)
    fin = torch.full((B * S,), -1, device=cu.device, dtype=torch.int32).index_copy(0, cu[1:] - 1, docs).view(B, S)
    return rst, fin


def _forward(x, R, b, c0, n0, m0, h0, exp_forget: bool, train: bool, tune: dict, cu_seqlens=None) -> list[Tensor]:
    from .triton_kernels import slstm_fw_kernel

    B, S, _, NH, DH = x.shape
    dev = x.device
    docs = cu_seqlens is not None
    f32 = dict(device=dev, dtype=torch.float32)
    x = x.contiguous()
    dot_dt = _dot_dtype(x)
    RT = R.to(dot_dt).permute(1, 0, 3, 2).contiguous()  # (NH, 4, k, j) = R[g, h, j, k]
    bias = b.to(torch.float32).contiguous()
    c0, n0, m0, h0 = (s.to(torch.float32).contiguous() for s in (c0, n0, m0, h0))
    H, c, n, m, raw, C, N, M = (torch.empty(shape, dtype=dt, device=dev)
                                for shape, dt in _outputs(x, c0.shape[0], train))
    slots = S if train else 1
    if not train:  # the kernel writes the state of the current step only: one slot
        C, N, M = (torch.empty(B, slots, NH, DH, **f32) for _ in range(3))
    # h_t in the dot dtype, slot t % 2. With gradients and 16-bit dots also its rounding residual (HKL):
    # the gradients of the final m (and so of c, n) switch where the stabilizer's max nearly ties, so raw
    # must match the exact recurrence much more closely than one bf16 rounding of h allows. Without
    # gradients one product suffices: the outputs are rounded to the 16-bit dtype anyway.
    split = train and dot_dt != torch.float32
    HK = torch.empty(B, 2, NH, DH, device=dev, dtype=dot_dt)
    HKL = torch.empty_like(HK) if split else HK
    rst, fin = _document_steps(cu_seqlens, B, S) if docs else (H, H)  # (unused without documents)
    HK[:, 1] = h0.index_select(0, rst[:, 0].long()) if docs else h0  # "h_{-1}" (packed: each row's first h0)
    if split:
        HKL[:, 1] = (h0.index_select(0, rst[:, 0].long()) if docs else h0) - HK[:, 1].float()
    p = plan(B, NH, DH, dev, dot_dtype=dot_dt, inference=not train, **tune)
    grid = (NH * p["NJ"], p["NBP"])
    cnt = torch.zeros(NH * p["NBP"], device=dev, dtype=torch.int32)
    common = dict(DH=DH, EXP_FORGET=exp_forget, STORE_RAW=train, STORE_STATES=train, USE_BARRIER=p["barrier"],
                  CTA_SYNC=p["cta_sync"], IEEE=dot_dt == torch.float32, R_RESIDENT=p["R_RESIDENT"], REG=p["REG"],
                  BB=BB, BJ=p["BJ"], BK=p["BK"], KR0=p["KR0"], KR1=p["KR1"], DOCS=docs, SPLIT=split,
                  num_warps=p["num_warps"])
    args = (x, bias, RT, h0, c0, n0, m0, H, HK, HKL, C, N, M, raw if train else H, cnt, rst, fin, c, n, m,
            B, S, NH, slots, p["NBP"])
    for t0, t1 in ([(t, t + 1) for t in range(S)] if p["stepwise"] else [(0, S)]):
        slstm_fw_kernel[grid](*args, t0, t1, **common)
    if not docs:  # (packed: the kernel wrote each document's final state)
        last = (S - 1) % slots
        c.copy_(C[:, last])
        n.copy_(N[:, last])
        m.copy_(M[:, last])
    if not train:
        C, N, M = (torch.empty(0, **f32) for _ in range(3))
    return [H, c, n, m, raw, C, N, M]


def _backward(gH, gc, gn, gm, H, c, n, m, raw, C, N, M, x, R, b, c0, n0, m0, h0, exp_forget: bool, train: bool,
              tune: dict, cu_seqlens=None) -> list[Tensor]:
    from .triton_kernels import slstm_bw_kernel

    docs = cu_seqlens is not None
    dtypes = [t.dtype for t in (x, R, b, c0, n0, m0, h0)]
    dot_dt = _dot_dtype(x)
    c0, n0, m0, h0 = (s.to(torch.float32).contiguous() for s in (c0, n0, m0, h0))
    B, S, _, NH, DH = raw.shape
    gH = gH.to(torch.float32).contiguous()
    f32 = dict(device=raw.device, dtype=torch.float32)
    if docs:  # carried gradients start at zero; each document's final-state gradients enter at its last step
        GCF, GNF, GMF = (g.to(torch.float32).contiguous() for g in (gc, gn, gm))
        DC, DN, DM = (torch.zeros(B, NH, DH, **f32) for _ in range(3))
        DC0, DN0, DM0 = (torch.zeros(c0.shape, **f32) for _ in range(3))
        rst, fin = _document_steps(cu_seqlens, B, S)
    else:
        DC, DN, DM = (g.to(torch.float32).clone().contiguous() for g in (gc, gn, gm))  # the kernel updates them
        GCF = GNF = GMF = DC0 = DN0 = DM0 = rst = fin = DC  # (unused without documents)
    draw = torch.empty_like(raw)
    # draw_t in the dot dtype, slot t % 2; 16-bit dots get its rounding residual too (DKL): see the kernel
    split = dot_dt != torch.float32
    DK = torch.empty(B, 2, 4, NH, DH, device=raw.device, dtype=dot_dt)
    DKL = torch.empty_like(DK) if split else DK
    Rd = R.to(dot_dt).contiguous()
    if raw.device.type == "cuda":  # the REG backward does not compile with Triton 3.6 (bf16 and fp32)
        tune = dict(tune, registers=False)
    p = plan(B, NH, DH, raw.device, dot_dtype=dot_dt, **tune)
    grid = (NH * p["NJ"], p["NBP"])
    cnt = torch.zeros(NH * p["NBP"], device=raw.device, dtype=torch.int32)
    common = dict(DH=DH, EXP_FORGET=exp_forget, USE_BARRIER=p["barrier"], CTA_SYNC=p["cta_sync"],
                  IEEE=dot_dt == torch.float32, R_RESIDENT=p["R_RESIDENT"], REG=p["REG"],
                  BB=BB, BJ=p["BJ"], BK=p["BK"], KR0=p["KR0"], KR1=p["KR1"], DOCS=docs, SPLIT=split,
                  num_warps=p["num_warps"])
    args = (raw, Rd, c0, n0, m0, C, N, M, gH, DC, DN, DM, draw, DK, DKL, cnt, rst, fin, GCF, GNF, GMF, DC0, DN0, DM0,
            B, S, NH, p["NBP"])
    for t0, t1 in ([(t, t + 1) for t in range(S - 1, -1, -1)] if p["stepwise"] else [(0, S)]):
        slstm_bw_kernel[grid](*args, t0, t1, **common)
    Rf = R.to(torch.float32)
    if docs:  # h0 of each document feeds its first step (the rows flattened: every row starts a document)
        starts = cu_seqlens[:-1].long()
        dh0 = torch.einsum("bghj,ghjp->bhp", draw.reshape(B * S, 4, NH, DH).index_select(0, starts), Rf)
        Hf = H.reshape(B * S, NH, DH)
        H_prev = torch.cat([Hf[:1], Hf[:-1]]).index_copy(0, starts, h0).view(B, S, NH, DH)
        DC, DN, DM = DC0, DN0, DM0
    else:
        dh0 = torch.einsum("bghj,ghjp->bhp", draw[:, 0], Rf)
        H_prev = torch.cat([h0[:, None], H[:, :-1]], dim=1)
    dR = torch.einsum("bsghj,bshp->ghjp", draw, H_prev)
    db = draw.sum((0, 1))
    return [g.to(dt) for g, dt in zip((draw, dR, db, DC, DN, DM, dh0), dtypes)]


# Forward and backward as torch custom ops (the pattern of ops/custom_ops.py): torch.compile(fullgraph=True)
# records one call each and never traces into the launchers. The launch overrides of `plan` (TUNE) travel as
# separate optional arguments, None = the default.
TUNE = ("block_j", "resident", "block_k", "num_warps", "registers", "resident_limit")
_Outs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op(f"{LIB}::slstm_triton_fwd", mutates_args=())
def _forward_op(x: Tensor, R: Tensor, b: Tensor, c0: Tensor, n0: Tensor, m0: Tensor, h0: Tensor, exp_forget: bool,
                train: bool, cu_seqlens: Tensor | None, block_j: int | None, resident: bool | None,
                block_k: int | None, num_warps: int | None, registers: bool | None,
                resident_limit: int | None) -> _Outs:
    tune = dict(zip(TUNE, (block_j, resident, block_k, num_warps, registers, resident_limit)))
    return tuple(_forward(x, R, b, c0, n0, m0, h0, exp_forget, train, tune, cu_seqlens))


@_forward_op.register_fake
def _(x, R, b, c0, n0, m0, h0, exp_forget, train, cu_seqlens, *tune):
    return tuple(torch.empty(shape, dtype=dt, device=x.device) for shape, dt in _outputs(x, c0.shape[0], train))


@torch.library.custom_op(f"{LIB}::slstm_triton_bwd", mutates_args=())
def _backward_op(gH: Tensor, gc: Tensor, gn: Tensor, gm: Tensor, H: Tensor, c: Tensor, n: Tensor, m: Tensor,
                 raw: Tensor, C: Tensor, N: Tensor, M: Tensor, x: Tensor, R: Tensor, b: Tensor, c0: Tensor,
                 n0: Tensor, m0: Tensor, h0: Tensor, exp_forget: bool, train: bool, cu_seqlens: Tensor | None,
                 block_j: int | None, resident: bool | None, block_k: int | None, num_warps: int | None,
                 registers: bool | None, resident_limit: int | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    tune = dict(zip(TUNE, (block_j, resident, block_k, num_warps, registers, resident_limit)))
    return tuple(_backward(gH, gc, gn, gm, H, c, n, m, raw, C, N, M, x, R, b, c0, n0, m0, h0, exp_forget, train,
                           tune, cu_seqlens))


@_backward_op.register_fake
def _(gH, gc, gn, gm, H, c, n, m, raw, C, N, M, x, R, b, c0, n0, m0, h0, *_):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (x, R, b, c0, n0, m0, h0))


link_backward(_forward_op, _backward_op, n_outputs=4, differentiable=range(7))


def slstm_triton(
    x: Tensor, R: Tensor, b: Tensor, state: SLSTMState, *, forget_gate: str = "sigmoid", block_j: int | None = None,
    tune: dict | None = None, cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, SLSTMState]:
    """The persistent-kernel form. h: (B, S, NH, DH) float32 (the op casts it to x's dtype).

    block_j / tune (keywords of `plan`: block_j, resident, block_k, num_warps, registers, resident_limit)
    override the launch choices. cu_seqlens: packed documents in the same single launch, the state reset at
    each document start; it indexes the flattened B * S steps, and with B > 1 every row starts a document
    (the rows run side by side); `state` then holds one initial state per document."""
    if x.device.type != "cuda" and not _interpreting():
        raise ValueError("slstm: backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for tests)")
    c0, n0, m0, h0 = state
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (x, R, b, *state))
    out_dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    tune = dict(tune or {})
    if block_j is not None:
        tune["block_j"] = block_j
    unknown = set(tune) - set(TUNE)
    if unknown:
        raise ValueError(f"slstm(triton): unknown launch overrides {sorted(unknown)}; known: {', '.join(TUNE)}")
    H, c, n, m = _forward_op(x, R, b, c0, n0, m0, h0, forget_gate == "exp", train, cu_seqlens,
                             *(tune.get(k) for k in TUNE))[:4]
    h_last = H[:, -1] if cu_seqlens is None else H.flatten(0, 1).index_select(0, cu_seqlens[1:].long() - 1)
    return H.to(out_dt), tuple(s.to(out_dt) for s in (c, n, m, h_last))
