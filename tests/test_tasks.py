"""Formal-language generators and MQAR: labels on hand-checked examples, layout, vocab bounds, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flashxlstm.tasks import formal_languages as fl
from flashxlstm.tasks.mqar import MQARConfig, gap_distribution, sample_mqar


def _one(task: str, seed: int, length: int) -> tuple[list[int], list[bool]]:
    tokens, mask = fl.get_task(task).generate(np.random.default_rng(seed), length)
    return tokens.tolist(), mask.tolist()


def _reference_answer(task: str, tokens: list[int]) -> list[int]:
    """Brute-force answers, written independently of the generators."""
    if task == "parity":
        return [1 + tokens[:-1].count(2) % 2]
    if task == "even_pairs":
        s = tokens[:-1]
        ab = sum(1 for x, y in zip(s, s[1:]) if (x, y) == (1, 2))
        ba = sum(1 for x, y in zip(s, s[1:]) if (x, y) == (2, 1))
        return [1 if (ab + ba) % 2 == 0 else 2]
    if task == "cycle_navigation":
        return [4 + sum({1: 0, 2: 1, 3: -1}[t] for t in tokens[:-1]) % 5]
    if task == "modular_arithmetic":
        expr = "".join({1: "+", 2: "-", 3: "*"}[t] if t < 4 else str(t - 5) for t in tokens[:-2])
        return [5 + eval(expr) % 5]  # Python's own precedence and modulo: an independent evaluator
    if task == "majority":
        s = tokens[:-1]
        best = max(s.count(k) for k in range(1, 6))
        return [min(k for k in range(1, 6) if s.count(k) == best)]
    sep = tokens.index({"bucket_sort": 6, "repetition": 3, "reverse_string": 3}[task])
    s = tokens[:sep]
    return {"bucket_sort": sorted(s), "repetition": s + s, "reverse_string": s[::-1]}[task]


def test_hand_checked_examples():
    # parity: three 2s -> odd -> 2;  even_pairs: a b b a -> ab, ba -> 2 pairs -> even -> 1
    assert fl._parity(_FixedRng([2, 1, 2, 2]), 5)[0].tolist() == [2, 1, 2, 2, 2]
    assert fl._even_pairs(_FixedRng([1, 2, 2, 1]), 5)[0].tolist() == [1, 2, 2, 1, 1]
    assert fl._even_pairs(_FixedRng([1, 2, 2, 2]), 5)[0].tolist() == [1, 2, 2, 2, 2]
    # cycle: +1 +1 -1 stay -1 -1 -> -1 -> position 4 -> token 8
    assert fl._cycle_navigation(_FixedRng([2, 2, 3, 1, 3, 3]), 7)[0].tolist()[-1] == 8
    # 1 + 2 * 3 = 7 = 2 (mod 5);  1 - 1 - 1 = -1 = 4;  0 * 1 + 4 * 3 - 2 = 10 = 0
    assert fl.evaluate_modular([1, 2, 3], ["+", "*"]) == 2
    assert fl.evaluate_modular([1, 1, 1], ["-", "-"]) == 4
    assert fl.evaluate_modular([0, 1, 4, 3, 2], ["*", "+", "*", "-"]) == 0
    assert fl.evaluate_modular([2, 3, 4], ["-", "*"]) == (2 - 12) % 5
    # majority with a tie between 1 and 3 -> the smaller one
    assert fl._majority(_FixedRng([3, 1, 3, 1, 2]), 6)[0].tolist()[-1] == 1


class _FixedRng:
    """A stand-in Generator whose `integers` returns fixed values (to hand-check single instances)."""

    def __init__(self, values):
        self.values = np.array(values)

    def integers(self, low, high=None, size=None):
        assert size == len(self.values) and self.values.min() >= low and self.values.max() < high
        return self.values.copy()


@pytest.mark.parametrize("task", sorted(fl.TASKS))
def test_answers_match_brute_force(task):
    for seed in range(30):
        for length in (fl.TASKS[task].min_length, 7, 40, 101):
            tokens, mask = _one(task, seed, length)
            answer = [t for t, m in zip(tokens, mask) if m]
            assert answer == _reference_answer(task, tokens), (task, tokens)
            assert len(tokens) <= length


@pytest.mark.parametrize("task", sorted(fl.TASKS))
def test_batch_layout_vocab_and_determinism(task):
    spec = fl.TASKS[task]
    x, y = fl.sample_batch(task, np.random.default_rng(3), 16, 3, 40)
    x2, y2 = fl.sample_batch(task, np.random.default_rng(3), 16, 3, 40)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[1] <= 39
    assert 0 <= int(x.min()) and int(x.max()) < spec.vocab_size
    answers = y[y != fl.IGNORE]
    assert len(answers) >= 16 and int(answers.min()) >= 1 and int(answers.max()) < spec.vocab_size
    assert len(set(answers.tolist())) <= spec.num_classes
    # the model never reads an answer: where the next token is an answer, the following input is PAD
    nxt = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)
    assert bool((nxt[y != fl.IGNORE] == fl.PAD).all())


def test_test_lengths_and_eval_set():
    batches = fl.make_eval_set("parity", np.random.default_rng(0), 50, 40, 256, 16)
    assert sum(len(x) for x, _ in batches) == 50
    widths = [x.shape[1] for x, _ in batches]
    assert widths == sorted(widths) and 39 <= widths[0] and widths[-1] <= 255
    assert all(int((y != fl.IGNORE).sum()) == len(y) for _, y in batches)  # one answer per parity sequence


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown formal-language task"):
        fl.get_task("palindrome")
    with pytest.raises(ValueError, match="min_length"):
        fl.sample_batch("parity", np.random.default_rng(0), 4, 10, 5)
    with pytest.raises(ValueError, match="random_accuracy"):
        fl.scaled_accuracy(0.5, 1.0)


def test_scaled_accuracy_and_random_baselines():
    assert fl.scaled_accuracy(0.5, 0.5) == 0.0 and fl.scaled_accuracy(1.0, 0.2) == 1.0
    assert fl.scaled_accuracy(0.6, 0.2) == pytest.approx(0.5)
    expected = {"parity": 2, "even_pairs": 2, "cycle_navigation": 5, "modular_arithmetic": 5, "majority": 5,
                "bucket_sort": 5, "repetition": 2, "reverse_string": 2}
    assert {k: t.num_classes for k, t in fl.TASKS.items()} == expected
    assert fl.TASKS["parity"].random_accuracy == 0.5 and fl.TASKS["cycle_navigation"].random_accuracy == 0.2
    logits = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    assert fl.masked_accuracy(logits, torch.tensor([[1, fl.IGNORE]])) == (1, 1)
    assert fl.masked_accuracy(logits, torch.tensor([[2, 2]])) == (1, 2)


def test_mqar_construction():
    cfg = MQARConfig(vocab_size=64, num_kv_pairs=4, context_length=32)
    x, y = sample_mqar(cfg, np.random.default_rng(0), 8)
    assert x.shape == y.shape == (8, 32)
    for b in range(8):
        keys, values = x[b, 0:8:2].tolist(), x[b, 1:8:2].tolist()
        assert len(set(keys)) == 4 and all(1 <= k < 32 for k in keys)
        assert len(set(values)) == 4 and all(32 <= v < 64 for v in values)
        assert (y[b, :8] == -1).all()
        query = (y[b] != -1).nonzero().flatten().tolist()
        assert len(query) == 4 and all(p >= 8 and (p - 8) % 2 == 0 for p in query)
        for p in query:  # the query holds a key; its target is that key's value
            k = int(x[b, p])
            assert int(y[b, p]) == values[keys.index(k)]
        assert sorted(int(x[b, p]) for p in query) == sorted(keys)
        others = [int(x[b, p]) for p in range(8, 32) if p not in query]
        assert set(others) == {0}
    x2, y2 = sample_mqar(cfg, np.random.default_rng(0), 8)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    noisy, _ = sample_mqar(MQARConfig(64, 4, 32, random_non_queries=True), np.random.default_rng(0), 8)
    assert (noisy[:, 8:] != 0).float().mean() > 0.9


def test_mqar_power_law_and_errors():
    p = gap_distribution(100, 0.01)
    assert p.sum() == pytest.approx(1.0) and all(p[:-1] > p[1:])
    with pytest.raises(ValueError, match="too short"):
        MQARConfig(vocab_size=512, num_kv_pairs=64, context_length=128)
    with pytest.raises(ValueError, match="distinct keys"):
        MQARConfig(vocab_size=16, num_kv_pairs=16, context_length=256)
    with pytest.raises(ValueError, match="even"):
        MQARConfig(vocab_size=512, num_kv_pairs=4, context_length=33)


def test_vectorised_parity_batches_follow_the_definition():
    """sample_batch's vectorised parity: one answer per row at the end of the real sequence, PAD after it, the
    answer is 1 + (number of 2s) mod 2, lengths cover the whole range."""
    x, y = fl.sample_batch("parity", np.random.default_rng(3), 400, 3, 12)
    lengths = set()
    for b in range(len(x)):
        (p,) = (y[b] != fl.IGNORE).nonzero().flatten().tolist()
        seq = x[b, : p + 1].tolist()
        assert fl.PAD not in seq and (x[b, p + 1 :] == fl.PAD).all()
        assert int(y[b, p]) == _reference_answer("parity", seq + [0])[0]
        lengths.add(p + 2)
    assert lengths == set(range(3, 13)) and x.shape[1] == 11


def test_mqar_gaps_follow_the_power_law():
    """The vectorised (Gumbel-top-k) gap draw has the distribution of drawing the gaps one after another."""
    cfg = MQARConfig(vocab_size=64, num_kv_pairs=4, context_length=32)
    _, y = sample_mqar(cfg, np.random.default_rng(0), 4000)
    gaps = ((y != -1).nonzero()[:, 1].numpy() - 8) // 2
    empirical = np.bincount(gaps, minlength=12) / len(gaps)
    rng, sequential = np.random.default_rng(1), np.zeros(12)
    for _ in range(4000):
        sequential[rng.choice(12, size=4, replace=False, p=gap_distribution(12, 0.01))] += 1
    np.testing.assert_allclose(empirical, sequential / sequential.sum(), atol=0.012)
