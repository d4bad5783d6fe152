"""The serving engine's on-device token choice (serving/sampler.py) against slow, obviously correct references."""
import random

import pytest
import torch

from flashxlstm.generation.sampling import filter_logits
from flashxlstm.serving import RowSampler, SamplingParams
from flashxlstm.serving.sampler import draw, hash32, uniform


def test_hash_matches_python_integer_arithmetic():
    """The int64 form (16-bit split products, no overflow) equals the same mixer on Python's exact integers."""
    def ref(x):
        m = 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x7FEB352D) & m
        x ^= x >> 15
        x = (x * 0x846CA68B) & m
        return x ^ (x >> 16)

    rng = random.Random(0)
    xs = [0, 1, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x80000000] + [rng.getrandbits(32) for _ in range(500)]
    assert hash32(torch.tensor(xs)).tolist() == [ref(x) for x in xs]


def test_uniform_is_in_the_open_interval_reproducible_and_spread():
    seeds = torch.tensor([0, 1, 2**62 + 5, 2**63 - 1]).repeat_interleave(2500)
    pos = torch.arange(2500).repeat(4)
    u = uniform(seeds, pos)
    assert torch.equal(u, uniform(seeds.clone(), pos.clone()))
    assert bool((u > 0).all() and (u < 1).all())
    for chunk in u.split(2500):  # each seed's stream over positions looks uniform (10 bins of ~250)
        counts = torch.histc(chunk.float(), bins=10, min=0, max=1)
        assert bool((counts > 180).all() and (counts < 320).all())
    assert len(set(u.tolist())) > 9900


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 10, 1.0), (1.3, 0, 0.8), (1.0, 0, 1.0), (0.5, 7, 0.6),
                                                     (2.0, 1, 1.0)])
def test_draw_follows_the_filtered_distribution(temperature, top_k, top_p, gen):
    """Evenly spaced u through the inverse CDF hit each token with a frequency within 1/N of its probability;
    the probabilities: float64 softmax of generate's own filter (temperature, then top-k, then top-p)."""
    V, N = 50, 4000
    logits = torch.randn(1, V, generator=gen) * 3
    want = torch.softmax(filter_logits(logits.double() / temperature, top_k or None, top_p), dim=-1)[0]
    u = (torch.arange(N, dtype=torch.float64) + 0.5) / N
    rows = logits.expand(N, V)
    tokens = draw(rows, torch.full((N,), temperature), torch.full((N,), top_k), torch.full((N,), top_p), u)
    freq = torch.bincount(tokens, minlength=V).double() / N
    assert (freq - want).abs().max().item() <= 1.0 / N + 1e-6
    assert bool((want[tokens] > 0).all())  # never a filtered token


def test_greedy_rows_take_the_argmax_beside_sampling_rows(gen):
    logits = torch.randn(6, 300, generator=gen, dtype=torch.bfloat16)
    temperature = torch.tensor([0.0, 1.0, 0.0, 0.8, 0.0, 1.5])
    tokens = draw(logits, temperature, torch.zeros(6, dtype=torch.long), torch.ones(6), torch.full((6,), 0.3))
    greedy = logits.float().argmax(-1)
    assert tokens[[0, 2, 4]].tolist() == greedy[[0, 2, 4]].tolist()


def test_row_sampler_draws_depend_on_seed_and_count_not_on_the_batch(gen):
    """The same request (settings, seed) draws the same tokens at row 0 of a batch of 1 and at row 2 of a
    batch of 4 whose other rows differ, also after a move; the count advances once per choice."""
    V = 64
    logits = torch.randn(5, 4, V, generator=gen)  # 5 steps, 4 rows
    p = SamplingParams(temperature=0.9, top_p=0.9, top_k=40)
    alone = RowSampler(1, "cpu")
    alone.set_row(0, p, seed=123, position=1)
    solo = [alone.choose(logits[t, 2:3]).item() for t in range(5)]
    batch = RowSampler(4, "cpu")
    for row, (q, seed) in enumerate([(SamplingParams(temperature=0), 0), (SamplingParams(temperature=1.0), 9),
                                     (p, 123), (SamplingParams(temperature=0.5, top_k=3), 77)]):
        batch.set_row(row, q, seed, position=1)
    got = [batch.choose(logits[t]).tolist() for t in range(5)]
    assert [g[2] for g in got] == solo
    assert [g[0] for g in got] == [logits[t, 0].argmax().item() for t in range(5)]
    assert batch.position.tolist() == [6, 6, 6, 6] and alone.position.tolist() == [6]
    batch.move(2, 0)  # row 0 now carries the request of row 2 (its settings and count)
    again = RowSampler(1, "cpu")
    again.set_row(0, p, seed=123, position=6)
    assert batch.choose(logits[0, 2:3].expand(4, V).contiguous())[0].item() == again.choose(logits[0, 2:3]).item()


