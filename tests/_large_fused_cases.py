"""Child process of test_large_fused_decode.py: runs with TRITON_INTERPRET=1 and prints one JSON line per case.

Each case compares a fused Triton path (the decode glue kernels, the step kernel reading strided views with
the gate soft cap inside, the whole xLSTM-7B-family decode step) with the unfused torch path and reports
the largest differences; the test file holds the tolerances.
"""
from __future__ import annotations


import torch
from _case_output import emit, rel

from flashxlstm import xLSTMLarge, xLSTMLargeConfig
from flashxlstm.generation import generate
from flashxlstm.ops.fused import add_rms_norm, head_norm_gate, mlstm_layer_step, silu_mul
from flashxlstm.ops.mlstm_cell import STEP_BACKENDS, mlstm_step

torch.manual_seed(1234)


def glue(dtype: torch.dtype) -> None:
    """Odd sizes (D = 100, head dim 24, hidden 70), strided inputs, with and without bias and residual."""
    errs = {}
    x, y = torch.randn(3, 1, 100, dtype=dtype), torch.randn(3, 1, 100, dtype=dtype)
    w, b = torch.randn(100, dtype=dtype), torch.randn(100, dtype=dtype)
    for bias in (None, b):
        for res in (None, y):
            got = add_rms_norm(x, res, w, bias, 1e-6, backend="triton")
            want = add_rms_norm(x, res, w, bias, 1e-6, backend="torch")
            errs[f"add_rms_norm bias={bias is not None} y={res is not None}"] = max(rel(g, t) for g, t in zip(got, want))
    h, o = torch.randn(3, 4, 24, dtype=dtype), torch.randn(3, 200, dtype=dtype)[:, 50:146]  # o: a strided view
    w, b = torch.randn(96, dtype=dtype), torch.randn(96, dtype=dtype)
    for bias in (None, b):
        errs[f"head_norm_gate bias={bias is not None}"] = rel(head_norm_gate(h, o, w, bias, 1e-5, backend="triton"),
                                                              head_norm_gate(h, o, w, bias, 1e-5, backend="torch"))
    gate, z = torch.randn(3, 1, 140, dtype=dtype).split(70, dim=-1)
    errs["silu_mul"] = rel(silu_mul(gate, z, backend="triton"), silu_mul(gate, z, backend="torch"))
    emit(f"glue_{str(dtype).split('.')[-1]}", errs=errs)


def step_views() -> None:
    """The step kernel on views into one projection output, gates soft-capped inside, vs the torch step."""
    B, NH, DQK, DV = 2, 3, 20, 12
    qkvo = torch.randn(B, 2 * NH * DQK + 2 * NH * DV) * 2
    q, k, v, _ = qkvo.split([NH * DQK, NH * DQK, NH * DV, NH * DV], dim=-1)
    heads = lambda t: t.unflatten(-1, (NH, -1))
    gates = torch.randn(B, 2 * NH) * 40  # beyond the cap of 15 both ways
    i, f = gates.split(NH, dim=-1)
    state = (torch.randn(B, NH, DQK, DV), torch.randn(B, NH, DQK), torch.randn(B, NH))
    h, new = STEP_BACKENDS["triton"](heads(q), heads(k), heads(v), i, f, state, gate_soft_cap=15.0)
    cap = lambda t: 15.0 * torch.tanh(t / 15.0)
    hr, ref = mlstm_step(heads(q), heads(k), heads(v), cap(i), cap(f), state=state, backend="torch")
    emit("step_views", h=rel(h, hr), state=max(rel(a, b) for a, b in zip(new, ref)))


