"""ViL and its parameter-matched ViT trained side by side in lockstep: equal steps on the same batches.

    res = train_pair(out_dir, PairConfig(dataset="fashion-mnist", device="cuda", amp="bf16", time_budget_s=280))

Each loop iteration draws one augmented batch and gives it to both models (ViL step, then ViT step), so at
any moment both have taken the same number of optimiser steps on the same images: the comparison stays fair
on a GPU shared with other jobs (where equal wall time would not be) and when the run is killed early.
Run length and schedule are the shared loop settings' (`training.settings.LoopSettings`): `steps` is the step
cap and `time_budget_s` an optional time box of the training loop (evaluations included); the run ends at
whichever comes first, and the learning rate (linear warm-up over `warmup_steps`, then a cosine to zero) follows
the one nearer its end (`training.schedule.run_progress`), the same value for both models at every step, so a
time-boxed schedule ends on time however fast the GPU is.
Steps run through tasks/vision_step.py (CUDA graphs on a GPU). Every `time_every` steps each model's step is
timed on the device (CUDA events, no host sync), so the record also says how much device time each model's
steps took. Every `eval_every` steps both models (and their EMA weights, with `ema_decay`) are evaluated on
the full test split and on `train_eval_size` clean (unaugmented) training images (the fit: a train accuracy
far above the test accuracy is overfitting, both low is underfitting), and OUT/results.json is rewritten
atomically with everything so far, so a kill leaves the last evaluation. The final evaluation adds the
flip test-time augmentation (mean logits of each image and its mirror) when the training augmentation flips.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoints.atomic import write_json_atomic
from ..training.engine import resolve_device
from ..training.schedule import run_progress, warmup_cosine_at
from ..training.settings import LoopSettings
from .vision import DATASET_AUGMENT, build_model, load_dataset, make_sampler
from .vision_augment import AugmentConfig
from .vision_step import InferStep, TrainStep, compile_blocks

MODELS = ("vil", "vit")


@dataclass
class PairConfig(LoopSettings):
    """The shared loop settings (steps = the step cap, lr, warmup_steps, AdamW decay and betas, clipping,
    eval_every, seed, device) plus the time box, the data, both models' shapes and the vision recipe."""

    steps: int = 1_000_000
    lr: float = 1.5e-3
    warmup_steps: int = 300
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eval_every: int = 500
    time_budget_s: float | None = 60.0  # seconds of the training loop, evaluations included (None: steps only)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    amp: str = "none"
    graph: bool = True  # CUDA graphs on a CUDA device (ignored elsewhere)
    compile: str | None = None  # torch.compile backend for the ViL's blocks (None: eager; the ViT's are torch's own)
    batch_size: int = 512
    eval_batch_size: int = 2000
    patch_size: int = 4
    dim: int = 192
    depth: int = 8
    num_heads: int = 3
    backend: str = "chunkwise"
    chunk_size: int | None = None  # the ViL's mLSTM chunk; None: tasks/vision.py default_chunk_size
    pooling: str = "bilateral_concat"
    label_smoothing: float = 0.1
    ema_decay: float | None = 0.999
    augment: AugmentConfig | None = None  # None: the dataset's default (tasks/vision.py DATASET_AUGMENT)
    train_eval_size: int = 5000  # clean training images evaluated at every evaluation (0: none)
    time_every: int = 25  # every this many steps, each model's step is timed on the device
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in self.augment.items()})
        self.check()

    def check(self) -> None:
        super().check()
        self.check_positive_ints("batch_size", "eval_batch_size", "patch_size", "dim", "depth", "num_heads",
                                 "time_every")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 seconds or None (no time box), got {self.time_budget_s}")
        if self.dataset not in DATASET_AUGMENT:
            raise ValueError(f"dataset must be one of {sorted(DATASET_AUGMENT)}, got {self.dataset!r}")
        if not 0.0 <= self.label_smoothing < 1.0 or (self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"label_smoothing must be in [0, 1) and ema_decay in [0, 1) or None, got "
                             f"{self.label_smoothing}, {self.ema_decay}")
        if self.train_eval_size < 0 or (self.chunk_size is not None and self.chunk_size < 1):
            raise ValueError(f"train_eval_size must be >= 0 and chunk_size >= 1 or None, got "
                             f"{self.train_eval_size}, {self.chunk_size}")

    def progress(self, step: int, elapsed_s: float) -> float:
        """How far the run is, in [0, 1+): the larger of the step and the time fraction (the run ends at 1)."""
        return run_progress(step, elapsed_s, steps=self.steps, time_budget_s=self.time_budget_s)

    def lr_at(self, step: int, progress: float) -> float:
        return warmup_cosine_at(step, progress, lr=self.lr, warmup_steps=self.warmup_steps, min_lr=0.0)


