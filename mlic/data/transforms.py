"""Image pipelines (torchvision.transforms.v2): PIL RGB image -> FloatTensor [3, S, S].

Paper §2: images resized to S x S (448 or 576), RandAugment, normalised with mean [0,0,0] and
std [1,1,1] (i.e. pixels in [0, 1]). As in Q2L/ASL the resize ignores the aspect ratio, and it
comes BEFORE RandAugment so that augmentation costs O(S^2), not O(original size).

The engine asks for uint8 tensors (`uint8=True`) and finishes them on its device with
`to_model_input`: loader workers then ship 4x fewer bytes (measured +15-30 % images/s through
a DataLoader at 448 px, `benchmarks/input_pipeline.py`; docs/performance.md), and the numbers
are the same bits as the float pipeline's, because the same two torchvision functions run, only
later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

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
    uint8: bool = False,
) -> Callable[[Image.Image], torch.Tensor]:
    """The train (augmenting) or eval pipeline for square inputs of `image_size` pixels;
    uint8=True stops before the float conversion and normalisation (see `to_model_input`)."""
    steps: list[Callable] = [v2.Resize((image_size, image_size), antialias=True)]
    if train and randaugment:
        # Operates on the PIL image (uint8): the same ops as the RandAugment paper [13].
        steps.append(v2.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude))
    steps.append(v2.PILToTensor())
    if not uint8:
        # One definition of the float conversion for both paths (a partial pickles for workers).
        steps.append(v2.Lambda(partial(to_model_input, mean=tuple(mean), std=tuple(std))))
    return v2.Compose(steps)


def to_model_input(
    images: torch.Tensor,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """uint8 images ([3, S, S] or a batch) -> float32 in [0, 1], normalised; float input is
    returned as it is (already finished by a `uint8=False` pipeline)."""
    if images.dtype != torch.uint8:
        return images
    images = v2.functional.to_dtype(images, torch.float32, scale=True)
    if any(m != 0.0 for m in mean) or any(s != 1.0 for s in std):  # identity skipped
        images = v2.functional.normalize(images, mean=list(mean), std=list(std))
    return images


def build_transforms(
    cfg: DataConfig, train: bool, *, uint8: bool = False
) -> Callable[[Image.Image], torch.Tensor]:
    """`make_transforms` with the sizes and augmentation settings of `cfg`."""
    return make_transforms(
        cfg.image_size,
        train=train,
        randaugment=cfg.randaugment,
        randaugment_ops=cfg.randaugment_ops,
        randaugment_magnitude=cfg.randaugment_magnitude,
        mean=cfg.mean,
        std=cfg.std,
        uint8=uint8,
    )
