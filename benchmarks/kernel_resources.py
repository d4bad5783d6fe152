"""Registers, spills, stack and shared memory of Triton kernels compiled for sm_90, without a GPU.

    python benchmarks/kernel_resources.py [--dims 256x512,128x256] [--variant 'output:BV=128,warps=8' ...]
                                          [--variant 'states:maxnreg=128'] [--fla PATH] [--no-align]

Each kernel is compiled the way a launch would compile it (Triton's bundled ptxas, target sm_90a,
pointers and integer arguments that are multiples of 16 marked so, as the launcher does for aligned
tensors and S = 8192) and the table gives, per kernel and launch setting: registers per thread,
spill stores / loads and stack frame (bytes per thread, from `ptxas -v`), shared memory (bytes per
program, Triton's allocation), programs per SM that the registers and shared memory allow (65536
registers, allocated per thread in steps of 8, and 227 KB per SM; 255 registers x 128 threads leave 2),
and which matrix instruction the SASS uses (HGMMA = Hopper wgmma, HMMA = mma.sync). A variant is
KERNEL:key=value,... with keys L, BK, BV, warps, stages, maxnreg (a register cap) or a kernel constexpr.

Kernels: `states` and `output` are the chunk-parallel forward's two passes (chunk_states.py,
chunk_output.py) with launch_plan.chunk_parallel_defaults' forward settings (keys without the _s / _o suffix override them);
`fla_h` and `fla_o` are fla-core 0.6's chunk_fwd_kernel_h / chunk_fwd_kernel_o in the setting
chunk_simple_gla uses (scalar gate, bf16 states), importable from --fla (an unpacked wheel), default
settings as its autotune lists offer them on Hopper. Run on the CPU machine; takes ~10 s per kernel.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
TARGET = GPUTarget("cuda", 90, 64)
REGS_PER_SM, SMEM_PER_SM, MAX_PROGRAMS = 65536, 227 * 1024, 32


def jit_fn(kernel):
    """The JITFunction under autotune / heuristics wrappers."""
    while not isinstance(kernel, triton.runtime.JITFunction):
        kernel = kernel.fn
    return kernel


ALIGN = True  # mark pointers and i32 arguments as multiples of 16, as a launch with aligned tensors does


def compile_sm90(kernel, constexprs: dict, types: dict, num_warps: int, num_stages: int, maxnreg=None):
    """Compile `kernel` for sm_90; arguments not in `constexprs` take their type from `types` (name ->
    Triton type string; unlisted names are i32). Returns the CompiledKernel."""
    fn = jit_fn(kernel)
    sig, attrs = {}, {}
    for j, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        sig[name] = types.get(name, "i32")
        # aligned pointers, S and NT multiples of 16, as the launcher marks them (unless told not to)
        if ALIGN and (sig[name].startswith("*") or sig[name] == "i32") and not fn.params[j].do_not_specialize:
            attrs[(j,)] = [["tt.divisibility", 16]]
    opts = dict(num_warps=num_warps, num_stages=num_stages)
    if maxnreg:
        opts["maxnreg"] = maxnreg
    return triton.compile(ASTSource(fn, sig, constexprs=constexprs, attrs=attrs), target=TARGET, options=opts)


def resources(ck, num_warps: int) -> dict:
    """Registers, spills, stack (ptxas -v on the kernel's PTX), shared memory, programs per SM, mma kind."""
    with tempfile.TemporaryDirectory() as d:
        ptx, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(ptx, "w") as fh:
            fh.write(ck.asm["ptx"])
        log = subprocess.run([os.path.join(BIN, "ptxas"), "-v", "--gpu-name=sm_90a", ptx, "-o", cubin],
                             capture_output=True, text=True, check=True).stderr
        with open(cubin, "wb") as fh:
            fh.write(ck.asm["cubin"])
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", cubin], capture_output=True, text=True).stdout
    num = lambda pat: int(re.search(pat, log).group(1)) if re.search(pat, log) else 0
    regs = num(r"Used (\d+) registers")
    smem = ck.metadata.shared
    by_regs = REGS_PER_SM // (-(-max(regs, 1) // 8) * 8 * 32 * num_warps)  # allocated in steps of 8 per thread
    by_smem = SMEM_PER_SM // smem if smem else MAX_PROGRAMS
    mma = "HGMMA" if "HGMMA" in sass else ("HMMA" if "HMMA" in sass else "-")
    return dict(regs=regs, spill_st=num(r"(\d+) bytes spill stores"), spill_ld=num(r"(\d+) bytes spill loads"),
                stack=num(r"(\d+) bytes stack frame"), smem=smem, per_sm=min(by_regs, by_smem, MAX_PROGRAMS),
                warps=num_warps, mma=mma, ldl=sass.count("LDL"), stl=sass.count("STL"))


# ---------------------------------------------------------------- the kernels this script knows
def _ours(which: str, DQK: int, DV: int, over: dict):
    from flashxlstm.ops.mlstm_cell.triton.launch_plan import chunk_parallel_defaults
    cfg = chunk_parallel_defaults(DQK, DV, 64)
    sfx = "_s" if which == "states" else "_o"
    s = {key: over.get(key, cfg[key + sfx]) for key in ("BK", "BV", "warps", "stages")}
    s["L"] = over.get("L", cfg["L"])
    P, F = "*bf16", "*fp32"
    types = dict(q=P, k=P, v=P, ig=F, fg=F, C0=F, n0=F, m0=F, Cs=P, ns=F, ms=F, Cf=F, nf=F, mf=F, h=P, hlo=P,
                 mstat=F, dstat=F, Ew=F, En=F, Em=F, Ec=F, Enc=F, Emc=F, cu="*i32", coff="*i32", cdoc="*i32",
                 scale="fp32", eps="fp32")
    const = dict(DQK=DQK, DV=DV, L=s["L"], BK=s["BK"], BV=s["BV"], EXP_GATE=True, PREC="tf32", NH=8,
                 IS_VARLEN=False, DESC=False)
    if which == "states":
        from flashxlstm.ops.mlstm_cell.triton.chunk_states import mlstm_chunk_states_kernel as kernel
        const["EVERY"] = over.get("EVERY", 0)  # 0: the forward without the backward's window entries
    else:
        from flashxlstm.ops.mlstm_cell.triton.chunk_output import mlstm_chunk_output_kernel as kernel
        const["STORE_LO"] = bool(over.get("STORE_LO", True))
    const = {key: val for key, val in const.items() if key in jit_fn(kernel).arg_names}
    extra = {key: val for key, val in over.items() if key in jit_fn(kernel).arg_names}
    const.update(extra)
    label = f"L{s['L']} BK{s['BK']} BV{s['BV']} w{s['warps']} s{s['stages']}" + "".join(
        f" {key}={val}" for key, val in extra.items()) + (" STORE_LO" if const.get("STORE_LO") else "")
    return kernel, const, types, s["warps"], s["stages"], label


def _fla(which: str, DQK: int, DV: int, over: dict):
    P = "*bf16"
    if which == "fla_h":
        from fla.ops.common.chunk_h import chunk_fwd_kernel_h as kernel
        s = dict(BK=64, BV=64, warps=4, stages=3) | over
        const = dict(H=16, K=DQK, V=DV, BT=64, BS=64, BK=s["BK"], BV=s["BV"], USE_G=True, USE_G_GAMMA=False,
                     USE_GK=False, USE_GV=False, USE_INITIAL_STATE=False, STORE_FINAL_STATE=False, IS_VARLEN=False,
                     STATE_V_FIRST=False, gk=None, gv=None, g_gamma=None, h0=None, ht=None, cu_seqlens=None,
                     split_offsets=None)
        types = dict(k=P, v=P, h=P, g="*fp32")
    else:
        from fla.ops.common.chunk_o import chunk_fwd_kernel_o as kernel
        s = dict(BK=128, BV=128, warps=8, stages=3) | over
        const = dict(H=16, HV=16, K=DQK, V=DV, BT=64, BK=s["BK"], BV=s["BV"], USE_G=True, USE_G_GAMMA=False,
                     STATE_V_FIRST=False, IS_VARLEN=False, g_gamma=None, cu_seqlens=None, chunk_indices=None)
        types = dict(q=P, k=P, v=P, h=P, o=P, g="*fp32", scale="fp32")
    return kernel, const, types, s["warps"], s["stages"], f"BT64 BK{s['BK']} BV{s['BV']} w{s['warps']} s{s['stages']}"


KERNELS = {"states": lambda *a: _ours("states", *a), "output": lambda *a: _ours("output", *a),
           "fla_h": lambda *a: _fla("fla_h", *a), "fla_o": lambda *a: _fla("fla_o", *a)}
# FLA's autotune lists on Hopper: chunk_fwd_kernel_o {BK, BV 128, 8 warps} or {64, 64, 4 warps}, 3 stages;
# chunk_fwd_kernel_h BK, BV in {32, 64}, 1-8 warps, 2-4 stages (which one wins is not recorded here)
DEFAULT_VARIANTS = ["states:", "output:", "fla_h:", "fla_h:BK=32,BV=64,warps=2", "fla_o:",
                    "fla_o:BK=64,BV=64,warps=4"]


def fla_folder(path: str) -> str:
    """`path` if it holds the fla package, else the fla-core wheel from the repository's .whl unpacked under it."""
    if not os.path.isdir(os.path.join(path, "fla")):
        import glob
        import zipfile
        wheels = sorted(glob.glob(os.path.join(HERE, "..", ".whl", "fla_core-*.whl")))
        if wheels:
            zipfile.ZipFile(wheels[-1]).extractall(path)
    return path


def parse_variant(text: str):
    name, _, rest = text.partition(":")
    over = {}
    for item in filter(None, rest.split(",")):
        key, _, val = item.partition("=")
        over[key] = int(val) if val.lstrip("-").isdigit() else (val == "True" if val in ("True", "False") else val)
    return name, over


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="256x512,128x256,128x128", help="DQKxDV list")
    ap.add_argument("--variant", action="append", default=None,
                    help="KERNEL:key=val,... (keys: L, BK, BV, warps, stages, maxnreg, kernel constexprs); repeatable")
    ap.add_argument("--fla", default="/tmp/fla",
                    help="folder holding the fla package; if missing, .whl/fla_core-*.whl is unpacked there")
    ap.add_argument("--no-align", action="store_true", help="compile without the multiple-of-16 hints")
    args = ap.parse_args()
    global ALIGN
    ALIGN = not args.no_align
    sys.path.append(fla_folder(args.fla))
    print("| DQK x DV | kernel | setting | regs | spill st/ld B | stack B | smem KB | programs/SM | warps/SM | mma |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dims in args.dims.split(","):
        DQK, DV = map(int, dims.split("x"))
        for text in args.variant or DEFAULT_VARIANTS:
            name, over = parse_variant(text)
            maxnreg = over.pop("maxnreg", None)
            try:
                kernel, const, types, warps, stages, label = KERNELS[name](DQK, DV, over)
                r = resources(compile_sm90(kernel, const, types, warps, stages, maxnreg), warps)
            except Exception as ex:  # report and go on: one bad setting should not hide the others
                print(f"| {DQK}x{DV} | {name} | {over} | FAIL {repr(ex)[:200]} |")
                continue
            label += f" maxnreg{maxnreg}" if maxnreg else ""
            print(f"| {DQK}x{DV} | {name} | {label} | {r['regs']} | {r['spill_st']}/{r['spill_ld']} | {r['stack']} | "
                  f"{r['smem'] / 1024:.1f} | {r['per_sm']} | {r['per_sm'] * warps} | {r['mma']} |", flush=True)


if __name__ == "__main__":
    main()