class StepTimer:
    """Device time of sampled calls: CUDA events on a GPU (resolved later, so no host sync per step), the
    wall clock elsewhere (CPU work is synchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list = []
        self.ms: list[float] = []

    def start(self):
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def stop(self, start) -> None:
        if not self.cuda:
            self.ms.append(1000 * (time.perf_counter() - start))
            return
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        self.pending.append((start, ev))

    def mean_ms(self) -> float | None:
        for a, b in self.pending:
            b.synchronize()
            self.ms.append(a.elapsed_time(b))
        self.pending.clear()
        return float(np.mean(self.ms)) if self.ms else None


def _logits(infer, x, flip: bool):
    out = infer(x).clone()  # a graphed InferStep returns its static buffer
    return out + infer(x.flip(-1)) if flip else out


def _accuracy(infer, batches, flip: bool = False) -> float:
    correct = total = 0
    for x, y in batches:
        correct += int((_logits(infer, x, flip).argmax(-1) == y).sum())
        total += len(y)
    return correct / total


def time_backends(cfg: PairConfig, candidates=("chunkwise", "triton"), steps: int = 5) -> dict[str, dict]:
    """Per mLSTM backend available here: ms per ViL training step at `cfg`'s shapes (through TrainStep, so a
    replayed CUDA graph on a GPU) and the largest |difference| of its float32 logits from the chunkwise
    backend's on the same weights and images. A backend that fails gets {"error": ...}. Random images: the
    timing needs shapes, not data."""
    from flashxlstm.ops.mlstm_cell import BACKENDS
    dev = resolve_device(cfg.device)
    graph = cfg.graph and dev.type == "cuda"
    side = {"fashion-mnist": 28, "digits": 8}[cfg.dataset]
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    x = torch.rand(cfg.batch_size, 1, side, side, generator=g, device=dev)
    y = torch.randint(0, 10, (cfg.batch_size,), generator=g, device=dev)
    ref_logits, out = None, {}
    for name in ("chunkwise",) + tuple(c for c in candidates if c != "chunkwise"):
        if name not in BACKENDS:
            out[name] = {"error": "not available here"}
            continue
        try:
            torch.manual_seed(cfg.seed)
            m = build_model("vil", image_size=(side, side), patch_size=cfg.patch_size, dim=cfg.dim,
                            depth=cfg.depth, num_heads=cfg.num_heads, num_classes=10, backend=name,
                            pooling=cfg.pooling, chunk_size=cfg.chunk_size).to(dev)
            with torch.no_grad():
                logits = m.eval()(x).float()
            m.train()
            ref_logits = logits if ref_logits is None else ref_logits
            step = TrainStep(m, lr=1e-4, amp=cfg.amp, grad_clip=cfg.grad_clip, graph=graph)
            for _ in range(step.warmup + 1):
                step(x, y, 1e-4)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t = time.perf_counter()
            for _ in range(steps):
                step(x, y, 1e-4)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            out[name] = {"ms_per_step": 1000 * (time.perf_counter() - t) / steps,
                         "max_abs_logit_diff_vs_chunkwise": float((logits - ref_logits).abs().max())}
            del m, step
        except Exception as e:  # noqa: BLE001  a kernel that cannot run this shape is no candidate
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def pick_backend(times: dict[str, dict], tol: float = 1e-2) -> str:
    """The fastest backend whose logits agree with chunkwise's within `tol` (chunkwise when none does)."""
    ok = {n: r["ms_per_step"] for n, r in times.items()
          if "ms_per_step" in r and r["max_abs_logit_diff_vs_chunkwise"] <= tol}
    return min(ok, key=ok.get) if ok else "chunkwise"


