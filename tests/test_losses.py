"""The asymmetric loss against a slow, direct implementation of the ASL formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlic.losses import AsymmetricLoss


def slow_asl(logits, targets, ignore, gamma_neg, gamma_pos, clip, eps=1e-8) -> float:
    """Element by element in float64 Python: ASL per sample (sum over classes, mean over rows)."""
    total = 0.0
    n, k = len(logits), len(logits[0])
    for i in range(n):
        for j in range(k):
            if ignore is not None and ignore[i][j]:
                continue
            x, y = float(logits[i][j]), float(targets[i][j])
            p = 1.0 / (1.0 + math.exp(-x))
            q = min(1.0 - p + clip, 1.0) if clip > 0 else 1.0 - p  # 1 - p_m
            pos_term = y * math.log(max(p, eps))
            neg_term = (1.0 - y) * math.log(max(q, eps))
            p_t = y * p + (1.0 - y) * q
            gamma = y * gamma_pos + (1.0 - y) * gamma_neg
            weight = (1.0 - p_t) ** gamma
            total += -(pos_term + neg_term) * weight
    return total / n


def _inputs(seed: int, n: int = 6, k: int = 7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 4  # some saturated probabilities
    hard = (torch.rand(n, k, generator=g) < 0.3).float()
    soft = hard * torch.rand(n, k, generator=g)  # CutMix-style area weights in [0, 1]
    ignore = torch.rand(n, k, generator=g) < 0.2
    return logits, hard, soft, ignore


@pytest.mark.parametrize(
    "gamma_neg,gamma_pos,clip", [(4.0, 0.0, 0.05), (2.0, 1.0, 0.0), (3.0, 2.0, 0.2)]
)
@pytest.mark.parametrize("soft_targets", [False, True])
@pytest.mark.parametrize("with_ignore", [False, True])
def test_matches_slow_formula(gamma_neg, gamma_pos, clip, soft_targets, with_ignore):
    logits, hard, soft, ignore = _inputs(seed=int(gamma_neg * 10 + clip * 100))
    targets = soft if soft_targets else hard
    mask = ignore if with_ignore else None
    got = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)(logits, targets, mask)
    want = slow_asl(
        logits.tolist(),
        targets.tolist(),
        mask.tolist() if mask is not None else None,
        gamma_neg,
        gamma_pos,
        clip,
    )
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_no_focusing_no_clip_is_binary_cross_entropy():
    logits, hard, soft, _ = _inputs(seed=3)
    for targets in (hard, soft):
        got = AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0)(logits, targets)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(logits)
        assert got.item() == pytest.approx(bce.item(), rel=1e-5)


def test_gradient_does_not_flow_through_focusing_weight():
    # Hard targets, gamma_pos > 0 so both weights depend on p. With the weight w held constant:
    #   positive:  L = -w log p          dL/dx = -w (1 - p)
    #   negative:  L = -w log(1 - p_m)   dL/dx = w p (1 - p) / (1 - p_m)  if p > clip, else 0
    gamma_neg, gamma_pos, clip = 3.0, 1.0, 0.1
    logits, hard, _, _ = _inputs(seed=5)
    logits = logits.clamp(-6, 6).double().float().requires_grad_(True)
    AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)(logits, hard).backward()
    p = torch.sigmoid(logits.detach().double())
    p_m = (p - clip).clamp(min=0)
    w_pos, w_neg = (1 - p) ** gamma_pos, p_m**gamma_neg
    d_pos = -w_pos * (1 - p)
    d_neg = torch.where(p > clip, w_neg * p * (1 - p) / (1 - p_m), torch.zeros_like(p))
    expected = torch.where(hard > 0, d_pos, d_neg) / len(logits)
    torch.testing.assert_close(logits.grad.double(), expected, rtol=1e-4, atol=1e-7)
    # The same derivative with the weight differentiated differs, so the check above can fail.
    with_weight_grad = torch.where(hard > 0, d_pos + torch.log(p) * p * (1 - p), d_neg)
    assert not torch.allclose(with_weight_grad / len(logits), expected, atol=1e-4)


def test_ignored_entries_give_no_loss_and_no_gradient():
    logits, _, soft, ignore = _inputs(seed=7)
    logits.requires_grad_(True)
    loss_fn = AsymmetricLoss()
    loss = loss_fn(logits, soft, ignore)
    loss.backward()
    assert torch.all(logits.grad[ignore] == 0)
    unmasked = logits.detach().clone().requires_grad_(True)
    loss_fn(unmasked, soft).backward()
    torch.testing.assert_close(logits.grad[~ignore], unmasked.grad[~ignore])
    # Changing the logits or targets of ignored entries changes nothing.
    changed_logits = torch.where(ignore, logits.detach() * -3 + 1, logits.detach())
    changed_targets = torch.where(ignore, 1 - soft, soft)
    assert loss_fn(changed_logits, changed_targets, ignore).item() == pytest.approx(loss.item())


def test_unit_is_per_sample_independent_of_batch_size():
    logits, hard, _, _ = _inputs(seed=11)
    loss_fn = AsymmetricLoss()
    once = loss_fn(logits, hard)
    twice = loss_fn(torch.cat([logits, logits]), torch.cat([hard, hard]))
    assert twice.item() == pytest.approx(once.item(), rel=1e-6)
    per_row = [loss_fn(logits[i : i + 1], hard[i : i + 1]).item() for i in range(len(logits))]
    assert once.item() == pytest.approx(sum(per_row) / len(per_row), rel=1e-6)


def test_low_precision_logits_are_computed_in_float32():
    logits, hard, _, _ = _inputs(seed=13)
    low = logits.to(torch.bfloat16)
    loss = AsymmetricLoss()(low, hard)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(AsymmetricLoss()(low.float(), hard).item(), rel=1e-6)
    # Very confident wrong predictions stay finite (log clamped at eps).
    extreme = torch.full((2, 3), 80.0, dtype=torch.bfloat16)
    assert torch.isfinite(AsymmetricLoss(clip=0.0)(extreme, torch.zeros(2, 3)))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="clip"):
        AsymmetricLoss(clip=1.5)
    with pytest.raises(ValueError, match="differ"):
        AsymmetricLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
