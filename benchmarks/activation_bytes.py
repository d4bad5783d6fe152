"""Activation memory per token per layer: one xLSTM-7B-family block against one Llama decoder layer, by tensor.

    python benchmarks/activation_bytes.py --preset large-1.3b --batch 2 --seq 80 \
        --out benchmarks/results/activation_bytes.md

What it runs. One block of ours (RMSNorm, the mLSTM layer, residual add, RMSNorm, SwiGLU, residual add: the
training path `flashxlstm train` and bench_train.py run, packed rows through cu_seqlens, the mLSTM layer's
stacked projections, the Triton mLSTM custom op and the fused head-norm x gate x out-projection op) and one
transformers LlamaDecoderLayer of the width and FFN size bench_train.py matches to the preset (SDPA
attention, 128-wide heads), each on an fp32 residual-stream input that requires grad, fp32 weights, under
bf16 autocast. No GPU is needed: the Triton ops run in Triton's CPU interpreter (TRITON_INTERPRET=1, set here
before Triton is imported) at a small sequence length, so ours takes the same custom ops, with the same saved
outputs, that it takes on CUDA.

What it counts. Every tensor autograd saves for the backward (torch.autograd.graph.saved_tensors_hooks), each
storage once (views of one buffer share untyped_storage().data_ptr(), and a saved view keeps its whole buffer
alive, so a storage counts with all its bytes). Alive until the backward is exactly this set plus the block's
output; the output is the next block's input, which that block saves (its first norm saves it), so the
block's own input is counted here and its output there. Not per token and left out of the totals: the
parameters and the bf16 copies of the weights (per model), Llama's RoPE cos / sin (computed once per model
forward and shared by every layer). Each storage is labelled with the op that produced it and the autograd
nodes that saved it. Bytes per token = storage bytes / (batch x seq), B, S and B x S being unequal to every
model dimension so that a shape says what a storage grows with; storages per sequence (the mLSTM states) are
spread over one row's tokens, and the totals are also given at bench_train's 2 x 8192 (--at), where the mLSTM
op adds the fp32 states entering each backward time window (from its own output-shape function; none at a
short S).

Two modes. Eager: the modules as they run without compile (producers from a TorchDispatchMode). Compiled: what
Inductor decides to keep, without its code generation: torch.compile with AOTAutograd, Inductor's
decompositions and its min-cut partitioner (which recomputes cheap pointwise work such as casts, norms and the
SiLU in the backward instead of saving it), the partitioned graphs then run op by op (producers from the
forward graph's outputs); bench_train.py compiles ours per block and Llama per decoder layer, as here.

Limits. Inductor's own graph passes after partitioning are not run, so the compiled account is the
partitioner's choice, not a CUDA measurement. The CPU's autocast lists are used (linear and SDPA run in bf16,
norms see the fp32 residual stream), which agree with CUDA's for the ops of both blocks. On CUDA F.rms_norm is
one fused kernel that saves its input, weight and 1/rms (FusedRmsNormBackward0 in torch's generated
autograd/Functions.h); on the CPU it is a composite that saves more, so ours' eager account runs a stand-in with
the CUDA kernel's saved set (CudaRmsNorm; Llama's RMSNorm is written out in Python and is the composite on both
devices; compiled, both are decomposed alike). Llama's attention on the CPU runs torch's flash-attention kernel
for CPU, which saves what the CUDA flash path saves (q, k, v, the output, the logsumexp; not the attention
matrix; CUDA adds two 8-byte RNG words); the script says which kernel ran. Only the saved set is counted, not
the transient buffers of the forward and backward passes of one layer (the peak adds those of one layer).
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported: the custom ops run on the CPU

import argparse  # noqa: E402
import contextlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))


class Producers(TorchDispatchMode):
    """storage data_ptr -> the op that last wrote a fresh storage there (views and in-place ops skipped)."""

    def __init__(self):
        super().__init__()
        self.by_ptr: dict[int, str] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        if not func._schema.is_mutable:
            names = OUTPUT_NAMES.get(_op_name(func), ())
            for index, t in enumerate(_tensors(out)):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in ins:
                    self.by_ptr[ptr] = _op_name(func) + (f" [{names[index]}]" if index < len(names) else "")
        return out


# the outputs of the custom ops, in order (ops/mlstm_cell/triton/function.py _outputs, ops/fused/head_norm_gate_seq.py)
OUTPUT_NAMES = {"flashxlstm::mlstm_triton_fwd": ("h", "C final", "n final", "m final", "h_lo", "m per step",
                                                  "den per step", "window C", "window n", "window m"),
                "flashxlstm::head_norm_gate_linear_fwd": ("out", "mean", "rstd")}


def _op_name(func) -> str:
    name = func.name()
    return name.split("::", 1)[-1].replace(".default", "") if name.startswith("aten::") else name.replace(".default", "")


def _tensors(tree):
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def saved_by_nodes(root) -> dict[int, set]:
    """storage data_ptr -> names of the autograd nodes that saved it (a walk of the graph from root)."""
    seen, stack, out = set(), [root], defaultdict(set)
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        values = []
        for attr in dir(node):
            if attr.startswith("_saved_"):
                try:
                    values.append(getattr(node, attr))
                except RuntimeError:  # freed or not a tensor
                    pass
        if hasattr(node, "saved_tensors") and not name.endswith("Backward0"):
            try:
                values.extend(node.saved_tensors)
            except RuntimeError:
                pass
        for t in _tensors(values):
            out[t.untyped_storage().data_ptr()].add(name.replace("Backward0", "").replace("Backward", ""))
        stack.extend(f for f, _ in node.next_functions)
    return out


def account(run, params: list[torch.Tensor], shared: list[torch.Tensor], B: int, S: int, compiled: bool = False):
    """Run `run()` (returns the output) and return the saved storages: {ptr: dict(bytes, shape, dtype, op,
    saved_by, kind)} and the output."""
    saved: dict[int, dict] = {}

    def pack(t):
        s = t.untyped_storage()
        base = t if t._base is None else t._base  # a saved view keeps its whole buffer: name the buffer
        entry = saved.setdefault(s.data_ptr(), dict(bytes=s.nbytes(), shape=tuple(base.shape), dtype=base.dtype))
        if base.numel() * base.element_size() > entry.get("view_bytes", 0):
            entry.update(shape=tuple(base.shape), dtype=base.dtype, view_bytes=base.numel() * base.element_size())
        return t

    producers = Producers()
    GRAPH_PRODUCERS.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), (contextlib.nullcontext() if compiled
                                                                         else producers):
        out = run()
    producers.by_ptr.update(GRAPH_PRODUCERS)
    nodes = saved_by_nodes(out.grad_fn)
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    shared_ptrs = {t.untyped_storage().data_ptr() for t in shared}
    for ptr, e in saved.items():
        e["op"] = producers.by_ptr.get(ptr, "(input)")
        e["saved_by"] = ", ".join(sorted(nodes.get(ptr, {"?"})))
        # B, S and B * S are chosen unequal to every model dimension, so a shape tells what a storage scales with
        if ptr in param_ptrs:
            e["kind"] = "parameter"
        elif ptr in shared_ptrs:
            e["kind"] = "shared by all layers"
        elif S in e["shape"] or B * S in e["shape"]:
            e["kind"] = "activation"
        elif e["shape"] and e["shape"][0] == B:
            e["kind"] = "per sequence"
        else:
            e["kind"] = "weight copy"
    return saved, out


class CudaRmsNorm(torch.autograd.Function):
    """F.rms_norm as CUDA runs it: one fused kernel (aten::_fused_rms_norm) whose autograd node
    (FusedRmsNormBackward0 in torch's generated autograd/Functions.h) saves the input, the weight and the
    per-row 1/rms. On the CPU F.rms_norm is a composite of pow, mean, rsqrt and mul that saves two full
    fp32 tensors per norm instead; this stands in for the CUDA kernel in ours' account (Llama's LlamaRMSNorm is
    written out in Python and is the same composite on both devices)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd * weight).to(torch.promote_types(x.dtype, weight.dtype))

    @staticmethod
    def backward(ctx, g):
        x, weight, rstd = ctx.saved_tensors
        xh = x.to(rstd.dtype) * rstd
        gw = g.to(rstd.dtype) * weight
        dx = rstd * (gw - xh * (gw * xh).mean(-1, keepdim=True))
        return dx.to(x.dtype), (g.to(rstd.dtype) * xh).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype), None


