"""2-D sine positional embedding (DETR / Query2Label), for a feature map of any size.

Q2L precomputes its embedding for one input size; ours is computed from (h, w) on every
call, so one model serves 448 px (14 x 14 tokens), 576 px (18 x 18) and the 64 px CPU presets
(2 x 2). It is a handful of elementwise operations on h*w*d numbers, negligible next to the
backbone, and a constant under torch.compile.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine embedding of the (row, column) of every token; no parameters.

    Channels [0, f) encode the row and [f, 2f) the column, f = ``num_pos_feats``. Within an
    axis, channel c holds sin (c even) or cos (c odd) of ``coord / temperature ** (2 * (c // 2) / f)``
    where, with ``normalize=True``, coord = (i + 1) / n * scale for index i of n (DETR's cumsum
    normalisation: the last row/column sits at ``scale``).
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if num_pos_feats < 1:
            raise ValueError(f"num_pos_feats must be >= 1, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps

    def _axis(self, n: int, device: torch.device | None) -> Tensor:
        """[n, f] embedding of the indices 0..n-1 along one axis."""
        coord = torch.arange(1, n + 1, dtype=torch.float32, device=device)  # DETR's cumsum of ones
        if self.normalize:
            coord = coord / (n + self.eps) * self.scale
        c = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (
            2 * torch.div(c, 2, rounding_mode="floor") / self.num_pos_feats
        )
        angle = coord[:, None] / dim_t  # [n, f]
        # Even channels sine, odd channels cosine: DETR's stack(sin[0::2], cos[1::2]).flatten().
        return torch.where(c.remainder(2) == 0, angle.sin(), angle.cos())

    def forward(
        self,
        h: int,
        w: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """[h*w, 2f] embedding, rows in the order of ``feature.flatten(2)`` (index = y * w + x)."""
        ey = self._axis(h, device)[:, None, :].expand(h, w, self.num_pos_feats)
        ex = self._axis(w, device)[None, :, :].expand(h, w, self.num_pos_feats)
        pos = torch.cat([ey, ex], dim=-1).reshape(h * w, 2 * self.num_pos_feats)
        return pos if dtype is None else pos.to(dtype)
