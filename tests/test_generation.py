"""The model-agnostic `generate` on a tiny stateful toy model: greedy equals recomputation from scratch,
left padding with attention_mask equals generating each prompt alone, per-row EOS, seeded sampling."""
import pytest
import torch

from flashxlstm.generation import filter_logits, generate, next_token


class ToyRNN(torch.nn.Module):
    """h_t = tanh(W h_{t-1} + E x_t), logits = head(h_t); padded steps leave h untouched."""

    def __init__(self, vocab=11, dim=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.w = torch.nn.Parameter(torch.randn(dim, dim, generator=g) / dim**0.5)
        self.head = torch.nn.Parameter(torch.randn(vocab, dim, generator=g) * 3)

    def forward(self, input_ids, state=None, attention_mask=None):
        h = torch.zeros(input_ids.shape[0], self.w.shape[0]) if state is None else state
        outs = []
        for t in range(input_ids.shape[1]):
            new = torch.tanh(h @ self.w.T + self.emb[input_ids[:, t]])
            if attention_mask is not None:
                new = torch.where(attention_mask[:, t, None].bool(), new, h)
            h = new
            outs.append(h @ self.head.T)
        return torch.stack(outs, 1), h


def greedy_by_recomputation(model, prompt, n):
    ids = prompt
    for _ in range(n):
        logits, _ = model(ids)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def test_greedy_equals_recomputation_from_scratch(gen):
    model = ToyRNN()
    prompt = torch.randint(0, 11, (3, 5), generator=gen)
    out = generate(model, prompt, 7)
    assert out.shape == (3, 12) and out.dtype == torch.long
    assert torch.equal(out, greedy_by_recomputation(model, prompt, 7))
    assert torch.equal(generate(model, prompt, 7, prefill_chunk_size=2), out)
    assert torch.equal(generate(model, prompt, 0), prompt)


def test_left_padded_batch_equals_each_prompt_alone(gen):
    model = ToyRNN()
    prompts = [torch.randint(2, 11, (n,), generator=gen) for n in (1, 4, 6)]
    P = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.ones(P - len(p), dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(P - len(p)), torch.ones(len(p))]) for p in prompts]).long()
    batched = generate(model, ids, 6, attention_mask=mask, prefill_chunk_size=4)
    for row, p in enumerate(prompts):
        alone = generate(model, p[None], 6)
        assert torch.equal(batched[row, P:], alone[0, len(p):])


def test_eos_stops_each_row_and_pads_it(gen):
    model = ToyRNN()
    prompt = torch.randint(0, 11, (4, 3), generator=gen)
    free = generate(model, prompt, 10)
    eos = int(free[0, 3 + 2])  # row 0 emits this at its third new token
    out = generate(model, prompt, 10, eos_token_id=eos, pad_token_id=-1)
    for row in range(4):
        new = free[row, 3:].tolist()
        stop = new.index(eos) + 1 if eos in new else len(new)
        got = out[row, 3:].tolist()
        assert got[:stop] == new[:stop]
        assert all(t == -1 for t in got[stop:])
    ends = [(free[r, 3:] == eos).nonzero() for r in range(4)]
    if all(len(e) for e in ends):  # every row finished: generation stops at the last row's EOS
        assert out.shape[1] == 3 + max(int(e[0]) for e in ends) + 1


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(gen):
    model = ToyRNN()
    prompt = torch.randint(0, 11, (2, 4), generator=gen)
    kw = dict(do_sample=True, temperature=0.7, top_p=0.9)
    a = generate(model, prompt, 12, generator=torch.Generator().manual_seed(3), **kw)
    b = generate(model, prompt, 12, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a, b)
    g = generate(model, prompt, 12, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(g, generate(model, prompt, 12))


def test_filter_logits_keeps_the_nucleus_and_top_k():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    probs = torch.softmax(logits, -1)[0]
    kept = filter_logits(logits, top_p=float(probs[0] + probs[1]) - 1e-4).isfinite()[0].tolist()
    assert kept == [True, True, False, False]
    assert filter_logits(logits, top_k=3).isfinite()[0].tolist() == [True, True, True, False]
    assert filter_logits(logits, top_p=1e-9).isfinite()[0].tolist() == [True, False, False, False]
    assert next_token(logits).tolist() == [0]


def test_streamer_gets_prompt_then_each_token(gen):
    class Recorder:
        def __init__(self):
            self.seen, self.ended = [], False

        def put(self, t):
            self.seen.append(t.clone())

        def end(self):
            self.ended = True

    model = ToyRNN()
    prompt = torch.randint(0, 11, (1, 3), generator=gen)
    rec = Recorder()
    out = generate(model, prompt, 4, streamer=rec)
    assert rec.ended and torch.equal(rec.seen[0], prompt)
    assert [int(t) for t in rec.seen[1:]] == out[0, 3:].tolist()


def test_clear_errors(gen):
    model = ToyRNN()
    ids = torch.randint(0, 11, (2, 3), generator=gen)
    with pytest.raises(ValueError, match="input_ids"):
        generate(model, ids.float(), 2)
    with pytest.raises(ValueError, match="LEFT"):
        generate(model, ids, 2, attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        generate(model, ids, 2, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        generate(model, ids, 2, do_sample=True, temperature=0.0)

    class NoMask(torch.nn.Module):
        def forward(self, input_ids, state=None):
            return model(input_ids, state)

    with pytest.raises(ValueError, match="does not accept attention_mask"):
        generate(NoMask(), ids, 2, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))


def test_cuda_graph_request_on_cpu_runs_the_static_step_with_the_same_tokens(gen):
    model = ToyRNN()
    prompt = torch.randint(0, 11, (2, 3), generator=gen)
    assert torch.equal(generate(model, prompt, 5, use_cuda_graph=True), generate(model, prompt, 5))