def _cuda_rms_norm(x, normalized_shape, weight=None, eps=None):
    return CudaRmsNorm.apply(x, weight, 1e-6 if eps is None else eps)


# storage data_ptr -> the graph node that produced it, for the outputs of the compiled forward graphs (a
# dispatch mode would make torch.compile fall back to eager, so compiled runs are labelled from their graphs)
GRAPH_PRODUCERS: dict[int, str] = {}


def partitioned(fn):
    """fn under torch.compile with what Inductor decides about saving, without its code generation: AOTAutograd
    with Inductor's decompositions and its min-cut partitioner (which recomputes cheap pointwise work in the
    backward instead of saving it), the graphs then run op by op."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table

    def forward_compiler(gm, _):
        (outputs,) = [n.args[0] for n in gm.graph.nodes if n.op == "output"]
        names = [_node_name(n) for n in outputs]

        def run(*args):
            out = gm(*args)
            for name, t in zip(names, out):
                if isinstance(t, torch.Tensor):
                    GRAPH_PRODUCERS[t.untyped_storage().data_ptr()] = name
            return out

        return run

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=lambda gm, _: gm,
                           partition_fn=min_cut_rematerialization_partition, decompositions=select_decomp_table())
    return torch.compile(fn, backend=backend)


VIEWS = ("aten.view.default", "aten._unsafe_view.default", "aten.permute.default", "aten.t.default",
         "aten.transpose.int", "aten.slice.Tensor", "aten.alias.default", "aten.expand.default",
         "aten.unsqueeze.default", "aten.squeeze.dim", "aten.reshape.default")


def _node_name(node) -> str:
    """The op that made a forward-graph output's buffer: through views and aliases, custom-op outputs by name."""
    import operator

    while True:
        if node is None or not hasattr(node, "op"):
            return "?"
        if node.op == "placeholder":
            return "(input)"
        if node.target is operator.getitem:
            src, index = node.args
            if src.op == "call_function" and "flashxlstm" in str(src.target):
                op = str(src.target).replace("flashxlstm.", "flashxlstm::").replace(".default", "")
                names = OUTPUT_NAMES.get(op, ())
                return op + (f" [{names[index]}]" if index < len(names) else "")
            node = src
        elif str(node.target) in VIEWS or str(node.target).startswith("aten.split"):
            node = node.args[0]  # a view: name the op that made the buffer
        else:
            return str(node.target).replace("aten.", "").replace(".default", "")


