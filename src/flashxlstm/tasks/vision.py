"""Image classification in the shared training loop (tasks/harness.py): data, and one ViL or ViT run.

Data comes from installed packages, nothing is downloaded: sklearn's bundled digits (8x8, 1797 images; a fixed
split of 1437 train / 360 test) and Fashion-MNIST (28x28, 60k / 10k) from Debian's `dataset-fashion-mnist`
package, whose idx.gz files lie in /usr/share/datasets/fashion-mnist (or any `data_dir`). Pixels are scaled
to [0, 1]. Training data stays on the training device; each batch is drawn and augmented there
(tasks/vision_augment.py: crop, flip and erasing on Fashion-MNIST by default, nothing on digits, whose classes
are not flip-invariant).
"""
from __future__ import annotations

import gzip
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .vision_augment import AugmentConfig, augment

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (gzip-compressed when the name ends in .gz) of unsigned bytes as a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes (magic {raw[:4].hex()}, expected 000008NN)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes), file holds {data.size}")
    return data.reshape(shape)


def load_fashion_mnist(data_dir: str | Path = FASHION_MNIST_DIR) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images (N, 28, 28) uint8, labels (N,)), "test": ...} from the idx.gz files in `data_dir`."""
    d = Path(data_dir)
    missing = [n for pair in FASHION_FILES.values() for n in pair if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST not found in {d} (missing {', '.join(missing)}): install Debian's "
                                f"package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist) or pass "
                                f"--data-dir to a folder holding its idx.gz files")
    return {split: (read_idx(d / img), read_idx(d / lab)) for split, (img, lab) in FASHION_FILES.items()}


def load_digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    perm = np.random.default_rng(0).permutation(len(d.target))
    tr, te = perm[:1437], perm[1437:]
    return {"train": (images[tr], d.target[tr]), "test": (images[te], d.target[te])}


def load_dataset(name: str, data_dir: str | None = None,
                 device: str | torch.device = "cpu") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Images (N, 1, H, W) float32 in [0, 1] and labels (N,) int64 per split, on `device` (the bytes move
    there first and are scaled there: a quarter of the copy, and no host pass over the floats)."""
    if name == "digits":
        raw = load_digits_split()
    elif name == "fashion-mnist":
        raw = load_fashion_mnist(data_dir or FASHION_MNIST_DIR)
    else:
        raise ValueError(f"dataset must be digits or fashion-mnist, got {name!r}")
    return {s: (torch.from_numpy(np.array(x, dtype=np.uint8)).to(device).float().div_(255.0)[:, None],
                torch.from_numpy(y.astype(np.int64)).to(device)) for s, (x, y) in raw.items()}


def default_chunk_size(tokens: int, largest: int = 64) -> int:
    """The mLSTM chunk for `tokens` tokens per image: the whole sequence up to `largest` tokens (one chunk, no
    padding), else the largest divisor <= `largest` when it is at least `largest` / 4 (no padding), else
    `largest` (the torch form pads the tail)."""
    if tokens <= largest:
        return max(tokens, 1)
    best = max(d for d in range(1, largest + 1) if tokens % d == 0)
    return best if best >= largest // 4 else largest


def build_model(name: str, *, image_size, patch_size: int, dim: int, depth: int, num_heads: int,
                num_classes: int, backend: str = "auto", pooling: str = "bilateral_concat",
                chunk_size: int | None = None):
    """ViL of `depth` blocks, or the ViT of the same width whose depth matches the ViL's parameter count.
    `chunk_size` None: `default_chunk_size` of the tokens per image."""
    from flashxlstm.models.vision import PatchEmbed, ViL, ViLConfig, ViT, ViTConfig, matched_vit, num_parameters
    if chunk_size is None:
        chunk_size = default_chunk_size(PatchEmbed(image_size, patch_size, 1, 1).num_patches)
    vil = ViL(ViLConfig(image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim,
                        depth=depth, num_heads=num_heads, backend=backend, pooling=pooling, chunk_size=chunk_size))
    if name == "vil":
        return vil
    if name == "vit":
        return ViT(matched_vit(ViTConfig(image_size=image_size, patch_size=patch_size, num_classes=num_classes,
                                         dim=dim, num_heads=num_heads), num_parameters(vil)))
    raise ValueError(f"model must be vil or vit, got {name!r}")


@torch.no_grad()
def images_per_second(model, images: torch.Tensor, device: str, batch_size: int, cfg=None) -> float:
    """Inference throughput over `images` (one warm-up batch first, not counted)."""
    from .harness import _sync, autocast
    from contextlib import nullcontext
    model.eval()
    ctx = (lambda: autocast(cfg)) if cfg is not None else nullcontext
    with ctx():
        model(images[:batch_size].to(device))
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(images), batch_size):
        with ctx():
            model(images[i:i + batch_size].to(device))
    _sync(device)
    model.train()
    return len(images) / (time.perf_counter() - t0)


DATASET_AUGMENT = {"digits": AugmentConfig(), "fashion-mnist": AugmentConfig(pad=2, hflip=0.5, erase=0.25)}
BACKEND_CANDIDATES = ("parallel", "chunkwise", "triton")


