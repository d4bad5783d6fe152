"""The static-buffer decode step (the CUDA-graph code path minus capture and replay) on the CPU: it gives
the tokens and states of plain eager decoding, for the ping-pong runner (xLSTMLarge, state_out) and the
copy runner (any stateful model), and it keeps writing into the same buffers."""
import pytest
import torch

from flashxlstm import xLSTMLarge, xLSTMLargeConfig
from flashxlstm.generation import StaticDecodeStep, generate
from flashxlstm.generation.cuda_graph import CUDAGraphStep, state_leaves


def large(gen):
    m = xLSTMLarge(xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=29, chunk_size=4,
                                    weight_mode="fused"))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return m.eval()


class ToyRNN(torch.nn.Module):
    def __init__(self, gen):
        super().__init__()
        self.emb = torch.nn.Parameter(torch.randn(13, 8, generator=gen))
        self.w = torch.nn.Parameter(torch.randn(8, 8, generator=gen) / 8**0.5)

    def forward(self, input_ids, state=None):
        h = torch.zeros(input_ids.shape[0], 8) if state is None else state
        outs = []
        for t in range(input_ids.shape[1]):
            h = torch.tanh(h @ self.w.T + self.emb[input_ids[:, t]])
            outs.append(h @ self.emb.T)
        return torch.stack(outs, 1), h


@pytest.mark.parametrize("which", ["large", "toy"])
def test_static_step_equals_eager_decoding(gen, which):
    model = large(gen) if which == "large" else ToyRNN(gen)
    V = 29 if which == "large" else 13
    prompt = torch.randint(0, V, (2, 5), generator=gen)
    with torch.no_grad():
        logits, state = model(prompt)
        tok = logits[:, -1].argmax(-1, keepdim=True)
        runner = StaticDecodeStep(model, tok, state)
        assert runner.pingpong == (which == "large")
        buffers = [t.data_ptr() for s in runner._states for t in state_leaves(s)]
        eager_tok, eager_state = tok, state
        for _ in range(5):
            got = runner.step(tok)
            want, eager_state = model(eager_tok, eager_state)
            assert torch.allclose(got, want, rtol=0, atol=0)
            tok = eager_tok = want[:, -1].argmax(-1, keepdim=True)
        for a, b in zip(state_leaves(runner.state()), state_leaves(eager_state)):
            assert torch.equal(a, b)
        assert [t.data_ptr() for s in runner._states for t in state_leaves(s)] == buffers
    # the state given to the runner is its own copy: the caller's state is untouched
    assert all(torch.equal(a, b) for a, b in zip(state_leaves(state), state_leaves(model(prompt)[1])))


def test_generate_on_static_buffers_equals_model_generate(gen):
    model = large(gen)
    prompt = torch.randint(0, 29, (3, 4), generator=gen)
    assert torch.equal(generate(model, prompt, 7, use_cuda_graph=True, eos_token_id=2, pad_token_id=1),
                       model.generate(prompt, 7))


def test_capture_needs_cuda(gen):
    model = large(gen)
    tok = torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="CUDA"):
        CUDAGraphStep(model, tok, model(tok).state)
    with pytest.raises(ValueError, match="CUDA"):
        StaticDecodeStep(model, tok, model(tok).state, graph=True)