def train_pair(out: str | Path, cfg: PairConfig, log=print) -> dict:
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(cfg.device)
    graph = cfg.graph and dev.type == "cuda"
    aug = cfg.augment or DATASET_AUGMENT.get(cfg.dataset, AugmentConfig())
    flip_tta = aug.hflip > 0
    data = load_dataset(cfg.dataset, cfg.data_dir, device=dev)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]

    def whole_batches(x, y):  # whole batches (one captured shape); the rest is one eager batch
        bs = min(cfg.eval_batch_size, len(y))
        n_full = len(y) // bs * bs
        full = [(x[i:i + bs], y[i:i + bs]) for i in range(0, n_full, bs)]
        return full, ((x[n_full:], y[n_full:]) if n_full < len(y) else None), len(y)

    test = whole_batches(xte, yte)
    n_fit = min(cfg.train_eval_size, len(ytr))
    fit = whole_batches(xtr[:n_fit], ytr[:n_fit]) if n_fit else None
    sample = make_sampler(xtr, ytr, cfg.batch_size, aug)
    num_classes = int(ytr.max()) + 1

    models, steps, infers, timers = {}, {}, {}, {}
    for name in MODELS:
        torch.manual_seed(cfg.seed)
        m = build_model(name, image_size=tuple(xtr.shape[2:]), patch_size=cfg.patch_size, dim=cfg.dim,
                        depth=cfg.depth, num_heads=cfg.num_heads, num_classes=num_classes, backend=cfg.backend,
                        pooling=cfg.pooling, chunk_size=cfg.chunk_size).to(dev)
        steps[name] = TrainStep(m, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, amp=cfg.amp,
                                grad_clip=cfg.grad_clip, label_smoothing=cfg.label_smoothing,
                                ema_decay=cfg.ema_decay, graph=graph)
        if cfg.compile and name == "vil":
            compile_blocks(m, cfg.compile)
            if steps[name].ema is not None:
                compile_blocks(steps[name].ema, cfg.compile)
        models[name] = m
        timers[name] = StepTimer(dev)
        infers[name] = InferStep(m, amp=cfg.amp, graph=graph)
        if steps[name].ema is not None:
            infers[name + "_ema"] = InferStep(steps[name].ema, amp=cfg.amp, graph=graph)

    def accuracy(inf, split, flip=False) -> float:
        full, rest, n = split
        acc = _accuracy(inf, full, flip) * sum(len(y) for _, y in full)
        if rest is not None:
            acc += _accuracy(InferStep(inf.model, amp=cfg.amp), [rest], flip) * len(rest[1])
        return acc / n

    def evaluate(final: bool = False) -> dict[str, dict[str, float]]:
        accs = {"test": {k: accuracy(inf, test) for k, inf in infers.items()}}
        if final and flip_tta:
            accs["test_flip_tta"] = {k: accuracy(inf, test, flip=True) for k, inf in infers.items()}
        if fit is not None:
            accs["train_clean"] = {k: accuracy(infers[k], fit) for k in MODELS}
        return accs

    from flashxlstm.models.vision import num_parameters
    res = {"config": {k: v for k, v in cfg.to_dict().items() if k != "augment"}, "augment": asdict(aug),
           "comparison": "equal steps on the same batches (lockstep), same recipe and schedule",
           "num_parameters": {n: num_parameters(m) for n, m in models.items()},
           "model_config": {n: {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(m.cfg).items()}
                            for n, m in models.items()},
           "tokens_per_image": models["vil"].patch.num_patches, "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "graph": graph, "train_size": len(ytr), "history": [], "partial": True,
           "data_load_s": time.perf_counter() - t_start}
    log(f"vision pair: ViL {res['num_parameters']['vil']:,} / ViT {res['num_parameters']['vit']:,} parameters, "
        f"{res['tokens_per_image']} tokens per image (ViL chunk {models['vil'].cfg.chunk_size}), batch "
        f"{cfg.batch_size}, graph {graph}, at most {cfg.steps} steps"
        + (f" / {cfg.time_budget_s:.0f} s" if cfg.time_budget_s else ""))

    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    step = 0
    losses = {n: None for n in MODELS}
    checks = {}
    while True:
        progress = cfg.progress(step, time.perf_counter() - t0)
        if progress >= 1.0:
            break
        lr = cfg.lr_at(step, progress)
        x, y = sample(rng)
        timed = step >= 10 and step % cfg.time_every == 0  # past the warm-up and capture steps
        for name in MODELS:
            started = timers[name].start() if timed else None
            losses[name] = steps[name](x, y, lr)
            if timed:
                timers[name].stop(started)
            if graph and name not in checks and (steps[name].captured or steps[name].graph_error):
                if steps[name].captured:
                    checks[name] = steps[name].check_graph(x, y, lr)  # the replay against an eager step
                    log(f"{name}: CUDA graph captured after {time.perf_counter() - t0:.1f} s; replay vs eager "
                        f"max |diff| {checks[name]}")
                    if checks[name]["loss"] > 1e-3 or checks[name]["weights"] > 1e-4:
                        steps[name].fall_back(f"replay disagrees with the eager step: {checks[name]}")
                if steps[name].graph_error:
                    checks[name] = {"eager": steps[name].graph_error}
                    log(f"{name}: training eagerly ({steps[name].graph_error})")
        step += 1
        if step % cfg.eval_every == 0:
            _record(res, step, t0, losses, lr, evaluate(), timers, cfg, checks, out, log)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    train_s = time.perf_counter() - t0
    _record(res, step, t0, losses, lr if step else 0.0, evaluate(final=True), timers, cfg, checks, out, log)
    res.update(partial=False, steps=step, train_loop_s=train_s, total_wall_s=time.perf_counter() - t_start)
    write_json_atomic(out / "results.json", res)
    (out / "results.md").write_text(summary_table(res))
    return res


