"""The paper's synthetic experiments end to end: formal languages with length extrapolation, MQAR, and a grid.

Each run trains one model from scratch with `harness.train`, writes `results.json` and `learning_curve.png`
into its output directory, and returns the results dict. Everything is seeded: the same arguments give the
same data, the same initialisation and (on CPU) the same numbers.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
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


def run_formal_language(task: str, model: str, out: str | Path, *, train_cfg: TrainConfig,
                        size: ModelSize | None = None, batch_size: int = 128, test_size: int = 512,
                        eval_batch_size: int = 128, train_lengths: tuple[int, int] = TRAIN_LENGTHS,
                        test_lengths: tuple[int, int] = TEST_LENGTHS,
                        log: Callable[[str], None] | None = None) -> dict:
    """Train on lengths train_lengths, report accuracy on held-out sequences of those lengths ("train") and
    on the longer test_lengths ("test"), both raw and scaled by the task's random baseline."""
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
    run = train(net, lambda g: fl.sample_batch(spec, g, batch_size, *train_lengths), eval_sets, train_cfg, log,
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


def run_suite(out: str | Path, *, tasks: list[str], models: list[str], train_cfg: TrainConfig,
              size: ModelSize | None = None, batch_size: int = 128, test_size: int = 512,
              log: Callable[[str], None] | None = None) -> dict:
    """Every task x model; writes summary.md (table of test scaled accuracy) and heatmap.png (Figure 4 style)."""
    out = Path(out)
    grid: list[list[float | None]] = []
    rows = []
    start = time.perf_counter()
    for model in models:
        row = []
        for task in tasks:
            name = fl.get_task(task).name
            slug = model.replace("[", "").replace("]", "").replace(":", "")
            res = run_formal_language(name, model, out / name / slug, train_cfg=train_cfg, size=size,
                                      batch_size=batch_size, test_size=test_size, log=log)
            row.append(res["test_scaled_accuracy"])
            rows.append(res)
            if log is not None:
                log(f"[suite] {name} {model}: test scaled {res['test_scaled_accuracy']:.3f} "
                    f"({res['wall_time_s']:.0f} s)")
        grid.append(row)
    names = [fl.get_task(t).name for t in tasks]
    from flashxlstm.tasks.plots import heatmap

    heatmap(models, names, grid, out / "heatmap.png",
            f"Test scaled accuracy (train {TRAIN_LENGTHS[0]}..{TRAIN_LENGTHS[1]}, "
            f"test {TEST_LENGTHS[0]}..{TEST_LENGTHS[1]}), {train_cfg.steps} steps")
    lines = ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for model, row in zip(models, grid):
        lines.append(f"| {model} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    (out / "summary.md").write_text(
        f"Test scaled accuracy, steps={train_cfg.steps}, seed={train_cfg.seed}, device={train_cfg.device}, "
        f"wall time {time.perf_counter() - start:.0f} s\n\n" + "\n".join(lines) + "\n")
    summary = {"tasks": names, "models": models, "test_scaled_accuracy": grid,
               "runs": [{k: r[k] for k in ("task", "model", "test_scaled_accuracy", "train_scaled_accuracy",
                                            "wall_time_s")} for r in rows]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = ["run_formal_language", "run_mqar", "run_suite", "plot_results", "MODEL_NAMES"]
