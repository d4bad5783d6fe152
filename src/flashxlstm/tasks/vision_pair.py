"""ViL and its parameter-matched ViT trained side by side in lockstep: equal steps on the same batches.

    res = train_pair(out_dir, PairConfig(dataset="fashion-mnist", device="cuda", amp="bf16", train_s=280))

Each loop iteration draws one augmented batch and gives it to both models (ViL step, then ViT step), so at
any moment both have taken the same number of optimiser steps on the same images: the comparison stays fair
on a GPU shared with other jobs (where equal wall time would not be) and when the run is killed early. The
learning rate follows the elapsed fraction of `train_s` (linear warm-up over `warmup_frac`, then a cosine to
zero), the same value for both models at every step, so the schedule ends on time however fast the GPU is.
Steps run through tasks/vision_step.py (CUDA graphs on a GPU). Every `eval_every_s` seconds both models (and
their EMA weights, with `ema_decay`) are evaluated on the full test split, and OUT/results.json is rewritten
(written to a temporary file, then renamed) with everything so far, so a kill leaves the last evaluation.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoints.atomic import write_json_atomic
from ..training.schedule import cosine_decay
from .vision import DATASET_AUGMENT, build_model, load_dataset, make_sampler
from .vision_augment import AugmentConfig
from .vision_step import InferStep, TrainStep, compile_blocks


@dataclass
class PairConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    device: str = "cpu"
    amp: str = "none"
    graph: bool = True  # CUDA graphs on a CUDA device (ignored elsewhere)
    compile: str | None = None  # torch.compile backend for the ViL's blocks (None: eager; the ViT's are torch's own)
    seed: int = 0
    batch_size: int = 512
    eval_batch_size: int = 2000
    patch_size: int = 4
    dim: int = 192
    depth: int = 8
    num_heads: int = 3
    backend: str = "chunkwise"
    pooling: str = "bilateral_concat"
    lr: float = 2e-3
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    ema_decay: float | None = 0.999
    warmup_frac: float = 0.05
    train_s: float = 60.0  # wall seconds of the training loop (evaluations included)
    max_steps: int | None = None  # an optional step cap (tests)
    eval_every_s: float = 30.0
    augment: AugmentConfig | None = None  # None: the dataset's default (tasks/vision.py DATASET_AUGMENT)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.train_s > 0 or not 0.0 <= self.warmup_frac < 1.0 or self.batch_size < 1:
            raise ValueError(f"PairConfig: train_s must be > 0, warmup_frac in [0, 1) and batch_size >= 1, got "
                             f"{self.train_s}, {self.warmup_frac}, {self.batch_size}")


def lr_at_fraction(frac: float, lr: float, warmup_frac: float) -> float:
    """Linear warm-up to `lr` over the first `warmup_frac` of the run, then a half cosine to 0 at frac = 1."""
    frac = min(max(frac, 0.0), 1.0)
    if frac < warmup_frac:
        return lr * max(frac / warmup_frac, 1e-3)
    return cosine_decay((frac - warmup_frac) / (1.0 - warmup_frac), lr=lr, min_lr=0.0)


def _accuracy(infer, batches) -> float:
    correct = total = 0
    for x, y in batches:
        correct += int((infer(x).argmax(-1) == y).sum())
        total += len(y)
    return correct / total


def time_backends(cfg: PairConfig, candidates=("chunkwise", "triton"), steps: int = 5) -> dict[str, dict]:
    """Per mLSTM backend available here: ms per ViL training step at `cfg`'s shapes (through TrainStep, so a
    replayed CUDA graph on a GPU) and the largest |difference| of its float32 logits from the chunkwise
    backend's on the same weights and images. A backend that fails gets {"error": ...}. Random images: the
    timing needs shapes, not data."""
    from flashxlstm.ops.mlstm_cell import BACKENDS
    dev = torch.device(cfg.device)
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
                            pooling=cfg.pooling).to(dev)
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
    dev = torch.device(cfg.device)
    graph = cfg.graph and dev.type == "cuda"
    aug = cfg.augment or DATASET_AUGMENT.get(cfg.dataset, AugmentConfig())
    data = load_dataset(cfg.dataset, cfg.data_dir)
    (xtr, ytr), (xte, yte) = ((x.to(dev), y.to(dev)) for x, y in (data["train"], data["test"]))
    ebs = min(cfg.eval_batch_size, len(yte))
    n_full = len(yte) // ebs * ebs  # whole batches (one captured shape); the rest is one eager batch
    test = [(xte[i:i + ebs], yte[i:i + ebs]) for i in range(0, n_full, ebs)]
    rest = (xte[n_full:], yte[n_full:]) if n_full < len(yte) else None
    sample = make_sampler(xtr, ytr, cfg.batch_size, aug)
    num_classes = int(ytr.max()) + 1

    models, steps, infers = {}, {}, {}
    for name in ("vil", "vit"):
        torch.manual_seed(cfg.seed)
        m = build_model(name, image_size=tuple(xtr.shape[2:]), patch_size=cfg.patch_size, dim=cfg.dim,
                        depth=cfg.depth, num_heads=cfg.num_heads, num_classes=num_classes, backend=cfg.backend,
                        pooling=cfg.pooling).to(dev)
        steps[name] = TrainStep(m, lr=cfg.lr, weight_decay=cfg.weight_decay, amp=cfg.amp, grad_clip=cfg.grad_clip,
                                label_smoothing=cfg.label_smoothing, ema_decay=cfg.ema_decay, graph=graph)
        if cfg.compile and name == "vil":
            compile_blocks(m, cfg.compile)
            if steps[name].ema is not None:
                compile_blocks(steps[name].ema, cfg.compile)
        models[name] = m
        infers[name] = InferStep(m, amp=cfg.amp, graph=graph)
        if steps[name].ema is not None:
            infers[name + "_ema"] = InferStep(steps[name].ema, amp=cfg.amp, graph=graph)

    def evaluate() -> dict[str, float]:
        accs = {}
        for key, inf in infers.items():
            acc = _accuracy(inf, test) * n_full
            if rest is not None:
                acc += _accuracy(InferStep(inf.model, amp=cfg.amp), [rest]) * len(rest[1])
            accs[key] = acc / len(yte)
        return accs

    from flashxlstm.models.vision import num_parameters
    res = {"config": {k: v for k, v in asdict(cfg).items() if k != "augment"}, "augment": asdict(aug),
           "comparison": "equal steps on the same batches (lockstep), same recipe and schedule",
           "num_parameters": {n: num_parameters(m) for n, m in models.items()},
           "model_config": {n: {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(m.cfg).items()}
                            for n, m in models.items()},
           "tokens_per_image": models["vil"].patch.num_patches, "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "graph": graph, "train_size": len(ytr), "history": [], "partial": True,
           "data_load_s": time.perf_counter() - t_start}
    log(f"vision pair: ViL {res['num_parameters']['vil']:,} / ViT {res['num_parameters']['vit']:,} parameters, "
        f"{res['tokens_per_image']} tokens per image, batch {cfg.batch_size}, graph {graph}, "
        f"train {cfg.train_s:.0f} s")

    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    next_eval = cfg.eval_every_s
    step = 0
    losses = {"vil": None, "vit": None}
    checks = {}
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= cfg.train_s or (cfg.max_steps is not None and step >= cfg.max_steps):
            break
        lr = lr_at_fraction(elapsed / cfg.train_s, cfg.lr, cfg.warmup_frac)
        x, y = sample(rng)
        for name in ("vil", "vit"):
            losses[name] = steps[name](x, y, lr)
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
        if time.perf_counter() - t0 >= next_eval:
            next_eval += cfg.eval_every_s
            _record(res, step, t0, losses, evaluate(), cfg, checks, out, log)
    _sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda *_: None)
    _sync()
    train_s = time.perf_counter() - t0
    _record(res, step, t0, losses, evaluate(), cfg, checks, out, log)
    res.update(partial=False, steps=step, train_loop_s=train_s, total_wall_s=time.perf_counter() - t_start)
    write_json_atomic(out / "results.json", res)
    (out / "results.md").write_text(summary_table(res))
    return res


def _record(res, step, t0, losses, accs, cfg, checks, out, log) -> None:
    point = {"step": step, "elapsed_s": round(time.perf_counter() - t0, 1),
             "images_seen": step * cfg.batch_size, "epochs": step * cfg.batch_size / res["train_size"],
             "train_loss": {n: (float(v) if v is not None else None) for n, v in losses.items()},
             "test_accuracy": accs}
    res["history"].append(point)
    res["graph_check"] = checks
    res["steps"] = step
    write_json_atomic(out / "results.json", res)
    log(f"step {step} ({point['elapsed_s']:.0f} s, {point['epochs']:.2f} epochs): " +
        ", ".join(f"{k} {v:.4f}" for k, v in accs.items()))


def summary_table(res: dict) -> str:
    last = res["history"][-1]
    acc = last["test_accuracy"]
    lines = [f"ViL vs ViT, {res['comparison']}; {last['step']} steps x batch {res['config']['batch_size']} "
             f"({last['epochs']:.1f} epochs) in {last['elapsed_s']:.0f} s on {res['device_name']}"
             f"{' (CUDA graphs)' if res['graph'] else ''}", "",
             "| model | params | tokens | test acc (final weights) | test acc (EMA weights) | best eval (final weights) |",
             "|---|---|---|---|---|---|"]
    for n in ("vil", "vit"):
        best = max(h["test_accuracy"][n] for h in res["history"])
        ema = acc.get(n + "_ema")
        lines.append(f"| {n} | {res['num_parameters'][n]:,} | {res['tokens_per_image']} | {acc[n]:.4f} | "
                     f"{'-' if ema is None else f'{ema:.4f}'} | {best:.4f} |")
    return "\n".join(lines) + "\n"
