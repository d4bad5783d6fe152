"""How long Triton takes to compile the sLSTM kernels for sm_90 at one head size, without launching them.

    python benchmarks/slstm_compile_time.py --heads 1x768 --dtype fp32 [--docs] [--sms 132]

The launch settings are `plan`'s defaults for a training call on a GPU with --sms SMs (a head split over
programs meets at the head barrier). Prints, per kernel, the compile seconds and ptxas's register, spill
and shared-memory report: a first call's wall time is mostly this, which tells a slow compile from a hang.
Needs no GPU.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time

# a fresh Triton cache, so the seconds are a cold compile (as on a fresh machine), not a cache hit
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="slstm_compile_time_")

import torch  # noqa: E402 (after the cache directory is set)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from flashxlstm.ops.slstm_cell import triton as tri  # noqa: E402
from flashxlstm.ops.slstm_cell import triton_kernels as kernels  # noqa: E402

INTS = {"Bsz", "S", "NH", "SLOTS", "NBP", "t_start", "t_end"}
INT_POINTERS = {"CNT", "RST", "FIN"}
DOT_POINTERS = {"X", "RT", "HK", "HKL", "R", "DK", "DKL"}  # in the dot dtype; every other pointer is fp32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", default="1x768")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    ap.add_argument("--docs", action="store_true", help="the packed-documents variant (DOCS)")
    ap.add_argument("--sms", type=int, default=132)
    args = ap.parse_args()
    NH, DH = (int(v) for v in args.heads.split("x"))
    dot = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    tri._num_sms = lambda device: args.sms
    p = tri.plan(16, NH, DH, torch.device("cuda"), dot_dtype=dot, registers=False)
    split = dot != torch.float32
    common = dict(DH=DH, EXP_FORGET=False, USE_BARRIER=p["barrier"], CTA_SYNC=p["cta_sync"], IEEE=not split,
                  R_RESIDENT=p["R_RESIDENT"], REG=p["REG"], BB=tri.BB, BJ=p["BJ"], BK=p["BK"], KR0=p["KR0"],
                  KR1=p["KR1"], DOCS=args.docs, SPLIT=split)
    print(f"{args.heads} {args.dtype} docs={args.docs}: plan {p}", flush=True)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    for name, extra in (("slstm_fw_kernel", dict(STORE_RAW=True, STORE_STATES=True)), ("slstm_bw_kernel", {})):
        kernel = getattr(kernels, name)
        const = {k: v for k, v in {**common, **extra}.items() if k in kernel.arg_names}
        sig = {a: "constexpr" if a in const else "i32" if a in INTS else "*i32" if a in INT_POINTERS
               else f"*{args.dtype}" if a in DOT_POINTERS else "*fp32" for a in kernel.arg_names}
        t0 = time.time()
        compiled = triton.compile(ASTSource(kernel, sig, constexprs=const), target=GPUTarget("cuda", 90, 64),
                                  options={"num_warps": p["num_warps"]})
        seconds = time.time() - t0
        report = ""
        if os.path.exists(ptxas):
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
                fh.write(compiled.asm["ptx"])
            out = subprocess.run([ptxas, "-arch=sm_90a", "-v", fh.name, "-o", os.devnull], capture_output=True,
                                 text=True)
            report = " | ".join(line.split(":", 1)[-1].strip() for line in out.stderr.splitlines()
                                if "registers" in line or "spill" in line)
        print(f"{name}: compiled in {seconds:.1f} s; shared {compiled.metadata.shared} B; ptxas: {report}",
              flush=True)


if __name__ == "__main__":
    main()
