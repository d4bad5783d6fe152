"""The paper's synthetic experiments end to end: formal languages with length extrapolation, MQAR, and a grid.

Each run trains one model from scratch with `harness.train`, writes `results.json` and `learning_curve.png`
into its output directory, and returns the results dict. Everything is seeded: the same arguments give the
same data, the same initialisation and (on CPU) the same numbers.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flashxlstm.tasks import formal_languages as fl
from flashxlstm.tasks.harness import TrainConfig, train
from flashxlstm.tasks.mqar import MQARConfig, sample_mqar
from flashxlstm.tasks.zoo import MODEL_NAMES, ModelSize, build_model

TRAIN_LENGTHS = (3, 40)
TEST_LENGTHS = (40, 256)
SOLVED = 0.9  # a run "solves" its task at (scaled) test accuracy >= this


def _write(out: Path, results: dict, scaled: dict[str, float] | None, title: str) -> None:
    """results.json, then learning_curve.png (skipped, and said so in results.json, without matplotlib:
    `plot_results(out)` draws it later from results.json)."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        from flashxlstm.tasks.plots import learning_curve
    except ImportError as e:
        results["learning_curve_png"] = f"not drawn: {e}"
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return
    results["learning_curve_png"] = "learning_curve.png"
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    learning_curve(results["history"], out / "learning_curve.png", title, scaled)


def plot_results(out: str | Path) -> Path:
    """Draw DIR/learning_curve.png from DIR/results.json (e.g. for a run made where matplotlib was missing)."""
    from flashxlstm.tasks.plots import learning_curve

    out = Path(out)
    r = json.loads((out / "results.json").read_text())
    if r["experiment"] == "formal_language":
        scaled = {"train_len_accuracy": r["random_accuracy"], "test_len_accuracy": r["random_accuracy"]}
        title = f"{r['task']} / {r['model']}: test scaled acc {r['test_scaled_accuracy']:.3f}"
    else:
        scaled = None
        title = (f"MQAR kv={r['mqar']['num_kv_pairs']} T={r['mqar']['context_length']} V={r['mqar']['vocab_size']} "
                 f"/ {r['model']}: test acc {r['test_accuracy']:.3f}")
    learning_curve(r["history"], out / "learning_curve.png", title, scaled)
    return out / "learning_curve.png"


def _save_partial(out: Path, header: dict) -> Callable[[list[dict]], None]:
    """A callback writing results.partial.json after every evaluation, so a long or killed run leaves a trace."""
    def save(history: list[dict]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.partial.json").write_text(json.dumps({**header, "complete": False,
                                                              "history": history}, indent=2) + "\n")
    return save


class _CurriculumSampler:
    """Training batches whose longest length follows a `LengthCurriculum`.

    The harness draws exactly one batch per optimizer step from its training Generator (and, when it fits a
    time budget, a few from a separate probing Generator), so the number of batches drawn so far from a given
    Generator is that stream's step."""

    def __init__(self, spec: fl.FormalTask, batch_size: int, lengths: tuple[int, int],
                 curriculum: fl.LengthCurriculum | None):
        self.spec, self.batch_size, self.lengths, self.curriculum = spec, batch_size, lengths, curriculum
        self.drawn: dict[int, int] = {}

    def __call__(self, rng: np.random.Generator):
        lo, hi = self.lengths
        if self.curriculum is not None:
            step = self.drawn.get(id(rng), 0)
            self.drawn[id(rng)] = step + 1
            hi = self.curriculum.max_length(step, max(lo, self.spec.min_length), hi)
        return fl.sample_batch(self.spec, rng, self.batch_size, lo, hi)


def run_formal_language(task: str, model: str, out: str | Path, *, train_cfg: TrainConfig,
                        size: ModelSize | None = None, batch_size: int = 128, test_size: int = 512,
                        eval_batch_size: int = 128, train_lengths: tuple[int, int] = TRAIN_LENGTHS,
                        test_lengths: tuple[int, int] = TEST_LENGTHS,
                        curriculum: fl.LengthCurriculum | None = None,
                        log: Callable[[str], None] | None = None) -> dict:
    """Train on lengths train_lengths (optionally growing the longest one over the first steps, `curriculum`),
    report accuracy on held-out sequences of those lengths ("train") and on the longer test_lengths ("test"),
    both raw and scaled by the task's random baseline."""
    spec = fl.get_task(task)
    size = size or ModelSize(context_length=test_lengths[1])
    torch.manual_seed(train_cfg.seed)
    net = build_model(model, spec.vocab_size, size)
    rng = np.random.default_rng([train_cfg.seed, 1])
    eval_sets = {
        "train_len": fl.make_eval_set(spec, rng, test_size, *train_lengths, eval_batch_size),
        "test_len": fl.make_eval_set(spec, rng, test_size, *test_lengths, eval_batch_size),
    }
    partial = _save_partial(Path(out), {"task": spec.name, "model": model, "seed": train_cfg.seed,
                                        "train_config": asdict(train_cfg), "random_accuracy": spec.random_accuracy})
    run = train(net, _CurriculumSampler(spec, batch_size, train_lengths, curriculum), eval_sets, train_cfg, log,
                partial)
    final = run["history"][-1]
    r = spec.random_accuracy
    results = {
        "experiment": "formal_language", "task": spec.name, "model": model, "steps": run["steps_done"],
        "seed": train_cfg.seed, "train_accuracy": final["train_len_accuracy"],
        "train_scaled_accuracy": fl.scaled_accuracy(final["train_len_accuracy"], r),
        "test_accuracy": final["test_len_accuracy"],
        "test_scaled_accuracy": fl.scaled_accuracy(final["test_len_accuracy"], r),
        "random_accuracy": r, "vocab_size": spec.vocab_size, "num_classes": spec.num_classes,
        "train_lengths": list(train_lengths), "test_lengths": list(test_lengths), "batch_size": batch_size,
        "curriculum": None if curriculum is None else asdict(curriculum),
        "test_size": test_size, "model_size": asdict(size), "device": train_cfg.device,
        "torch_threads": torch.get_num_threads(), "complete": True, **run,
    }
    _write(Path(out), results, {"train_len_accuracy": r, "test_len_accuracy": r},
           f"{spec.name} / {model}: test scaled acc {results['test_scaled_accuracy']:.3f}")
    return results


