"""torch.compile for training, one region at a time: every residual block, and the head's loss per chunk.

    compile_regions(loss_module, backend="inductor", mode=None)   # a CausalLMLoss, before DDP / FSDP wrap it

Each residual block's forward is compiled on its own (after `checkpoint_blocks`, so an activation-checkpointed
block compiles with its checkpoint inside, which the compiler turns into a recomputed region), and so is the
loss of one cross-entropy chunk (head matmul, soft cap, cross-entropy). Why regions and not the whole model:
- Compile time does not grow with depth. The blocks of a model share their code and shapes, so the compiler
  traces and generates one block and reuses it for every other one.
- The module tree stays as it is: parameter names and state-dict keys keep no `_orig_mod.` prefix, and DDP's
  and FSDP2's hooks stay outside the compiled code, so checkpoints and parallelism see the same model.
- Inside a block the compiler fuses what eager mode runs as separate kernels: the norms, the casts to the
  autocast dtype, the gate soft caps, sigmoid(o) * norm(h), SwiGLU's product and the residual adds. The Triton
  mLSTM and sLSTM ops are custom ops with fake functions, opaque to it: one call each, no graph break. The
  torch forms on the CPU read packed-document offsets on the host, a graph break there, which compiles the
  parts around it (or, inside an activation checkpoint, leaves the block eager): still correct, less fused.
Embeddings and the final norm stay eager (one small kernel each per step).
"""
from __future__ import annotations

import torch
from torch import nn

from .lm_loss import chunk_loss
from .presets import blocks_of


def compile_regions(loss_module: nn.Module, *, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    """Compile every residual block of `loss_module.model` and `loss_module`'s chunk loss, in place; returns
    loss_module. mode: torch.compile's mode (None, "max-autotune-no-cudagraphs", ...)."""
    options = {"backend": backend, "mode": mode}
    for block in blocks_of(loss_module.model):
        block.forward = torch.compile(block.forward, **options)
    loss_module.chunk_loss = torch.compile(chunk_loss, **options)
    return loss_module
