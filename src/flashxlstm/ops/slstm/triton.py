"""The "triton" backend of the sLSTM op: launches the persistent kernels of triton_kernels.py.

Block sizes: BB = 16 batch rows per dot (tensor cores need 16), BJ output units per program (see `plan`;
all programs must fit on the GPU at once, since a barrier across programs needs them resident), BK inputs
per dot chunk.
Inputs of any float dtype; the dot runs in x's dtype (bf16/fp16 as the official kernels do, fp32 in IEEE
precision for fp32 and fp64 inputs) with fp32 accumulation; gates, states and gradients are fp32.

Under TRITON_INTERPRET=1 (CPU tests) the programs run one after another, so a barrier would wait forever:
there heads split over several programs are launched once per step ("stepwise", the launch boundary is the
barrier); a head in one program runs the whole sequence in one launch as on the GPU. The stepwise mode is
also the fallback when a shape would need more resident programs than the GPU has.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from .checks import SLSTMState

BB = 16
R_RESIDENT_MAX = 16384  # elements of R a program keeps in registers (4 gates x BK x BJ)
# Keeping R, h_prev and draw in registers (R_RESIDENT, REG) is tested under the interpreter only: on an H200
# with Triton 3.6 the fp32 backward of the REG path failed to compile (layout propagation into the dot
# operand), and the bf16 path has not been measured yet. None = use them everywhere but on CUDA.
REGISTER_PATHS: bool | None = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan(B: int, NH: int, DH: int, device: torch.device, block_j: int | None = None) -> dict:
    """Block sizes and grid: (NH * NJ, NBP) programs, each (head, batch group) synchronised per step.

    Heads are split in blocks of 32 units (16 for DH <= 32): on an H200 BJ = 32 was the fastest of 16/32/64
    for DH 256 and 768 and within noise of the best for DH 64 (benchmarks/slstm_kernels.py).
    """
    sms = _num_sms(device)
    dhp = max(16, _next_pow2(DH))
    registers = REGISTER_PATHS if REGISTER_PATHS is not None else device.type != "cuda"
    if block_j is None:
        block_j = 32 if DH > 32 else 16
        while NH * -(-DH // block_j) > sms and block_j < dhp:
            block_j *= 2
    nj = -(-DH // block_j)
    reg = nj == 1 and registers
    if reg:  # a whole head per program, h_prev in registers: one K chunk as wide as the unit block
        block_k = block_j = max(block_j, dhp)
        resident = True
    else:
        block_k = min(256, dhp)
        resident = registers and block_k >= DH and 4 * block_k * block_j <= R_RESIDENT_MAX
    nb = -(-B // BB)
    fits = NH * nj <= sms
    nbp = max(1, min(nb, sms // (NH * nj))) if fits else nb
    stepwise = not fits or (_interpreting() and nj > 1)  # the interpreter runs programs one by one
    barrier = nj > 1 and not stepwise
    return dict(BJ=block_j, BK=block_k, NJ=nj, NBP=nbp, R_RESIDENT=resident, REG=reg, stepwise=stepwise,
                barrier=barrier, cta_sync=(nj == 1 and not reg))


def _dot_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32


class _SLSTMTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, R, b, c0, n0, m0, h0, exp_forget: bool, train: bool, block_j):
        from .triton_kernels import slstm_fw_kernel

        B, S, _, NH, DH = x.shape
        dev = x.device
        f32 = dict(device=dev, dtype=torch.float32)
        x = x.contiguous()
        dot_dt = _dot_dtype(x)
        RT = R.to(dot_dt).permute(1, 0, 3, 2).contiguous()  # (NH, 4, k, j) = R[g, h, j, k]
        bias = b.to(torch.float32).contiguous()
        c0, n0, m0, h0 = (s.to(torch.float32).contiguous() for s in (c0, n0, m0, h0))
        slots = S if train else 1
        H = torch.empty(B, S, NH, DH, **f32)
        C, N, M = (torch.empty(B, slots, NH, DH, **f32) for _ in range(3))
        raw = torch.empty(B, S, 4, NH, DH, **f32) if train else H  # H: a placeholder pointer, never written
        p = plan(B, NH, DH, dev, block_j)
        grid = (NH * p["NJ"], p["NBP"])
        cnt = torch.zeros(NH * p["NBP"], device=dev, dtype=torch.int32)
        common = dict(DH=DH, EXP_FORGET=exp_forget, STORE_RAW=train, STORE_STATES=train, USE_BARRIER=p["barrier"],
                      CTA_SYNC=p["cta_sync"], IEEE=dot_dt == torch.float32, R_RESIDENT=p["R_RESIDENT"], REG=p["REG"],
                      BB=BB, BJ=p["BJ"], BK=p["BK"], num_warps=4)
        args = (x, bias, RT, h0, c0, n0, m0, H, C, N, M, raw, cnt, B, S, NH, slots, p["NBP"])
        for t0, t1 in ([(t, t + 1) for t in range(S)] if p["stepwise"] else [(0, S)]):
            slstm_fw_kernel[grid](*args, t0, t1, **common)
        last = (S - 1) % slots
        c, n, m = C[:, last].clone(), N[:, last].clone(), M[:, last].clone()
        if train:
            ctx.save_for_backward(raw, R, c0, n0, m0, h0, C, N, M, H)
            ctx.cfg = (exp_forget, block_j, dot_dt)
        return H, c, n, m

    @staticmethod
    def backward(ctx, gH, gc, gn, gm):
        from .triton_kernels import slstm_bw_kernel

        raw, R, c0, n0, m0, h0, C, N, M, H = ctx.saved_tensors
        exp_forget, block_j, dot_dt = ctx.cfg
        B, S, _, NH, DH = raw.shape
        zeros = lambda t: torch.zeros_like(t)
        gH = zeros(H) if gH is None else gH.to(torch.float32).contiguous()
        DC, DN, DM = (zeros(c0) if g is None else g.to(torch.float32).clone().contiguous() for g in (gc, gn, gm))
        draw = torch.empty_like(raw)
        Rd = R.to(dot_dt).contiguous()
        p = plan(B, NH, DH, raw.device, block_j)
        grid = (NH * p["NJ"], p["NBP"])
        cnt = torch.zeros(NH * p["NBP"], device=raw.device, dtype=torch.int32)
        common = dict(DH=DH, EXP_FORGET=exp_forget, USE_BARRIER=p["barrier"], CTA_SYNC=p["cta_sync"],
                      IEEE=dot_dt == torch.float32, R_RESIDENT=p["R_RESIDENT"], REG=p["REG"],
                      BB=BB, BJ=p["BJ"], BK=p["BK"], num_warps=4)
        args = (raw, Rd, c0, n0, m0, C, N, M, gH, DC, DN, DM, draw, cnt, B, S, NH, p["NBP"])
        for t0, t1 in ([(t, t + 1) for t in range(S - 1, -1, -1)] if p["stepwise"] else [(0, S)]):
            slstm_bw_kernel[grid](*args, t0, t1, **common)
        Rf = R.to(torch.float32)
        dh0 = torch.einsum("bghj,ghjp->bhp", draw[:, 0], Rf)
        H_prev = torch.cat([h0[:, None], H[:, :-1]], dim=1)
        dR = torch.einsum("bsghj,bshp->ghjp", draw, H_prev)
        db = draw.sum((0, 1))
        return (draw, dR.to(R.dtype), db, DC, DN, DM, dh0, None, None, None)


def slstm_triton(
    x: Tensor, R: Tensor, b: Tensor, state: SLSTMState, *, forget_gate: str = "sigmoid", block_j: int | None = None,
) -> tuple[Tensor, SLSTMState]:
    """The persistent-kernel form. h: (B, S, NH, DH) float32 (the op casts it to x's dtype)."""
    if x.device.type != "cuda" and not _interpreting():
        raise ValueError("slstm: backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for tests)")
    c0, n0, m0, h0 = state
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (x, R, b, *state))
    out_dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    H, c, n, m = _SLSTMTriton.apply(x, R, b, c0, n0, m0, h0, forget_gate == "exp", train, block_j)
    h_last = H[:, -1]
    return H.to(out_dt), tuple(s.to(out_dt) for s in (c, n, m, h_last))