def run_mqar(model: str, out: str | Path, *, train_cfg: TrainConfig, mqar: MQARConfig,
             size: ModelSize | None = None, batch_size: int = 64, test_size: int = 512, eval_batch_size: int = 128,
             log: Callable[[str], None] | None = None) -> dict:
    """Train on fresh MQAR batches every step; report accuracy on the value positions of a held-out set."""
    size = size or ModelSize(embedding_dim=128, context_length=mqar.context_length)
    torch.manual_seed(train_cfg.seed)
    net = build_model(model, mqar.vocab_size, size)
    rng = np.random.default_rng([train_cfg.seed, 1])
    test = [sample_mqar(mqar, rng, min(eval_batch_size, test_size - i)) for i in range(0, test_size, eval_batch_size)]
    partial = _save_partial(Path(out), {"task": "mqar", "model": model, "seed": train_cfg.seed,
                                        "train_config": asdict(train_cfg), "mqar": asdict(mqar)})
    run = train(net, lambda g: sample_mqar(mqar, g, batch_size), {"test": test}, train_cfg, log, partial)
    final = run["history"][-1]
    results = {
        "experiment": "mqar", "task": "mqar", "model": model, "steps": run["steps_done"], "seed": train_cfg.seed,
        "train_accuracy": final["train_batch_accuracy"], "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"], "mqar": asdict(mqar), "random_accuracy": mqar.random_accuracy,
        "batch_size": batch_size, "test_size": test_size, "model_size": asdict(size), "device": train_cfg.device,
        "torch_threads": torch.get_num_threads(), "complete": True, **run,
    }
    _write(Path(out), results, None, f"MQAR kv={mqar.num_kv_pairs} T={mqar.context_length} / {model}: "
                                     f"test acc {results['test_accuracy']:.3f}")
    return results


def _slug(model: str) -> str:
    return model.replace("[", "").replace("]", "").replace(":", "")


