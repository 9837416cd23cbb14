"""The exponential moving average of the weights, updated with a few multi-tensor kernels.

timm's `ModelEmaV3` already uses `torch._foreach_lerp_`, but on every update it rebuilds both
state_dicts (a Python walk over every module of the 200 M-parameter model), sorts the tensors
by dtype, and copies each integer buffer (the BatchNorm counters: one per norm layer)
with its own tiny kernel. Here the pairs of tensors are collected once, at construction, and an
update is one `_foreach_lerp_` over the floating-point tensors and one `_foreach_copy_` over the
integer ones. Valid because nothing replaces the model's tensors after the EMA is made:
optimizers, `load_state_dict` and DDP all update them in place.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import Tensor, nn


class ForeachEma(ModelEmaV3):
    """`ModelEmaV3` (same `module`, decay and state) with the update on cached tensor lists."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, decay=decay)
        self._pairs_of: nn.Module | None = None
        self._float: tuple[list[Tensor], list[Tensor]] = ([], [])  # same floating dtype
        self._integer: tuple[list[Tensor], list[Tensor]] = ([], [])  # BatchNorm counters
        self._mixed: list[tuple[Tensor, Tensor]] = []  # floating, dtypes differ: per tensor

    def _collect(self, model: nn.Module) -> None:
        self._float, self._integer, self._mixed = ([], []), ([], []), []
        pairs = zip(self.module.state_dict().values(), model.state_dict().values(), strict=True)
        for ema_v, model_v in pairs:
            if not ema_v.is_floating_point():
                group = self._integer
            elif ema_v.dtype == model_v.dtype:
                group = self._float
            else:
                self._mixed.append((ema_v, model_v))
                continue
            group[0].append(ema_v)
            group[1].append(model_v)
        self._pairs_of = model

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """e <- e + (1 - decay) * (m - e) for floating tensors; integer buffers are copied."""
        if self._pairs_of is not model:
            self._collect(model)
        weight = 1.0 - self.get_decay(step)
        if self._float[0]:
            torch._foreach_lerp_(self._float[0], self._float[1], weight)
        if self._integer[0]:
            torch._foreach_copy_(self._integer[0], self._integer[1])
        for ema_v, model_v in self._mixed:
            ema_v.lerp_(model_v.to(ema_v.dtype), weight)
