"""Formal-language tasks of the xLSTM paper (Delétang et al. 2023 plus Majority), generated on the fly.

Every task turns a random instance into one token sequence in the layout of the official xLSTM experiments
(NX-AI/xlstm, experiments/data/formal_language): token 0 is PAD, the task's symbols follow, and the answer
tokens sit at the end of the sequence. The answer positions are *masked*: the model reads PAD there and must
predict the answer from what came before (no teacher forcing, as in Delétang et al.). `length` is the total
sequence length including the answer, so "train on 3..40, test on 40..256" keeps every test sequence inside
a context of 256.

| task                | symbols (ids)                 | answer           | answer classes | random |
|---------------------|-------------------------------|------------------|----------------|--------|
| parity              | bits 1, 2                     | 1 even / 2 odd number of 2s | 2   | 1/2    |
| even_pairs          | a=1, b=2                      | 1 if #ab+#ba even (first == last) else 2 | 2 | 1/2 |
| cycle_navigation    | stay 1, +1 2, -1 3            | position 4..8 on a cycle of 5 | 5 | 1/5    |
| modular_arithmetic  | + 1, - 2, * 3, = 4, digits 5..9 | (expr mod 5) + 5 | 5            | 1/5    |
| majority            | symbols 1..5                  | most frequent symbol (ties: smallest) | 5 | 1/5 |
| bucket_sort         | symbols 1..5, = 6             | the n inputs sorted | 5 (per token) | 1/5  |
| repetition          | bits 1, 2, = 3                | the n inputs twice  | 2 (per token) | 1/2  |
| reverse_string      | bits 1, 2, = 3                | the n inputs reversed | 2 (per token) | 1/2 |

The first four follow the official generators exactly in layout (vocabularies 3, 3, 9, 10; the official
cycle length is configurable, Delétang's default of 5 is used here). Accuracy is per answer token, the arg-max
over the whole vocabulary, and `scaled_accuracy` maps the random baseline to 0 and perfect to 1, as in the
paper's Figure 4. Generation is a pure function of a numpy Generator: the same seed gives the same batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

PAD = 0
IGNORE = -1

# A generator gets (rng, length) and returns (tokens, answer_mask) for one sequence of exactly `length` tokens.
Generator = Callable[[np.random.Generator, int], "tuple[np.ndarray, np.ndarray]"]


@dataclass(frozen=True)
class FormalTask:
    """One formal-language task: its vocabulary, answer alphabet and generator."""

    name: str
    chomsky: str  # "R" regular, "DCF", "CS", "counter"
    vocab_size: int  # including PAD
    num_classes: int  # size of the answer alphabet (per answer token)
    min_length: int  # shortest valid total sequence length
    generate: Generator
    description: str
    # optional vectorised form: (rng, lengths (B,)) -> (tokens, answer_mask), both (B, max(lengths)), PAD-padded
    generate_batch: Callable[[np.random.Generator, np.ndarray], "tuple[np.ndarray, np.ndarray]"] | None = None

    @property
    def random_accuracy(self) -> float:
        return 1.0 / self.num_classes


def _answer_last(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(len(tokens), dtype=bool)
    mask[-1] = True
    return tokens, mask


def _parity(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    bits = rng.integers(1, 3, size=length - 1)
    answer = int((bits == 2).sum() % 2) + 1
    return _answer_last(np.append(bits, answer))


def _parity_batch(rng: np.random.Generator, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_parity` for a whole batch at once (same distribution, not the same random stream)."""
    width, pos = int(lengths.max()), np.arange(int(lengths.max()))
    bits = rng.integers(1, 3, size=(len(lengths), width))
    tokens = np.where(pos < (lengths - 1)[:, None], bits, PAD)
    mask = pos == (lengths - 1)[:, None]
    tokens[mask] = (tokens == 2).sum(axis=1) % 2 + 1
    return tokens, mask