def grid_summary(runs: list[dict], tasks: list[str], models: list[str], solved_at: float = SOLVED) -> dict:
    """Figure-4 grid from formal-language runs (results dicts, any number of seeds per cell): per model and
    task the median, min and max test scaled accuracy, the fraction of seeds solved and the seeds; a cell
    without runs is None."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        cells.setdefault((r["model"], r["task"]), []).append(r)
    grid = []
    for model in models:
        row = []
        for task in tasks:
            rs = cells.get((model, task))
            row.append(None if not rs else
                       {k: v for k, v in seed_summary(rs, "test_scaled_accuracy", solved_at).items() if k != "metric"})
        grid.append(row)
    return {"tasks": tasks, "models": models, "solved_at": solved_at, "cells": grid,
            "median": [[None if c is None else c["median"] for c in row] for row in grid]}


def grid_markdown(summary: dict) -> str:
    """Three tables of `grid_summary`: the medians (the heatmap's numbers), median [min, max] and seeds solved
    per cell, and the steps each seed's run did (a budget-fitted run may do far fewer than asked)."""
    tasks, models = summary["tasks"], summary["models"]
    head = ["| model | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    medians, spread, steps = list(head), list(head), list(head)
    for model, row in zip(models, summary["cells"]):
        steps.append(f"| {model} | " + " | ".join(
            "-" if c is None else " / ".join(str(r["steps"]) for r in c["per_seed"]) for c in row) + " |")
        medians.append(f"| {model} | " + " | ".join("-" if c is None else f"{c['median']:.2f}" for c in row) + " |")
        spread.append(f"| {model} | " + " | ".join(
            "-" if c is None else f"{c['median']:.2f} [{c['min']:.2f}, {c['max']:.2f}] "
                                  f"{round(c['fraction_solved'] * c['num_seeds'])}/{c['num_seeds']}"
            for c in row) + " |")
    return ("Median test scaled accuracy over seeds:\n\n" + "\n".join(medians) +
            f"\n\nMedian [min, max] and seeds solved (>= {summary['solved_at']}):\n\n" + "\n".join(spread) +
            "\n\nOptimizer steps done per seed:\n\n" + "\n".join(steps) + "\n")


def run_suite(out: str | Path, *, tasks: list[str], models: list[str], train_cfg: TrainConfig,
              size: ModelSize | None = None, batch_size: int = 128, test_size: int = 512,
              seeds: list[int] | None = None, curriculum: fl.LengthCurriculum | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Every task x model x seed (default: train_cfg's seed), each into out/<task>/<model>[/seed_S]; writes
    summary.md (medians over seeds, then median [min, max] and seeds solved), summary.json and heatmap.png
    (Figure 4 style, medians)."""
    out = Path(out)
    seeds = [train_cfg.seed] if seeds is None else list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    names = [fl.get_task(t).name for t in tasks]
    runs = []
    start = time.perf_counter()
    for model in models:
        for name in names:
            for seed in seeds:
                run_dir = out / name / _slug(model) / (f"seed_{seed}" if len(seeds) > 1 else "")
                res = run_formal_language(name, model, run_dir, train_cfg=replace(train_cfg, seed=seed), size=size,
                                          batch_size=batch_size, test_size=test_size, curriculum=curriculum,
                                          log=log)
                runs.append(res)
                if log is not None:
                    log(f"[suite] {name} {model} seed {seed}: test scaled {res['test_scaled_accuracy']:.3f} "
                        f"({res['wall_time_s']:.0f} s)")
    summary = grid_summary(runs, names, models)
    from flashxlstm.tasks.plots import heatmap

    heatmap(models, names, summary["median"], out / "heatmap.png",
            f"Test scaled accuracy, median of {len(seeds)} seed(s) (train {TRAIN_LENGTHS[0]}..{TRAIN_LENGTHS[1]}, "
            f"test {TEST_LENGTHS[0]}..{TEST_LENGTHS[1]}), {train_cfg.steps} steps")
    (out / "summary.md").write_text(
        f"steps={train_cfg.steps}, seeds={seeds}, device={train_cfg.device}, "
        f"wall time {time.perf_counter() - start:.0f} s\n\n" + grid_markdown(summary))
    summary["runs"] = [{k: r[k] for k in ("task", "model", "seed", "test_scaled_accuracy", "train_scaled_accuracy",
                                          "steps", "wall_time_s")} for r in runs]
    summary["test_scaled_accuracy"] = summary["median"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def seed_summary(results: list[dict], metric: str, solved_at: float = SOLVED) -> dict:
    """Median, min and max of `metric` over the runs of several seeds, and the fraction of runs that solved the
    task (`metric` >= `solved_at`); `per_seed` lists seed, metric, steps and wall time of every run."""
    if not results:
        raise ValueError("seed_summary needs at least one run")
    missing = [r.get("seed") for r in results if metric not in r]
    if missing:
        raise ValueError(f"runs of seeds {missing} have no {metric!r}")
    values = [float(r[metric]) for r in results]
    return {"metric": metric, "solved_at": solved_at, "num_seeds": len(values),
            "median": float(np.median(values)), "min": min(values), "max": max(values),
            "fraction_solved": sum(v >= solved_at for v in values) / len(values),
            "per_seed": [{"seed": r["seed"], metric: float(r[metric]), "steps": r.get("steps"),
                          "wall_time_s": r.get("wall_time_s")} for r in results]}


def seed_table(summary: dict) -> str:
    """The per-seed rows and the aggregate of `seed_summary` as a markdown table."""
    m = summary["metric"]
    lines = [f"| seed | {m} | steps | wall s |", "|---|---|---|---|"]
    for row in summary["per_seed"]:
        wall = "-" if row["wall_time_s"] is None else f"{row['wall_time_s']:.0f}"
        lines.append(f"| {row['seed']} | {row[m]:.3f} | {row['steps']} | {wall} |")
    lines.append(f"\n{summary['num_seeds']} seeds: median {summary['median']:.3f}, min {summary['min']:.3f}, "
                 f"solved (>= {summary['solved_at']}) {summary['fraction_solved']:.0%}")
    return "\n".join(lines) + "\n"


def run_seeds(run_one: Callable[[int, Path], dict], seeds: list[int], out: str | Path, metric: str,
              header: str = "") -> dict:
    """`run_one(seed, out / f"seed_{seed}")` for every seed, one after the other; writes out/seeds.json and
    out/seeds.md (per-seed table, median, min, fraction solved) and returns the summary."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    out = Path(out)
    results = [run_one(seed, out / f"seed_{seed}") for seed in seeds]
    summary = {"header": header, **seed_summary(results, metric)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "seeds.md").write_text((header + "\n\n" if header else "") + seed_table(summary))
    return summary


__all__ = ["run_formal_language", "run_mqar", "run_suite", "run_seeds", "seed_summary", "seed_table",
           "grid_summary", "grid_markdown",
           "plot_results", "MODEL_NAMES", "SOLVED"]