def layer_step(layout, name: str) -> None:
    """The layer step (gate projections, soft cap, step, per-head norm, sigmoid(o)) in one layout vs torch.
    Odd sizes: D = 100, NH = 3, DQK = 20, DV = 12; gates beyond the cap; with and without a norm bias; a
    normal state and an empty one (m = -inf); out buffers."""
    from importlib import import_module

    impl = import_module("flashxlstm.ops.fused.layer_step")
    B, NH, DQK, DV, D = 2, 3, 20, 12, 100
    x = torch.randn(B, D)
    qkvo = torch.randn(B, 2 * NH * DQK + 2 * NH * DV)
    q, k, v, o = qkvo.split([NH * DQK, NH * DQK, NH * DV, NH * DV], dim=-1)
    heads = lambda t: t.unflatten(-1, (NH, -1))
    W, bias = torch.randn(2 * NH, D), torch.randn(2 * NH) * 20
    (w_i, w_f), (b_i, b_f) = W.split(NH), bias.split(NH)
    nw, nb = torch.randn(NH * DV), torch.randn(NH * DV)
    errs = {}
    for st_name, st in (("state", (torch.randn(B, NH, DQK, DV), torch.randn(B, NH, DQK), torch.randn(B, NH))),
                        ("empty", (torch.zeros(B, NH, DQK, DV), torch.zeros(B, NH, DQK),
                                   torch.full((B, NH), float("-inf"))))):
        for norm_bias in (None, nb):
            args = (x, heads(q), heads(k), heads(v), o, w_i, w_f, b_i, b_f, st, nw, norm_bias)
            out = tuple(torch.empty_like(t) for t in st)
            y, new = impl.mlstm_layer_step_triton(*args, out=out, layout=layout)
            yr, ref = mlstm_layer_step(*args, backend="torch")
            key = f"{st_name} bias={norm_bias is not None}"
            errs[key] = max([rel(y, yr)] + [rel(a, b) for a, b in zip(new, ref) if b.isfinite().all()])
            errs[key + " into out"] = float(not all(a is b for a, b in zip(new, out)))
    emit(name, errs=errs)


def gemv() -> None:
    """The one-row matrix-vector kernel (odd N and K, K over one block) with and without bias and SiLU x z."""
    from flashxlstm.ops.fused.linear import linear_decode

    errs = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, z = torch.randn(1, 1, 700, dtype=dtype), torch.randn(1, 1, 700, dtype=dtype)
        W, b = torch.randn(37, 700, dtype=dtype), torch.randn(37, dtype=dtype)
        for bias in (None, b):
            for zz in (None, z):
                got = linear_decode(x, W, bias, z=zz, backend="triton")
                want = linear_decode(x, W, bias, z=zz, backend="torch")
                errs[f"{str(dtype)[6:]} bias={bias is not None} glu={zz is not None}"] = rel(got, want)
    emit("gemv", errs=errs)


def model(weight_mode: str, **over) -> xLSTMLarge:
    cfg = xLSTMLargeConfig(embedding_dim=48, num_heads=2, num_blocks=2, vocab_size=97, chunk_size=8,
                           weight_mode=weight_mode, step_backend="torch", **over)
    m = xLSTMLarge(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def set_step(m: xLSTMLarge, backend: str) -> xLSTMLarge:
    for blk in m.backbone.blocks:
        blk.mlstm_layer.step_backend = backend
    return m


@torch.no_grad()
def whole_step(name: str, weight_mode: str, batch: int = 3, **over) -> None:
    """The whole-model decode step through the fused kernels equals the unfused step (fp32, CPU)."""
    m = model(weight_mode, **over)
    ids = torch.randint(0, 97, (batch, 11))
    _, state = m(ids[:, :10])
    lu, su = m(ids[:, 10:], state)
    set_step(m, "triton")
    fused_taken = m.backbone.blocks[0].mlstm_layer.uses_fused_decode(m.backbone.embeddings(ids[:, 10:]), state[0])
    lf, sf = m(ids[:, 10:], state)
    bufs = tuple(tuple(torch.empty_like(t) for t in s) for s in state)
    lo, so = m(ids[:, 10:], state, state_out=bufs)
    into = all(a is b for s, bs in zip(so, bufs) for a, b in zip(s, bs))
    emit(name, fused_taken=fused_taken, logits=rel(lf, lu), state=max(rel(a, b) for s, t in zip(sf, su) for a, b in zip(s, t)),
         state_out_equal=max(rel(a, b) for s, t in zip(so, sf) for a, b in zip(s, t)) + rel(lo, lf), into_buffers=into)


@torch.no_grad()
def static_generate() -> None:
    """generate on static buffers with the fused step (the CUDA-graph code path, run eagerly) == unfused eager."""
    m = model("fused")
    prompt = torch.randint(0, 97, (2, 5))
    want = generate(m, prompt, 4)
    got = generate(set_step(m, "triton"), prompt, 4, use_cuda_graph=True)
    emit("static_generate", equal=bool(torch.equal(got, want)))


if __name__ == "__main__":
    glue(torch.float32)
    glue(torch.bfloat16)
    step_views()
    whole_step("model_fused", "fused")
    whole_step("model_single_bias_nocap", "single", use_bias=True, gate_soft_cap=None)
    layer_step((16, 32, 4, False), "layer_step_split")
    layer_step((16, 8, 4, True), "layer_step_whole")
    gemv()
    # one row: under the interpreter every projection is the Triton matrix-vector kernel too
    whole_step("model_fused_gemv", "fused", batch=1)
    whole_step("model_single_bias_gemv", "single", batch=1, use_bias=True)
    static_generate()
