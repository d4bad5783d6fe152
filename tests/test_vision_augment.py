"""Batched augmentation (tasks/vision_augment.py) against a per-image reference loop on the same drawn
parameters; determinism of the seeded stream; the device-side sampler and the backend probe."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flashxlstm.tasks.vision_augment import AugmentConfig, apply_augment, augment, draw_params


def reference(images, params):
    """One image at a time with plain slicing: pad, crop, flip, erase."""
    pad = int(params["pad"])
    out = []
    h, w = images.shape[2:]
    for b in range(images.shape[0]):
        img = F.pad(images[b], (pad, pad, pad, pad))
        oy, ox = int(params["oy"][b]), int(params["ox"][b])
        img = img[:, oy:oy + h, ox:ox + w].clone()
        if params["flip"][b]:
            img = img.flip(-1)
        t, left, eh, ew = (int(params[k][b]) for k in ("top", "left", "eh", "ew"))
        img[:, t:t + eh, left:left + ew] = 0.0
        out.append(img)
    return torch.stack(out)


@pytest.mark.parametrize("shape,cfg", [((16, 3, 7, 5), AugmentConfig(pad=2, hflip=0.5, erase=0.5)),
                                       ((9, 1, 28, 28), AugmentConfig(pad=4, hflip=0.3, erase=1.0)),
                                       ((5, 2, 1, 3), AugmentConfig(pad=1, hflip=1.0, erase=0.7, erase_scale=(0.5, 1.0)))])
def test_matches_per_image_reference(shape, cfg):
    x = torch.rand(*shape, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    params = draw_params(shape[0], shape[2], shape[3], g, cfg)
    y = apply_augment(x, params)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, reference(x, params), rtol=0, atol=0)
    # the drawn boxes stay inside the image, offsets inside the padding
    assert int(params["oy"].max()) <= 2 * cfg.pad and int(params["ox"].min()) >= 0
    assert bool((params["top"] + params["eh"] <= shape[2]).all() and (params["left"] + params["ew"] <= shape[3]).all())


def test_identity_flip_and_determinism():
    x = torch.rand(64, 1, 10, 10)
    assert augment(x, torch.Generator().manual_seed(0), AugmentConfig()) is x
    torch.testing.assert_close(augment(x, torch.Generator().manual_seed(0), AugmentConfig(hflip=1.0)), x.flip(-1))
    cfg = AugmentConfig(pad=2, hflip=0.5, erase=0.25)
    a = augment(x, torch.Generator().manual_seed(1), cfg)
    b = augment(x, torch.Generator().manual_seed(1), cfg)
    c = augment(x, torch.Generator().manual_seed(2), cfg)
    assert torch.equal(a, b) and not torch.equal(a, c)
    flips = draw_params(4000, 10, 10, torch.Generator().manual_seed(0), cfg)
    assert abs(flips["flip"].float().mean().item() - 0.5) < 0.05
    assert abs((flips["eh"] > 0).float().mean().item() - 0.25) < 0.05


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="pad"):
        AugmentConfig(pad=-1)
    with pytest.raises(ValueError, match="erase_scale"):
        AugmentConfig(erase_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        apply_augment(torch.rand(3, 4, 4), draw_params(3, 4, 4, torch.Generator(), AugmentConfig()))


def test_sampler_seeded_and_fastest_backend():
    from flashxlstm.tasks.harness import TrainConfig
    from flashxlstm.tasks.vision import build_model, fastest_backend, make_sampler
    x = torch.rand(50, 1, 8, 8)
    y = torch.arange(50) % 10
    sample = make_sampler(x, y, 12, AugmentConfig(pad=1, hflip=0.5, erase=0.5))
    (xa, ya), (xb, yb) = sample(np.random.default_rng(5)), sample(np.random.default_rng(5))
    assert xa.shape == (12, 1, 8, 8) and torch.equal(xa, xb) and torch.equal(ya, yb)
    name, times = fastest_backend(
        lambda b: build_model("vil", image_size=(8, 8), patch_size=4, dim=16, depth=1, num_heads=2, num_classes=10,
                              backend=b), sample, TrainConfig(steps=1), candidates=("parallel", "chunkwise", "nope"),
        steps=1)
    assert set(times) == {"parallel", "chunkwise"} and name in times and all(t > 0 for t in times.values())
