"""Multi-label CutMix: the pasted box, the kept fraction and the mixed targets agree."""

from __future__ import annotations

import pytest
import torch

from mlic.data import cutmix
from mlic.errors import ConfigError


def batch(b: int = 4, k: int = 6, size: int = 16):
    """Image i is constant i + 1 (so each pixel tells where it came from); random labels."""
    images = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, size, size)
    targets = (torch.rand(b, k, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    return images.contiguous(), targets


@pytest.mark.parametrize("mode", ["area", "union"])
def test_pasted_box_kept_fraction_and_targets_agree(mode):
    images, targets = batch()
    before = images.clone(), targets.clone()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        mixed, mixed_targets = cutmix(images, targets, alpha=1.0, prob=1.0, mode=mode, generator=g)
        assert torch.equal(images, before[0]) and torch.equal(targets, before[1])  # untouched
        for i in range(images.shape[0]):
            donor = (i - 1) % images.shape[0]
            own = mixed[i] == i + 1
            pasted = mixed[i] == donor + 1
            assert (own | pasted).all()  # every pixel from image i or its donor i-1
            # The pasted region is one axis-aligned box, the same in every channel.
            rows, cols = pasted[0].any(dim=1), pasted[0].any(dim=0)
            assert pasted[0].sum() == rows.sum() * cols.sum()
            assert torch.equal(pasted[0], pasted[1])
            lam = own[0].float().mean().item()  # the kept fraction, measured
            if mode == "area":
                expected = lam * targets[i] + (1 - lam) * targets[donor]
                if lam == 1.0:  # nothing pasted this time
                    expected = targets[i]
            else:
                expected = targets[i] if lam == 1.0 else torch.maximum(targets[i], targets[donor])
            assert torch.allclose(mixed_targets[i], expected, atol=1e-6)
            assert mixed_targets[i].min() >= 0.0 and mixed_targets[i].max() <= 1.0


def test_probability_zero_is_the_identity_and_one_generator_fixes_everything():
    images, targets = batch()
    same = cutmix(images, targets, alpha=1.0, prob=0.0)
    assert same[0] is images and same[1] is targets
    runs = [
        cutmix(images, targets, alpha=1.0, prob=1.0, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_prob_is_the_chance_that_a_batch_is_mixed():
    images, targets = batch(b=2, size=32)
    g = torch.Generator().manual_seed(3)
    mixed = sum(
        not torch.equal(cutmix(images, targets, alpha=1.0, prob=0.3, generator=g)[0], images)
        for _ in range(400)
    )
    assert 80 < mixed < 160  # Binomial(400, ~0.3): mean 120, sd 9


def test_box_area_follows_beta_alpha():
    """With alpha = 1, 1 - lam is uniform (mean 0.5) before the box is clipped at the border;
    clipping only shrinks it (to a mean of ~0.32, measured over 3,000 draws at 64 px)."""
    images, targets = batch(b=2, size=64)
    g = torch.Generator().manual_seed(4)
    fractions = [
        (cutmix(images, targets, alpha=1.0, prob=1.0, generator=g)[0][0, 0] == 2).float().mean()
        for _ in range(300)
    ]
    mean = torch.stack(fractions).mean().item()
    assert 0.26 < mean < 0.45


def test_bad_settings_are_refused():
    images, targets = batch()
    with pytest.raises(ConfigError, match="cutmix_alpha"):
        cutmix(images, targets, alpha=0.0, prob=0.5)
    with pytest.raises(ConfigError, match="cutmix_targets"):
        cutmix(images, targets, alpha=1.0, prob=0.5, mode="max")  # type: ignore[arg-type]
