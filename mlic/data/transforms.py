"""Image pipelines (torchvision.transforms.v2): PIL RGB image -> FloatTensor [3, S, S].

Paper §2: images resized to S x S (448 or 576), RandAugment, normalised with mean [0,0,0] and
std [1,1,1] (i.e. pixels in [0, 1]). As in Q2L/ASL the resize ignores the aspect ratio, and it
comes BEFORE RandAugment so that augmentation costs O(S^2), not O(original size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from mlic.config import DataConfig


def make_transforms(
    image_size: int,
    *,
    train: bool,
    randaugment: bool = True,
    randaugment_ops: int = 2,
    randaugment_magnitude: int = 9,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> Callable[[Image.Image], torch.Tensor]:
    """The train (augmenting) or eval pipeline for square inputs of `image_size` pixels."""
    steps: list[Callable] = [v2.Resize((image_size, image_size), antialias=True)]
    if train and randaugment:
        # Operates on the PIL image (uint8): the same ops as the RandAugment paper [13].
        steps.append(v2.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude))
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]  # uint8 -> [0, 1]
    if any(m != 0.0 for m in mean) or any(s != 1.0 for s in std):
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))  # identity skipped
    return v2.Compose(steps)


def build_transforms(cfg: DataConfig, train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """`make_transforms` with the sizes and augmentation settings of `cfg`."""
    return make_transforms(
        cfg.image_size,
        train=train,
        randaugment=cfg.randaugment,
        randaugment_ops=cfg.randaugment_ops,
        randaugment_magnitude=cfg.randaugment_magnitude,
        mean=cfg.mean,
        std=cfg.std,
    )