def ours_block(preset: str, vocab: int, B: int, S: int, keep_h_lo: bool, compiled: bool):
    from flashxlstm.models.xlstm_large import mLSTMLargeBlock, xLSTMLargeConfig
    from flashxlstm.training.presets import resolve_model

    _, fields = resolve_model(preset, vocab)
    cfg = xLSTMLargeConfig(**fields, backend="triton", norm_gate_backend="triton", keep_h_lo=keep_h_lo)
    torch.manual_seed(0)
    block = mLSTMLargeBlock(cfg).train()
    x = torch.randn(B, S, cfg.embedding_dim, requires_grad=True)
    cu = torch.arange(0, B * S + 1, S, dtype=torch.int32)  # bench_train: every row its own document
    forward = (lambda x: block(x, cu_seqlens=cu)[0])
    forward = partitioned(forward) if compiled else forward

    def run():
        import torch.nn.functional as F

        plain = F.rms_norm
        if not compiled:  # compiled, the norm is decomposed and partitioned like Llama's
            F.rms_norm = _cuda_rms_norm  # the CUDA kernel's saved set (CudaRmsNorm)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return forward(x)
        finally:
            F.rms_norm = plain

    return block, run, cfg, ()


def llama_layer(preset: str, vocab: int, B: int, S: int, compiled: bool):
    from bench_train import build_ours, llama_config
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    with torch.device("meta"):
        ours_meta, _ = build_ours(preset, vocab, torch.device("meta"), False)
    target = sum(p.numel() for p in ours_meta.parameters())
    cfg = llama_config(ours_meta.config.embedding_dim, target, vocab)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(cfg, layer_idx=0).float().train()
    rotary = LlamaRotaryEmbedding(cfg)
    x = torch.randn(B, S, cfg.hidden_size, requires_grad=True)
    pos = torch.arange(S)[None].expand(B, S)
    cos, sin = rotary(x, pos)  # once per model forward (LlamaModel), shared by every layer

    def forward(x):
        out = layer(x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
        return out[0] if isinstance(out, tuple) else out

    forward = partitioned(forward) if compiled else forward  # bench_train compiles each layer's forward

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(x)

    return layer, run, cfg, (cos, sin)


def mlstm_residuals_at(cfg, B: int, S: int, keep_h_lo: bool) -> dict:
    """Bytes of each residual output of the mLSTM op at B x S packed rows (bench_train's layout), from the
    op's own output-shape function (_outputs, what its fake function allocates)."""
    from flashxlstm.ops.mlstm_cell.triton import function as tfn

    NH, DQK, DV = cfg.num_heads, cfg.qk_head_dim_total // cfg.num_heads, cfg.v_head_dim_total // cfg.num_heads
    q = torch.empty(1, NH, B * S, DQK, dtype=torch.bfloat16, device="meta")
    v = torch.empty(1, NH, B * S, DV, dtype=torch.bfloat16, device="meta")
    cu = torch.arange(0, B * S + 1, S, dtype=torch.int32, device="meta")
    names = ["h", "C", "n", "m", "hlo", "mstat", "dstat", "Ew", "En", "Em"]
    variant = tfn.Variant(keep_h_lo=keep_h_lo)
    shapes = tfn._outputs(q, v, cu, cfg.chunk_size, variant, True)
    return {n: int(torch.Size(s).numel()) * torch.empty(0, dtype=dt).element_size() for n, (s, dt) in zip(names, shapes)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="large-1.3b")
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=80, help="B, S and B x S must differ from every model dimension")
    p.add_argument("--at", default="2x8192", help="B x S at which the totals are also given (bench_train's point)")
    p.add_argument("--out", default=None, help="markdown file to write")
    args = p.parse_args()
    import transformers
    import triton

    B, S = args.batch, args.seq
    T = B * S
    AB, AS = map(int, args.at.split("x"))
    lines: list[str] = []
    emit = lambda s="": (print(s), lines.append(s))
    emit(f"# Activation bytes per token per layer: {args.preset} block vs the matched Llama decoder layer")
    emit()
    emit(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    emit(f"machine: CPU ({platform.machine()}), Triton {triton.__version__} interpreter (TRITON_INTERPRET="
         f"{os.environ.get('TRITON_INTERPRET')}), torch {torch.__version__}, transformers {transformers.__version__}, "
         f"python {platform.python_version()}; bf16 autocast (CPU), fp32 weights; {B} x {S} tokens; eager, and "
         f"compiled = AOTAutograd with Inductor's decompositions and min-cut partitioner (no code generation)")
    emit()
    emit("Method and limits: the module docstring of benchmarks/activation_bytes.py.")
    emit()
    results = {}
    sides = [("ours, keep_h_lo true", True), ("ours, keep_h_lo false", False), ("llama", None)]
    for mode in ("eager", "compiled"):
        for side, keep in sides:
            compiled = mode == "compiled"
            if keep is None:
                module, run, cfg, shared = llama_layer(args.preset, args.vocab, B, S, compiled)
            else:
                module, run, cfg, shared = ours_block(args.preset, args.vocab, B, S, keep, compiled)
            if compiled:
                run()  # compiles; the measured call below reuses the graphs
            saved, _ = account(run, list(module.parameters()), list(shared), B, S, compiled)
            results[(side, mode)] = (saved, cfg, keep)
    for mode in ("eager", "compiled"):
        for side, keep in sides:
            saved, cfg, keep = results[(side, mode)]
            _table(emit, f"{side}, {mode}", saved, cfg, keep, T)
    # totals at the target shape: per-token storages scale; per-sequence ones (the mLSTM states) do not
    emit(f"## Totals per token per layer (KiB), at {B} x {S} and at {AB} x {AS}")
    emit()
    emit(f"| side | eager, {B} x {S} | eager, {AB} x {AS} | compiled, {B} x {S} | compiled, {AB} x {AS} |")
    emit("|---|---|---|---|---|")
    for side, keep in sides:
        cells = []
        for mode in ("eager", "compiled"):
            saved, cfg, keep = results[(side, mode)]
            cells += [f"{v / 1024:.2f}" for v in _totals(saved, cfg, keep, B, S, AB, AS)]
        emit(f"| {side} | " + " | ".join(cells) + " |")
    emit()
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


def _table(emit, title: str, saved: dict, cfg, keep, T: int) -> None:
    act = sorted((e for e in saved.values() if e["kind"] == "activation"), key=lambda e: -e["bytes"])
    dims = (f"width {cfg.hidden_size}, FFN {cfg.intermediate_size}, {cfg.num_attention_heads} heads"
            if keep is None else f"width {cfg.embedding_dim}, {cfg.num_heads} heads, qk {cfg.qk_head_dim_total}, "
                                 f"v {cfg.v_head_dim_total}, FFN {cfg.ffn_hidden_dim}")
    emit(f"## {title} ({dims})")
    emit()
    emit("| saved tensor | produced by | saved by | shape (the buffer or its largest saved view) | dtype | bytes / token |")
    emit("|---|---|---|---|---|---|")
    for e in act:
        emit(f"| {_describe(e)} | `{e['op']}` | {e['saved_by']} | {tuple(e['shape'])} | "
             f"{str(e['dtype']).replace('torch.', '')} | {e['bytes'] / T:,.1f} |")
    total = sum(e["bytes"] for e in act)
    emit(f"| **total per token** | | | | | **{total / T:,.1f}** ({total / T / 1024:.2f} KiB) |")
    for e in sorted((e for e in saved.values() if e["kind"] == "per sequence"), key=lambda e: -e["bytes"]):
        emit(f"| {_describe(e)} (per sequence) | `{e['op']}` | {e['saved_by']} | {tuple(e['shape'])} | "
             f"{str(e['dtype']).replace('torch.', '')} | {e['bytes'] / T:,.1f} |")
    other = defaultdict(int)
    for e in saved.values():
        if e["kind"] not in ("activation", "per sequence"):
            other[e["kind"]] += e["bytes"]
    if other:
        emit()
        emit("Not per token, left out of the totals: " + "; ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in other.items())
             + ".")
    if keep is None:
        flash = any("FlashAttention" in e["saved_by"] or "flash_attention" in e["op"] for e in saved.values())
        emit()
        emit("The attention ran " + ("torch's flash-attention kernel for CPU (it saves q, k, v, the output and the "
                                     "logsumexp: the CUDA flash path's set)" if flash else
                                     "an SDPA kernel other than flash attention: its saved set is not CUDA's"))
    emit()


def _totals(saved: dict, cfg, keep, B: int, S: int, AB: int, AS: int) -> tuple[float, float]:
    """Bytes per token per layer at B x S and at AB x AS (per-sequence storages spread over one row's tokens;
    the mLSTM op's fp32 states at each backward window start, none at a short S, from its shape function)."""
    total = sum(e["bytes"] for e in saved.values() if e["kind"] == "activation")
    per_seq = sum(e["bytes"] for e in saved.values() if e["kind"] == "per sequence")
    small = (total + per_seq) / (B * S)
    at = total / (B * S) + per_seq / B / AS
    if keep is not None:
        lo, hi = mlstm_residuals_at(cfg, B, S, keep), mlstm_residuals_at(cfg, AB, AS, keep)
        windows = ("Ew", "En", "Em")
        at += (sum(hi[n] for n in windows) - sum(lo[n] for n in windows) * AB / B) / (AB * AS)
    return small, at


def _describe(e: dict) -> str:
    op = e["op"]
    if op.startswith("flashxlstm::"):
        return op.split("[")[-1].rstrip("]") if "[" in op else op
    return {"_to_copy": "autocast copy", "prims.convert_element_type": "autocast copy", "addmm": "linear output",
            "mm": "linear output", "(input)": "block input", "zeros": "zero initial state", "full": "zero initial state",
            "silu": "silu output", "mul.Tensor": "product", "add.Tensor": "residual sum"}.get(op, op.split(".")[0])


if __name__ == "__main__":
    raise SystemExit(main())
