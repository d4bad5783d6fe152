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
