"""Generation with xLSTMLarge: prefill + step decode equals recomputing from scratch, a left-padded batch
with attention_mask equals each prompt generated alone (neither the official package nor transformers
manages this), seeded sampling, and the chunked prefill."""
import torch

from flashxlstm import xLSTMLarge, xLSTMLargeConfig


def model_for(gen, weight_mode="single"):
    m = xLSTMLarge(xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=29, chunk_size=4,
                                    weight_mode=weight_mode))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return m.eval()


def test_greedy_generation_equals_argmax_of_full_recomputation(gen):
    model = model_for(gen).to(torch.float64)
    prompt = torch.randint(0, 29, (2, 6), generator=gen)
    out = model.generate(prompt, max_new_tokens=9, eos_token_id=None)
    ids = prompt
    with torch.no_grad():
        for _ in range(9):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    assert torch.equal(model.generate(prompt, max_new_tokens=9, prefill_chunk_size=4, eos_token_id=None), out)


def test_left_padded_batch_equals_each_prompt_alone(gen):
    model = model_for(gen, "fused")
    lengths = [1, 3, 4, 9]  # below, at and above the chunk size 4
    prompts = [torch.randint(3, 29, (n,), generator=gen) for n in lengths]
    P = max(lengths)
    ids = torch.stack([torch.cat([torch.full((P - len(p),), 1), p]) for p in prompts])
    mask = (torch.arange(P)[None, :] >= torch.tensor([P - n for n in lengths])[:, None]).long()
    batched = model.generate(ids, max_new_tokens=8, attention_mask=mask)  # stops each row at the config's EOS
    for row, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=8)[0, len(p):]
        assert torch.equal(batched[row, P : P + len(alone)], alone), row
        assert (batched[row, P + len(alone):] == model.config.pad_token_id).all(), row
    sampled = model.generate(ids, max_new_tokens=8, attention_mask=mask, do_sample=True, top_k=5,
                             generator=torch.Generator().manual_seed(1))
    again = model.generate(ids, max_new_tokens=8, attention_mask=mask, do_sample=True, top_k=5,
                           generator=torch.Generator().manual_seed(1))
    assert torch.equal(sampled, again)