def _even_pairs(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    s = rng.integers(1, 3, size=length - 1)
    changes = int((s[1:] != s[:-1]).sum())
    return _answer_last(np.append(s, changes % 2 + 1))


CYCLE = 5
_STEP = {1: 0, 2: 1, 3: -1}


def _cycle_navigation(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    actions = rng.integers(1, 4, size=length - 1)
    position = sum(_STEP[int(a)] for a in actions) % CYCLE
    return _answer_last(np.append(actions, 4 + position))


MODULUS = 5
OPS = {1: "+", 2: "-", 3: "*"}
EQUALS = 4
DIGIT0 = 5


def evaluate_modular(digits: list[int], ops: list[str], modulus: int = MODULUS) -> int:
    """Value of d0 op0 d1 op1 ... (with * binding tighter than + and -), reduced mod `modulus`."""
    total, term, sign = 0, digits[0], 1
    for op, d in zip(ops, digits[1:]):
        if op == "*":
            term *= d
        else:
            total += sign * term
            term, sign = d, (1 if op == "+" else -1)
    return (total + sign * term) % modulus


def _modular_arithmetic(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    # length is made odd by dropping one: n digits, n-1 ops, '=', answer -> 2n + 1 tokens.
    n = max((length - 1) // 2, 1)
    digits = rng.integers(0, MODULUS, size=n)
    ops = rng.integers(1, 4, size=n - 1)
    value = evaluate_modular([int(d) for d in digits], [OPS[int(o)] for o in ops])
    tokens = np.empty(2 * n + 1, dtype=np.int64)
    tokens[0 : 2 * n - 1 : 2] = digits + DIGIT0
    tokens[1 : 2 * n - 2 : 2] = ops
    tokens[2 * n - 1] = EQUALS
    tokens[2 * n] = DIGIT0 + value
    return _answer_last(tokens)


MAJORITY_SYMBOLS = 5


def _majority(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    s = rng.integers(1, MAJORITY_SYMBOLS + 1, size=length - 1)
    counts = np.bincount(s, minlength=MAJORITY_SYMBOLS + 1)
    return _answer_last(np.append(s, int(np.argmax(counts))))  # argmax breaks ties toward the smallest symbol


def _with_output(inputs: np.ndarray, separator: int, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.concatenate([inputs, [separator], outputs])
    mask = np.zeros(len(tokens), dtype=bool)
    mask[len(inputs) + 1 :] = True
    return tokens, mask


SORT_SYMBOLS = 5


def _bucket_sort(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    n = max((length - 1) // 2, 1)
    s = rng.integers(1, SORT_SYMBOLS + 1, size=n)
    return _with_output(s, SORT_SYMBOLS + 1, np.sort(s))


def _repetition(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    n = max((length - 1) // 3, 1)
    s = rng.integers(1, 3, size=n)
    return _with_output(s, 3, np.concatenate([s, s]))


def _reverse_string(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    n = max((length - 1) // 2, 1)
    s = rng.integers(1, 3, size=n)
    return _with_output(s, 3, s[::-1].copy())


TASKS: dict[str, FormalTask] = {
    t.name: t
    for t in [
        FormalTask("parity", "R", 3, 2, 2, _parity, "is the number of 2s odd", _parity_batch),
        FormalTask("even_pairs", "R", 3, 2, 2, _even_pairs, "is the number of ab and ba pairs even"),
        FormalTask("cycle_navigation", "R", 4 + CYCLE, CYCLE, 2, _cycle_navigation,
                   f"final position of a walk (stay, +1, -1) on a cycle of {CYCLE}"),
        FormalTask("modular_arithmetic", "R", DIGIT0 + MODULUS, MODULUS, 3, _modular_arithmetic,
                   f"value of an expression of digits and + - * (no brackets) mod {MODULUS}"),
        FormalTask("majority", "counter", MAJORITY_SYMBOLS + 1, MAJORITY_SYMBOLS, 2, _majority,
                   f"most frequent of {MAJORITY_SYMBOLS} symbols"),
        FormalTask("bucket_sort", "CS", SORT_SYMBOLS + 2, SORT_SYMBOLS, 3, _bucket_sort,
                   f"sort a string over {SORT_SYMBOLS} symbols"),
        FormalTask("repetition", "CS", 4, 2, 4, _repetition, "write a binary string twice (duplicate string)"),
        FormalTask("reverse_string", "DCF", 4, 2, 3, _reverse_string, "write a binary string reversed"),
    ]
}


def get_task(name: str) -> FormalTask:
    key = name.replace("-", "_")
    if key not in TASKS:
        raise ValueError(f"unknown formal-language task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[key]


def sample_batch(task: FormalTask | str, rng: np.random.Generator, batch_size: int,
                 min_length: int, max_length: int) -> tuple[Tensor, Tensor]:
    """A batch of `batch_size` sequences with total lengths drawn uniformly from [min_length, max_length].

    min_length is raised to the task's shortest valid length (e.g. 4 for repetition), so the paper's
    training range 3..40 works for every task.

    Returns (input_ids, targets), both (B, T) int64 with T = longest sequence - 1 (next-token layout):
    input_ids has the answer positions replaced by PAD and PAD after the end; targets is IGNORE (-1)
    everywhere except where the next token is an answer token.
    """
    task = get_task(task) if isinstance(task, str) else task
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 1 <= min_length <= max_length or max_length < task.min_length:
        raise ValueError(f"need 1 <= min_length <= max_length and max_length >= {task.min_length} for "
                         f"{task.name}, got min_length={min_length}, max_length={max_length}")
    lengths = rng.integers(max(min_length, task.min_length), max_length + 1, size=batch_size)
    if task.generate_batch is not None:
        return _next_token_layout(*task.generate_batch(rng, lengths))
    return collate([task.generate(rng, int(n)) for n in lengths])


@dataclass(frozen=True)
class LengthCurriculum:
    """A curriculum over training lengths: the longest length of a batch grows linearly from `start` to the
    range's own maximum over the first `ramp_steps` steps, then stays there. The shortest length never
    changes, so every training sequence stays inside the configured range (3..40 in the paper's setting)."""

    start: int
    ramp_steps: int

    def __post_init__(self) -> None:
        if self.start < 1 or self.ramp_steps < 0:
            raise ValueError(f"curriculum start must be >= 1 and ramp_steps >= 0, got {self.start}, "
                             f"{self.ramp_steps}")

    def max_length(self, step: int, min_length: int, max_length: int) -> int:
        """Longest training length at optimizer step `step` (0-based) for the range min_length..max_length."""
        if step >= self.ramp_steps:
            return max_length
        start = min(max(self.start, min_length), max_length)
        return start + (max_length - start) * step // self.ramp_steps


def collate(seqs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Tensor, Tensor]:
    """Stack (tokens, answer_mask) pairs into the next-token layout (input_ids, targets), padding with PAD."""
    width = max(len(t) for t, _ in seqs)
    tokens = np.full((len(seqs), width), PAD, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=bool)
    for b, (t, m) in enumerate(seqs):
        tokens[b, : len(t)], mask[b, : len(m)] = t, m
    return _next_token_layout(tokens, mask)


def _next_token_layout(tokens: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
    tokens, mask = torch.from_numpy(tokens.astype(np.int64, copy=False)), torch.from_numpy(mask.astype(bool))
    inputs = torch.where(mask, PAD, tokens)[:, :-1].contiguous()
    targets = torch.where(mask, tokens, IGNORE)[:, 1:].contiguous()
    return inputs, targets


def make_eval_set(task: FormalTask | str, rng: np.random.Generator, size: int, min_length: int,
                  max_length: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """A fixed evaluation set of `size` sequences, sorted by length and cut into batches (little padding)."""
    task = get_task(task) if isinstance(task, str) else task
    if size < 1 or batch_size < 1:
        raise ValueError(f"size and batch_size must be >= 1, got size={size}, batch_size={batch_size}")
    if not 1 <= min_length <= max_length or max_length < task.min_length:
        raise ValueError(f"need 1 <= min_length <= max_length and max_length >= {task.min_length} for "
                         f"{task.name}, got min_length={min_length}, max_length={max_length}")
    lengths = rng.integers(max(min_length, task.min_length), max_length + 1, size=size)
    seqs = sorted((task.generate(rng, int(n)) for n in lengths), key=lambda s: len(s[0]))
    return [collate(seqs[i : i + batch_size]) for i in range(0, size, batch_size)]


def masked_accuracy(logits: Tensor, targets: Tensor) -> tuple[int, int]:
    """(correct, counted) over positions whose target is not IGNORE; arg-max over the whole vocabulary."""
    keep = targets != IGNORE
    correct = (logits.argmax(-1) == targets) & keep
    return int(correct.sum()), int(keep.sum())


def scaled_accuracy(accuracy: float, random_accuracy: float) -> float:
    """(acc - random) / (1 - random): 0 is chance, 1 is perfect (the paper's Figure 4 scale)."""
    if not 0.0 <= random_accuracy < 1.0:
        raise ValueError(f"random_accuracy must be in [0, 1), got {random_accuracy}")
    return (accuracy - random_accuracy) / (1.0 - random_accuracy)
