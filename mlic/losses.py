"""Asymmetric loss (ASL, Ridnik et al. 2021), the loss of the paper's Fig. 1.

Per logit x with target y in [0, 1] (soft targets come from CutMix), p = sigmoid(x),
p_m = max(p - clip, 0) (the negative's probability shifted by the margin):

    L = -[ y * (1 - p)^gamma_pos * log(p) + (1 - y) * p_m^gamma_neg * log(1 - p_m) ]

with the official code's blend for soft targets: the focusing weight is (1 - p_t)^gamma_t,
p_t = y * p + (1 - y) * (1 - p_m), gamma_t = y * gamma_pos + (1 - y) * gamma_neg, computed
without gradient (ASL's ``disable_torch_grad_focal_loss``, on in its training scripts).
"""

from __future__ import annotations

import torch
from timm.loss import AsymmetricLossMultiLabel
from torch import Tensor, nn


class AsymmetricLoss(nn.Module):
    """ASL per sample: summed over classes, averaged over the samples (rows) of the batch.

    Defaults are the ASL / ML-Decoder training scripts' (gamma_neg 4, gamma_pos 0, clip 0.05).
    The unit is readable whatever the batch size (the official loss returns the batch SUM,
    Q2L 1000 x the mean over all entries); Figure 5's loss curve is in this unit.

    We wrap timm's ``AsymmetricLossMultiLabel``: it is the official formula (clip applied to
    the negatives' probability, log clamped at eps, soft targets blended as above), casts to
    float32 (bf16/fp16 probabilities underflow the eps clamp) and can detach the focusing
    weight. We ask it for the per-element loss so that ``ignore`` can mask entries before
    reducing (VOC's "difficult" objects), which its own reductions cannot.
    """

    def __init__(
        self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8
    ) -> None:
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0:
            raise ValueError(f"gamma_neg={gamma_neg} and gamma_pos={gamma_pos} must be >= 0")
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"clip={clip} is not in [0, 1)")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.elementwise = AsymmetricLossMultiLabel(
            gamma_neg=gamma_neg,
            gamma_pos=gamma_pos,
            clip=clip,
            eps=eps,
            disable_torch_grad_focal_loss=True,
            reduction="none",
        )

    def forward(self, logits: Tensor, targets: Tensor, ignore: Tensor | None = None) -> Tensor:
        """logits [N, K] (any float dtype), targets [N, K] in [0, 1], ignore [N, K] bool -> scalar.

        Entries with ``ignore=True`` contribute neither loss nor gradient; N still counts
        every row.
        """
        if logits.shape != targets.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ"
            )
        loss = self.elementwise(logits, targets)  # [N, K], float32
        if ignore is not None:
            loss = torch.where(ignore, torch.zeros((), dtype=loss.dtype, device=loss.device), loss)
        return loss.sum() / logits.shape[0]

    def extra_repr(self) -> str:
        return f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}"