def _record(res, step, t0, losses, lr, accs, timers, cfg, checks, out, log) -> None:
    point = {"step": step, "elapsed_s": round(time.perf_counter() - t0, 1),
             "images_seen": step * cfg.batch_size, "epochs": step * cfg.batch_size / res["train_size"], "lr": lr,
             "train_loss": {n: (float(v) if v is not None else None) for n, v in losses.items()},
             "test_accuracy": accs["test"], **{k: v for k, v in accs.items() if k != "test"}}
    res["history"].append(point)
    res["graph_check"] = checks
    res["steps"] = step
    ms = {n: t.mean_ms() for n, t in timers.items()}
    res["device_ms_per_step"] = ms
    res["device_s_estimate"] = {n: (v * step / 1000 if v is not None else None) for n, v in ms.items()}
    write_json_atomic(out / "results.json", res)
    fit = accs.get("train_clean", {})
    log(f"step {step} ({point['elapsed_s']:.0f} s, {point['epochs']:.2f} epochs): " +
        ", ".join(f"{k} {v:.4f}" for k, v in accs["test"].items()) +
        ("; clean train " + ", ".join(f"{k} {v:.4f}" for k, v in fit.items()) if fit else "") +
        ("; flip TTA " + ", ".join(f"{k} {v:.4f}" for k, v in accs["test_flip_tta"].items())
         if "test_flip_tta" in accs else "") +
        "; ms/step " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items() if v is not None))


def summary_table(res: dict) -> str:
    last = res["history"][-1]
    acc, tta, fit = last["test_accuracy"], last.get("test_flip_tta", {}), last.get("train_clean", {})
    ms = res.get("device_ms_per_step", {})
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    lines = [f"ViL vs ViT, {res['comparison']}; {last['step']} steps x batch {res['config']['batch_size']} "
             f"({last['epochs']:.1f} epochs) in {last['elapsed_s']:.0f} s on {res['device_name']}"
             f"{' (CUDA graphs)' if res['graph'] else ''}", "",
             "| model | params | tokens | test acc (final weights) | test acc (EMA) | flip TTA (final / EMA) | "
             "clean train acc | best eval (final weights) | device ms per step | device s (est.) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n in MODELS:
        best = max(h["test_accuracy"][n] for h in res["history"])
        m = ms.get(n)
        dev_ms, dev_s = ("-", "-") if m is None else (f"{m:.1f}", f"{m * last['step'] / 1000:.0f}")
        lines.append(f"| {n} | {res['num_parameters'][n]:,} | {res['tokens_per_image']} | {acc[n]:.4f} | "
                     f"{fmt(acc.get(n + '_ema'))} | {fmt(tta.get(n))} / {fmt(tta.get(n + '_ema'))} | "
                     f"{fmt(fit.get(n))} | {best:.4f} | {dev_ms} | {dev_s} |")
    return "\n".join(lines) + "\n"