def test_request_seed_is_the_given_one_or_random():
    assert RowSampler.request_seed(SamplingParams(seed=5)) == 5
    assert RowSampler.request_seed(SamplingParams(seed=-1)) == 2**63 - 1
    assert RowSampler.request_seed(SamplingParams()) != RowSampler.request_seed(SamplingParams())


def slow_filter(row: list[float], top_k: int, top_p: float) -> list[bool]:
    """Which logits of one row survive top-k (ties with the k-th kept) then top-p, in plain Python floats."""
    import math

    keep = [True] * len(row)
    if top_k > 0:
        kth = sorted(row, reverse=True)[min(top_k, len(row)) - 1]
        keep = [x >= kth for x in row]
    if top_p < 1:
        kept = [x for x, k in zip(row, keep) if k]
        top = max(kept)
        total = sum(math.exp(x - top) for x in kept)
        before = 0.0
        for i in sorted(range(len(row)), key=lambda i: -row[i]):
            if keep[i]:
                keep[i] = before < top_p
                before += math.exp(row[i] - top) / total
    return keep


def test_filter_logits_per_row_settings_equal_one_call_per_row_and_the_slow_reference(gen):
    """One call with (B,) top_k / top_p tensors (off rows included, a tie at the k-th logit) equals B calls with
    each row's own values, and both keep exactly what the plain-Python reference keeps."""
    B, V = 7, 40
    logits = torch.randn(B, V, generator=gen, dtype=torch.float64) * 2
    logits[3, 5] = logits[3, 6] = logits[3].max() + 1  # a tie at the top
    logits[2, 9] = logits[2].sort(descending=True).values[2]  # a tie at the 3rd largest
    top_k = torch.tensor([0, 5, 3, 1, 40, 0, 12])
    top_p = torch.tensor([1.0, 0.7, 1.0, 0.5, 0.9, 0.3, 1.0], dtype=torch.float64)
    batched = filter_logits(logits, top_k, top_p)
    for b in range(B):
        k, p = int(top_k[b]), float(top_p[b])
        alone = filter_logits(logits[b:b + 1], k or None, p)
        assert torch.equal(batched[b:b + 1], alone)
        want = slow_filter(logits[b].tolist(), k, p)
        assert batched[b].isfinite().tolist() == want
        assert torch.equal(batched[b][batched[b].isfinite()], logits[b][torch.tensor(want)])
    assert filter_logits(logits, None, None) is logits
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        filter_logits(logits, torch.tensor([1, 2]))


def test_draw_with_different_settings_per_row_inverts_each_rows_own_filter(gen):
    """Rows with their own temperature / top-k / top-p and u: each token is where u falls in the CDF (in
    descending logit order) of softmax(filter_logits(row / temperature, k, p)), computed row by row in float64."""
    N, V = 64, 300
    logits = torch.randn(N, V, generator=gen) * 3
    temperature = torch.rand(N, generator=gen) * 1.5 + 0.2
    top_k = torch.randint(0, 60, (N,), generator=gen)
    top_p = torch.where(torch.rand(N, generator=gen) < 0.3, 1.0, torch.rand(N, generator=gen) * 0.9 + 0.05)
    u = torch.rand(N, generator=gen, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    tokens = draw(logits, temperature, top_k, top_p, u)
    for b in range(N):
        row = filter_logits(logits[b:b + 1].double() / float(temperature[b]), int(top_k[b]) or None,
                            float(top_p[b]))[0]
        probs = torch.softmax(row, dim=-1)
        order = torch.argsort(logits[b].double(), descending=True)
        cdf = torch.cumsum(probs[order], dim=0)
        want = order[int((cdf <= u[b] * cdf[-1]).sum())]
        assert tokens[b].item() == want.item(), b


def test_top_p_at_or_below_zero_keeps_only_the_most_likely_token():
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.5], [1.0, -2.0, 0.5, 0.0]])
    for top_p in (0.0, -0.5, torch.tensor([0.0, 1e-9])):
        out = filter_logits(logits, top_p=top_p)
        assert torch.isfinite(out).sum(1).tolist() == [1, 1]
        assert out.argmax(1).tolist() == logits.argmax(1).tolist()
