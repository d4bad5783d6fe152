"""Training's compiled and memory-lean paths against the plain eager ones (CPU).

- compile_regions (training/compile.py: every block and the loss chunk compiled on their own) gives the eager
  loss and every gradient of a 7B-family CausalLMLoss in float64 (rows and packed documents, activation
  checkpointing off and on), and the blocks share one compiled graph. Backend aot_eager: Dynamo's capture and
  AOTAutograd's joint graph as Inductor sees them, without Inductor's C++ code generation, which takes minutes
  per graph on a 2-core machine (FLASHXLSTM_COMPILE_BACKEND=inductor runs it).
- The stacked projections of the training forward (nn/stacked.py: one matmul for q, k, v, o and both gates,
  one for SwiGLU's two up projections) equal the separate layers of eval mode in float64, outputs and
  gradients, and under bf16 autocast they keep fewer bytes for the backward: one low-precision copy of the
  normed input per matmul group instead of one per layer.
"""
import os

import pytest
import torch
from torch._dynamo.utils import counters

from flashxlstm.training.compile import compile_regions
from flashxlstm.training.lm_loss import CausalLMLoss, checkpoint_blocks
from flashxlstm.training.presets import build_model

BACKEND = os.environ.get("FLASHXLSTM_COMPILE_BACKEND", "aot_eager")
FIELDS = dict(vocab_size=64, embedding_dim=32, num_blocks=2, num_heads=2, chunk_size=8, ffn_dim=64)


def loss_and_grads(module, ids, targets, cu):
    loss_sum, count, _ = module(ids, targets, cu)
    loss = loss_sum / count
    return loss.detach(), torch.autograd.grad(loss, list(module.parameters()))


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("ac", [False, True], ids=["no-ac", "ac"])
@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_compiled_regions_equal_eager_loss_and_gradients(gen, packed, ac):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = build_model("large", FIELDS).double()
    with torch.no_grad():  # off the init (zero gate weights) so every path carries signal
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
    if ac:
        checkpoint_blocks(model)
    module = CausalLMLoss(model, ce_chunk=16)  # 48 positions: three chunks
    ids = torch.randint(0, 64, (2, 24), generator=gen)
    targets = torch.roll(ids, -1, 1)
    targets[0, 5] = -100
    cu = torch.tensor([0, 10, 24, 37, 48]) if packed else None
    eager_loss, eager_grads = loss_and_grads(module, ids, targets, cu)
    compile_regions(module, backend=BACKEND)
    for _ in range(2):  # the first call compiles, the second runs the cached code
        loss, grads = loss_and_grads(module, ids, targets, cu)
        assert rel(loss, eager_loss) < 1e-12
        for name, a, b in zip([n for n, _ in module.named_parameters()], grads, eager_grads):
            assert torch.isfinite(a).all() and rel(a, b) < 1e-10, name
    if not packed:  # the torch mLSTM form reads packed offsets on the host: a graph break on the CPU
        assert counters["stats"]["unique_graphs"] == 2  # one block graph serves both blocks, one loss chunk


def test_compile_regions_keeps_the_state_dict_keys():
    model = build_model("large", FIELDS)
    module = CausalLMLoss(model)
    keys = list(module.state_dict())
    compile_regions(module, backend="eager")
    assert list(module.state_dict()) == keys and not any("_orig_mod" in k for k in keys)


def _saved_bytes(fn) -> int:
    storages, alive = {}, []

    def pack(t):  # kept alive until counted: a freed storage's address may be reused by another saved tensor
        alive.append(t)
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_stacked_projections_equal_separate_layers_and_keep_less(gen):
    torch.manual_seed(0)
    model = build_model("large", dict(FIELDS, num_blocks=1, use_bias=True)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
    block = model.backbone.blocks[0]
    x = torch.randn(2, 24, 32, generator=gen, dtype=torch.float64, requires_grad=True)

    def run(train: bool):
        block.train(train)
        y, state = block(x)
        loss = (y * torch.linspace(-1, 1, 32, dtype=y.dtype)).sum() + state[0].sum()
        return [y.detach(), *torch.autograd.grad(loss, [x, *block.parameters()])]

    for a, b in zip(run(True), run(False)):  # training: stacked matmuls; eval mode: the separate layers
        assert rel(a, b) < 1e-12

    model = model.float()
    x32 = x.detach().float()

    def forward(train: bool):
        block.train(train)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            block(x32.requires_grad_())

    saved_stacked, saved_separate = _saved_bytes(lambda: forward(True)), _saved_bytes(lambda: forward(False))
    copies = 2 * 24 * 32 * 2  # one bf16 copy of the normed (2, 24, 32) input
    assert saved_separate - saved_stacked >= 6 * copies  # 5 fewer in the mLSTM projections, 1 in SwiGLU


def test_run_config_names_a_bad_compile_mode():
    from flashxlstm.training.lm import RunConfig

    RunConfig(data="d", compile=True, compile_mode="max-autotune-no-cudagraphs").validated()
    with pytest.raises(ValueError, match="not a torch.compile mode"):
        RunConfig(data="d", compile=True, compile_mode="fastest").validated()
