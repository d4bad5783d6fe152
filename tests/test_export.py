"""The exported decode step (flashxlstm.integrations.export), both model families, on the CPU.

torch.export's program (traced at batch 2, run at batch 3: the batch size is dynamic) and the ONNX file run by
onnxruntime both follow the PyTorch model over 32 steps, carrying their own state from the model's empty
state: logits and every state tensor within float32 rounding. The steps also equal one chunked forward over
the 32 tokens. onnx, onnxscript and onnxruntime are test dependencies: these tests fail (never skip) without them.
"""
import pytest
import torch

from flashxlstm import xLSTMLarge, xLSTMLargeConfig, xLSTMLM, xLSTMLMConfig
from flashxlstm.integrations._model_io import call
from flashxlstm.integrations.export import DecodeStep, OnnxDecodeStep, export_decode_step, export_decode_step_onnx

STEPS, VOCAB = 32, 61


def tiny(family, gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    if family == "neurips":  # an mLSTM and an sLSTM block; the sLSTM one without conv (a state field left out)
        model = xLSTMLM(xLSTMLMConfig(vocab_size=VOCAB, embedding_dim=32, num_blocks=2, slstm_at=[1],
                                      mlstm_num_heads=2, slstm_num_heads=2, slstm_conv1d_kernel_size=0,
                                      mlstm_chunk_size=8))
    else:
        model = xLSTMLarge(xLSTMLargeConfig(embedding_dim=64, num_heads=4, num_blocks=2, vocab_size=VOCAB, chunk_size=8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def worst(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("family", ["neurips", "large"])
def test_exported_and_onnx_steps_follow_the_model_for_32_steps(family, gen, tmp_path):
    model = tiny(family, gen)
    step = DecodeStep(model)
    if family == "neurips":
        assert sum(name.startswith("state.1.") for name in step.state_names) == 4  # c, n, m, h: no conv
    B = 3
    ids = torch.randint(0, VOCAB, (B, STEPS), generator=gen)
    program = export_decode_step(model, batch_size=2)
    names = export_decode_step_onnx(model, tmp_path / "step.onnx", program=program)
    runner = OnnxDecodeStep(tmp_path / "step.onnx")
    assert names == step.state_names == runner.state_names

    exported_state = onnx_state = step.initial_state(B)
    torch_state = None
    logits_steps = []
    with torch.no_grad():
        for t in range(STEPS):
            tok = ids[:, t:t + 1]
            logits, torch_state = call(model, tok, torch_state)
            ref_state = step.flatten(torch_state)
            ex_logits, *exported_state = program.module()(tok, *exported_state)
            onnx_logits, onnx_state = runner(tok, onnx_state)
            assert worst([ex_logits, onnx_logits], [logits[:, -1]] * 2) < 1e-4, t
            assert worst(exported_state, ref_state) < 1e-4 and worst(onnx_state, ref_state) < 1e-4, t
            logits_steps.append(logits[:, -1])
        full, _ = call(model, ids)  # the chunkwise form over the whole sequence
    assert worst([torch.stack(logits_steps, 1)], [full]) < 1e-4


@pytest.mark.parametrize("family", ["neurips", "large"])
def test_step_from_the_initial_state_equals_a_step_from_none(family, gen):
    model = tiny(family, gen)
    step = DecodeStep(model)
    ids = torch.randint(0, VOCAB, (2, 1), generator=gen)
    with torch.no_grad():
        logits, state = call(model, ids, None)
        out = step(ids, *step.initial_state(2))
    assert worst(out, [logits[:, -1], *step.flatten(state)]) == 0
    with pytest.raises(ValueError, match="state tensors"):
        step(ids, *step.initial_state(2)[:-1])