def make_sampler(images: torch.Tensor, labels: torch.Tensor, batch_size: int, aug: AugmentConfig):
    """`sample(rng)` for the training loop: a batch drawn with replacement and augmented on `images`' device.
    A torch Generator seeded from `rng` draws the indices and the augmentation, so the batch stream is a
    function of the numpy stream alone (keep the data on the GPU: no per-step host copies of images)."""
    def sample(rng: np.random.Generator):
        gen = torch.Generator(device=images.device)
        gen.manual_seed(int(rng.integers(0, 2 ** 62)))
        idx = torch.randint(0, len(labels), (batch_size,), generator=gen, device=images.device)
        return augment(images[idx], gen, aug), labels[idx]
    return sample


def fastest_backend(make_model, sample, cfg, candidates=BACKEND_CANDIDATES, steps: int = 4,
                    log=None) -> tuple[str, dict[str, float]]:
    """The mLSTM backend with the shortest median training step (after two untimed steps: compilation) among
    the `candidates` available on `cfg.device`; `make_model(backend)` builds the model. Returns (name, {name:
    step ms})."""
    from flashxlstm.ops.mlstm_cell import BACKENDS
    from .harness import _step, _sync
    times, errors = {}, {}
    rng = np.random.default_rng([cfg.seed, 77])  # not the training stream
    for name in candidates:
        if name not in BACKENDS:
            continue
        model = make_model(name).to(cfg.device).train()
        opt = cfg.optimizer(model)
        t = []
        try:
            for _ in range(steps + 2):
                x, y = sample(rng)
                t0 = time.perf_counter()
                _step(model, opt, x.to(cfg.device), y.to(cfg.device), cfg, cfg.lr * 1e-3)
                _sync(cfg.device)
                t.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001  a kernel that cannot compile or run this shape is no candidate
            errors[name] = f"{type(e).__name__}: {e}"[:300]
            if log is not None:
                log(f"backend {name}: failed, skipped ({errors[name]})")
            continue
        finally:
            del model, opt
        times[name] = 1000 * float(np.median(t[2:]))
        if log is not None:
            log(f"backend {name}: {times[name]:.1f} ms per training step (first step {1000 * t[0]:.0f} ms)")
    if not times:
        raise ValueError(f"none of the backends {candidates} ran; available: {sorted(BACKENDS)}; errors: {errors}")
    return min(times, key=times.get), times


def run_vision(model_name: str, dataset: str, out: str | Path, *, train_cfg, batch_size: int = 128,
               eval_batch_size: int = 256, patch_size: int = 4, dim: int = 64, depth: int = 4, num_heads: int = 4,
               backend: str = "auto", pooling: str = "bilateral_concat", data_dir: str | None = None,
               augment_cfg: AugmentConfig | None = None, log=None) -> dict:
    """Train one model on `dataset`, evaluate on its test split; writes OUT/results.json and returns it.

    `augment_cfg` None: the dataset's default (`DATASET_AUGMENT`). `backend="fastest"` (ViL only) first times
    a few training steps with each mLSTM backend (`fastest_backend`) and trains with the fastest."""
    from flashxlstm.models.vision import num_parameters
    from .harness import evaluate, train
    t_start = time.perf_counter()
    aug = DATASET_AUGMENT[dataset] if augment_cfg is None and dataset in DATASET_AUGMENT else augment_cfg
    aug = aug or AugmentConfig()
    dev = train_cfg.device
    data = load_dataset(dataset, data_dir, device=dev)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    load_s = time.perf_counter() - t_start
    sample = make_sampler(xtr, ytr, batch_size, aug)

    def make(b: str):
        return build_model(model_name, image_size=tuple(xtr.shape[2:]), patch_size=patch_size, dim=dim,
                           depth=depth, num_heads=num_heads, num_classes=int(ytr.max()) + 1, backend=b,
                           pooling=pooling)

    probe = None
    if backend == "fastest":
        if model_name != "vil":
            raise ValueError("backend 'fastest' picks the ViL's mLSTM kernel; the ViT has none")
        backend, probe = fastest_backend(make, sample, train_cfg, log=log)
    torch.manual_seed(train_cfg.seed)
    model = make(backend)
    test = [(xte[i:i + eval_batch_size], yte[i:i + eval_batch_size]) for i in range(0, len(yte), eval_batch_size)]
    hist = train(model, sample, {"test": test}, train_cfg, log=log)
    final = evaluate(model, test, dev, train_cfg)
    res = {"model": model_name, "dataset": dataset, "test_accuracy": final["accuracy"], "test_loss": final["loss"],
           "best_test_accuracy": max([final["accuracy"]] + [p["test_accuracy"] for p in hist["history"]]),
           "num_parameters": num_parameters(model), "tokens_per_image": model.patch.num_patches,
           "batch_size": batch_size, "augment": asdict(aug), "backend": backend if model_name == "vil" else None,
           "backend_probe_step_ms": probe, "data_load_s": load_s,
           "train_images_per_s": hist["steps_done"] * batch_size / hist["train_time_s"],
           "eval_images_per_s": images_per_second(model, xte, dev, eval_batch_size, train_cfg),
           "model_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(model.cfg).items()},
           "device": dev, "device_name": torch.cuda.get_device_name(dev) if dev.startswith("cuda") else "cpu",
           "torch": torch.__version__, **hist, "total_wall_s": time.perf_counter() - t_start}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    return res
