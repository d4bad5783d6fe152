"""Every mLSTM and sLSTM Triton launch setting compiles for sm_90 (Hopper), without a GPU.

The interpreter runs kernels as Python, so it accepts code that the compiler rejects (a global that is not a
`tl.constexpr` value, say). Two modes, two processes:
    record OUT.json   under TRITON_INTERPRET=1: run a few interpreter cases (both gates, fp32 and bf16,
                      cu_seqlens, tensor-descriptor loads, masked steps, the decode step; the sLSTM forward
                      and backward in the CUDA launch layouts, with and without packed documents) and write
                      down each launch's kernel, argument types and constexprs. The sLSTM head barrier
                      (programs of one head wait for each other) cannot run in the interpreter, which runs
                      programs one by one: its settings are the recorded split-head ones with the barrier on;

    compile IN.json   without the interpreter: compile each distinct setting for sm_90 with Triton's own
                      ptxas and print one JSON line per setting.
"""
from __future__ import annotations

import importlib
import inspect
import json
import sys

import torch

DTYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16",
          torch.int32: "i32", torch.int64: "i64", torch.bool: "i1", torch.uint8: "u8"}


def arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i64" if abs(value) >= 2**31 else "i32"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for an argument of type {type(value).__name__}")


def record(out: str) -> None:
    from triton.runtime import interpreter

    settings: dict[str, dict] = {}
    original = interpreter.InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        params = inspect.signature(self.fn).parameters
        bound = {**dict(zip(params, args)), **{k: v for k, v in kwargs.items() if k in params}}
        types, const = {}, {}
        for name, p in params.items():
            value = bound.get(name, p.default)
            if "constexpr" in str(p.annotation) or value is None:
                const[name] = value
            else:
                types[name] = arg_type(value)
        opts = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages", "maxnreg")}
        flags = {k: v for k, v in const.items() if not isinstance(v, int) or isinstance(v, bool)}
        key = json.dumps([self.fn.__module__, self.fn.__name__, flags, types], sort_keys=True, default=str)
        settings.setdefault(key, dict(module=self.fn.__module__, name=self.fn.__name__, types=types, const=const,
                                      opts=opts))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = run
    import _mlstm_triton_cases as cases  # noqa: E402 (after the patch: the cases print their own result lines)

    cases.sequence_case("sm90_exp", 1, 2, 37, 16, 32, init="random")
    cases.sequence_case("sm90_sigmoid_bf16", 1, 1, 40, 16, 16, gate="sigmoid", dtype=torch.bfloat16, tol=5e-2)
    cases.sequence_case("sm90_varlen_desc", 1, 2, 50, 16, 32, init="random", cu=[0, 3, 21, 50], window=32,
                        cp=(("desc", True),))
    cases.gate_rows_case("sm90_gate_rows", "exp")
    cases.step_case("sm90_step")
    cases.step_case("sm90_step_sigmoid", gate="sigmoid")
    slstm_launches()
    found = list(settings.values())
    for s in list(found):  # the split-head layouts as the GPU runs them: one launch, a barrier per step
        if s["name"].startswith("slstm_") and s["const"]["BJ"] < s["const"]["DH"]:
            found.append(dict(s, const=dict(s["const"], USE_BARRIER=True, CTA_SYNC=False)))
    with open(out, "w") as fh:
        json.dump(found, fh, default=str)


def slstm_launches() -> None:
    """The sLSTM kernels in the layouts the GPU uses: R resident (bf16 dots), streamed (fp32 IEEE dots), a whole
    head per program or split over programs, the no-grad forward with h in registers; plain and packed."""
    from flashxlstm.ops.slstm_cell.triton import slstm_triton

    g = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 2, 3, 5])
    runs = [(torch.bfloat16, 16, None, {"registers": False}, None), (torch.bfloat16, 16, None, {"registers": False}, cu),
            (torch.bfloat16, 40, 16, {}, cu), (torch.float32, 20, 16, {"registers": False, "resident_limit": 0}, cu)]
    for j, (dtype, DH, block_j, tune, cu) in enumerate(runs):
        B, N = (2, 2) if cu is None else (1, 3)
        x = (torch.randn(B, 5, 4, 1, DH, generator=g)).to(dtype).requires_grad_(True)
        R = (torch.randn(4, 1, DH, DH, generator=g) / DH**0.5).to(dtype).requires_grad_(True)
        b = torch.randn(4, 1, DH, generator=g).requires_grad_(True)
        state = tuple(torch.rand(N, 1, DH, generator=g) + 0.5 for _ in range(4))
        h, st = slstm_triton(x, R, b, state, block_j=block_j, tune=tune, cu_seqlens=cu)
        (h.sum() + st[0].sum()).backward()
        if j < 2:
            with torch.no_grad():  # the inference forward: one state slot, h in registers (a head per program)
                slstm_triton(x.detach(), R.detach(), b.detach(), state, cu_seqlens=cu)


def compile_all(path: str) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for s in json.load(open(path)):
        kernel = getattr(importlib.import_module(s["module"]), s["name"])
        while not isinstance(kernel, triton.runtime.JITFunction):
            kernel = kernel.fn
        sig = {name: ("constexpr" if name in s["const"] else s["types"][name]) for name in kernel.arg_names}
        opts = {"num_warps": s["opts"].get("num_warps", 4), "num_stages": s["opts"].get("num_stages", 2)}
        if s["opts"].get("maxnreg"):
            opts["maxnreg"] = s["opts"]["maxnreg"]
        try:
            triton.compile(ASTSource(kernel, sig, constexprs=s["const"]), target=GPUTarget("cuda", 90, 64),
                           options=opts)
            error = None
        except Exception as ex:  # the innermost cause names the offending line
            while (ex.__cause__ or ex.__context__) is not None:
                ex = ex.__cause__ or ex.__context__
            error = f"{type(ex).__name__}: {str(ex)[-400:]}"
        print(json.dumps({"kernel": s["name"], "const": s["const"], "error": error}, default=str), flush=True)


if __name__ == "__main__":
    {"record": record, "compile": compile_all}[sys.argv[1]](sys.argv[2])
