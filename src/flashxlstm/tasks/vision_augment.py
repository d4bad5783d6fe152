"""Batched image augmentation on the images' own device: random crop after zero padding, horizontal flip and
random erasing, drawn per image from one torch Generator (same seed, same device -> same output).

    params = draw_params(batch, height, width, generator, cfg)     # per-image ints, on the generator's device
    out = apply_augment(images, params)                            # (B, C, H, W) -> (B, C, H, W)
    out = augment(images, generator, cfg)                          # both

Crop and flip are one gather: output pixel (y, x) of image b reads padded pixel
(oy_b + y, ox_b + (W - 1 - x if flip_b else x)) of the image zero-padded by `pad` on every side, with offsets
oy_b, ox_b uniform in [0, 2 pad]. Erasing (probability `erase`) sets a box to 0 whose area is a uniform
fraction in `erase_scale` of the image and whose aspect ratio h / w is log-uniform in `erase_ratio`, clipped
to the image, at a uniform position. No per-image Python loop: the cost is a few tensor ops per batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    pad: int = 0  # random crop: pixels of zero padding per side (0: no crop)
    hflip: float = 0.0  # probability of a horizontal flip
    erase: float = 0.0  # probability of random erasing
    erase_scale: tuple[float, float] = (0.02, 0.25)  # erased area as a fraction of the image
    erase_ratio: tuple[float, float] = (0.3, 3.3)  # aspect ratio h / w of the erased box

    def __post_init__(self) -> None:
        if self.pad < 0 or not 0.0 <= self.hflip <= 1.0 or not 0.0 <= self.erase <= 1.0:
            raise ValueError(f"AugmentConfig: pad must be >= 0 and hflip, erase probabilities in [0, 1], got pad "
                             f"{self.pad}, hflip {self.hflip}, erase {self.erase}")
        lo, hi = self.erase_scale
        rlo, rhi = self.erase_ratio
        if not (0.0 < lo <= hi <= 1.0 and 0.0 < rlo <= rhi):
            raise ValueError(f"AugmentConfig: erase_scale must satisfy 0 < lo <= hi <= 1 and erase_ratio "
                             f"0 < lo <= hi, got {self.erase_scale}, {self.erase_ratio}")

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.hflip > 0 or self.erase > 0


def draw_params(batch: int, height: int, width: int, generator: torch.Generator,
                cfg: AugmentConfig) -> dict[str, Tensor]:
    """Per-image crop offsets (oy, ox), flip flags and erase boxes (top, left, h, w; h = 0 when not erased),
    as int64 / bool tensors of shape (batch,) on the generator's device."""
    dev = generator.device
    u = torch.rand(batch, 7, generator=generator, device=dev, dtype=torch.float64)
    span = 2 * cfg.pad + 1
    oy = (u[:, 0] * span).long().clamp_(max=span - 1)
    ox = (u[:, 1] * span).long().clamp_(max=span - 1)
    flip = u[:, 2] < cfg.hflip
    lo, hi = cfg.erase_scale
    area = (lo + (hi - lo) * u[:, 3]) * (height * width)
    log_r = math.log(cfg.erase_ratio[0]) + (math.log(cfg.erase_ratio[1]) - math.log(cfg.erase_ratio[0])) * u[:, 4]
    r = log_r.exp()
    eh = (area * r).sqrt().round().long().clamp_(1, height)
    ew = (area / r).sqrt().round().long().clamp_(1, width)
    top = (u[:, 5] * (height - eh + 1)).long().clamp_(max=height - 1)
    left = (u[:, 6] * (width - ew + 1)).long().clamp_(max=width - 1)
    erased = torch.rand(batch, generator=generator, device=dev, dtype=torch.float64) < cfg.erase
    eh = torch.where(erased, eh, torch.zeros_like(eh))
    return {"pad": torch.tensor(cfg.pad), "oy": oy, "ox": ox, "flip": flip, "top": top, "left": left,
            "eh": eh, "ew": ew}


def apply_augment(images: Tensor, params: dict[str, Tensor]) -> Tensor:
    """`images` (B, C, H, W) augmented with the per-image `params` of `draw_params` (a new tensor)."""
    if images.dim() != 4:
        raise ValueError(f"apply_augment: expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    b, c, h, w = images.shape
    if params["oy"].shape != (b,):
        raise ValueError(f"apply_augment: params drawn for {params['oy'].shape[0]} images, got {b}")
    dev = images.device
    pad = int(params["pad"])
    oy, ox, flip = params["oy"].to(dev), params["ox"].to(dev), params["flip"].to(dev)
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    rows = oy[:, None] + ys  # (B, H) rows of the padded image
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - xs, xs)  # (B, W)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    out = padded.reshape(b, c, -1).gather(2, index).reshape(b, c, h, w)
    top, left, eh, ew = (params[k].to(dev)[:, None] for k in ("top", "left", "eh", "ew"))
    in_rows = (ys >= top) & (ys < top + eh)  # (B, H); eh = 0: nothing erased
    in_cols = (xs >= left) & (xs < left + ew)  # (B, W)
    box = in_rows[:, :, None] & in_cols[:, None, :]
    return out.masked_fill(box[:, None], 0.0)


def augment(images: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    """Draw per-image parameters from `generator` and apply them; `images` itself when nothing is active."""
    if not cfg.active:
        return images
    return apply_augment(images, draw_params(images.shape[0], images.shape[2], images.shape[3], generator, cfg))
