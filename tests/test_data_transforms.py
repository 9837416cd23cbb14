"""Train and eval pipelines: sizes, value ranges, normalisation, and where augmentation acts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mlic.config import DataConfig
from mlic.data import build_transforms, make_transforms, to_model_input


def constant(colour=(200, 100, 50), size=(50, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_eval_resizes_to_a_square_and_scales_to_unit_range():
    out = make_transforms(24, train=False)(constant())
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    expected = torch.tensor([200, 100, 50]).view(3, 1, 1) / 255  # a constant image stays so
    assert torch.allclose(out, expected.expand_as(out), atol=1e-6)


def test_normalisation_matches_its_formula():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    out = make_transforms(8, train=False, mean=mean, std=std)(constant())
    x = torch.tensor([200, 100, 50]) / 255
    expected = (x - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(out[:, 0, 0], expected, atol=1e-5)


def test_train_pipeline_augments_reproducibly_and_only_when_asked():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    train = make_transforms(32, train=True, randaugment_ops=2, randaugment_magnitude=9)
    evaluation = make_transforms(32, train=False)
    torch.manual_seed(0)
    a = train(image)
    torch.manual_seed(0)
    b = train(image)
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    assert a.min() >= 0.0 and a.max() <= 1.0
    reference = evaluation(image)
    changed = sum(not torch.equal(train(image), reference) for _ in range(10))
    assert changed >= 8  # RandAugment's identity op is 1 of 14, twice
    off = make_transforms(32, train=True, randaugment=False)
    assert torch.equal(off(image), reference)


def test_build_transforms_reads_the_config():
    cfg = DataConfig(image_size=40, randaugment=False, mean=[0.1, 0.1, 0.1], std=[2.0, 2.0, 2.0])
    out = build_transforms(cfg, train=True)(constant())
    assert out.shape == (3, 40, 40)
    assert out[0, 0, 0].item() == pytest.approx((200 / 255 - 0.1) / 2.0, abs=1e-5)


@pytest.mark.parametrize("normalised", [False, True])
def test_uint8_items_finished_later_are_the_same_bits_as_the_float_pipeline(normalised):
    # The engine loads uint8 and converts on its device; the recorded runs must not change.
    stats = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]} if normalised else {}
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)) for _ in range(3)]
    floats = make_transforms(24, train=False, **stats)
    raw = make_transforms(24, train=False, uint8=True, **stats)
    items = [raw(image) for image in images]
    assert all(item.dtype == torch.uint8 and item.shape == (3, 24, 24) for item in items)
    batch = to_model_input(torch.stack(items), **stats)  # a collated batch, as on the device
    expected = torch.stack([floats(image) for image in images])
    assert batch.dtype == torch.float32 and torch.equal(batch, expected)
    assert to_model_input(expected, **stats) is expected  # float input is already finished


def test_conversion_keeps_the_channels_last_layout_of_the_uint8_batch():
    batch = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    batch = batch.contiguous(memory_format=torch.channels_last)
    out = to_model_input(batch, [0.5, 0.5, 0.5], [0.2, 0.2, 0.2])
    assert out.is_contiguous(memory_format=torch.channels_last)
