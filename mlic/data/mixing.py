"""Multi-label CutMix on a batch (paper §2 "cutmix"; Yun et al. 2019).

torchvision's v2.CutMix mixes one-hot single-label targets; here targets are multi-hot.
Image i receives a box cut from image i-1 (the batch rolled by one, as torchvision does; the
sampler has already shuffled the batch). With lam the fraction of image i that is KEPT:

- "area" (default): y = lam * y_i + (1 - lam) * y_{i-1}, soft targets in [0, 1]. A class
  present in both images stays 1; one present only in the pasted box gets its area share.
  The asymmetric loss takes soft targets as they are (its terms are linear in y).
- "union": y = max(y_i, y_{i-1}), i.e. a class is positive if it is in either image, even if
  the box happened to cut its object out (or in) only partly.

One coin flip (probability `prob`) decides for the whole batch, one lam ~ Beta(alpha, alpha)
and one box serve all images of it: the CutMix paper's and torchvision's batch mode.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from mlic.errors import ConfigError


def sample_box(
    height: int, width: int, lam: float, generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """A box (y0, y1, x0, x1) covering about (1 - lam) of the image, its centre uniform and
    its sides clipped to the image (so the kept fraction can exceed lam)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(round(height * ratio)), int(round(width * ratio))
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    return y0, y1, x0, x1


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    # torch's Beta sampler takes no generator; draw a seed from the torch RNG instead, so that
    # `generator` (or torch.manual_seed) alone fixes the result.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def cutmix(
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float,
    prob: float,
    mode: Literal["area", "union"] = "area",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """images [B,3,H,W], targets [B,K] in [0,1] -> mixed copies of both (inputs untouched)."""
    if mode not in ("area", "union"):
        raise ConfigError(f"data.cutmix_targets={mode!r} is not one of 'area', 'union'")
    if prob > 0 and alpha <= 0:
        raise ConfigError(f"data.cutmix_alpha={alpha} must be > 0")
    apply = float(torch.rand((), generator=generator)) < prob
    if not apply or images.shape[0] < 2:
        return images, targets
    height, width = images.shape[-2:]
    y0, y1, x0, x1 = sample_box(height, width, _beta(alpha, generator), generator)
    if (y1 - y0) * (x1 - x0) == 0:
        return images, targets  # lam rounded to 1: nothing pasted, nothing to mix
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # the kept fraction, after clipping

    donor_targets = targets.roll(1, dims=0)  # image i receives from image i-1
    mixed = images.clone()
    # Roll only the pasted box, not the whole batch: half the memory traffic on a GPU batch.
    mixed[:, :, y0:y1, x0:x1] = images[:, :, y0:y1, x0:x1].roll(1, dims=0)
    if mode == "area":
        mixed_targets = lam * targets + (1.0 - lam) * donor_targets
    else:
        mixed_targets = torch.maximum(targets, donor_targets)
    return mixed, mixed_targets
