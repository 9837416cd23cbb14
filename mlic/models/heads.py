"""Classification heads on the backbone's feature map [B, C, h, w].

* ``GapHead`` - global average pooling + linear: the ResNet-101 baseline rows (Tables 1, 3).
* ``QueryHead`` - Query2Label (the "Transformer" columns of Table 4), optionally with the
  BatchFormerV2 branch (the paper's dual-branch Transformer, Fig. 4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mlic.config import BatchFormerVariant
from mlic.models.position import PositionEmbeddingSine
from mlic.models.transformer import TransformerDecoder, TransformerEncoder


class GroupWiseLinear(nn.Module):
    """One linear classifier per class on that class's own decoder output (Q2L).

    logit_k = <W_k, h_k> + b_k, W: [K, d], b: [K]. Initialised U(-1/sqrt(d), 1/sqrt(d)) as Q2L.
    """

    def __init__(self, num_classes: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, d_model))
        self.bias = nn.Parameter(torch.empty(num_classes))
        bound = 1.0 / math.sqrt(d_model)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, h: Tensor) -> Tensor:
        """h [N, K, d] -> logits [N, K]."""
        return (h * self.weight).sum(-1) + self.bias


class GapHead(nn.Module):
    """Global average pooling + linear classifier (ResNet-101 baseline)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        """features [B, C, h, w] -> logits [B, K]."""
        return self.fc(features.mean(dim=(2, 3)))


class QueryHead(nn.Module):
    """Query2Label head: projection, sine positions, encoder (+ BatchFormerV2), decoder, classifier.

    §1, Fig. 1/4: the backbone's tokens plus positional embeddings enter the encoder; the
    class queries of the decoder cross-attend to the encoder memory (keys and values); the
    group-wise linear classifier reads one logit per class. ``batchformer``: the branch's
    variant (the dual head), or None (the Transformer head).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        d_model: int,
        nhead: int,
        num_encoder_layers: int,
        num_decoder_layers: int,
        dim_feedforward: int,
        dropout: float,
        batchformer: BatchFormerVariant | None = None,
    ) -> None:
        super().__init__()
        # Q2L's 1x1 input projection; skipped when the backbone already has d_model channels
        # (2048 for ResNet-101 / ResNeSt-101e at the paper's d_model), saving 4.2 M parameters.
        self.input_proj: nn.Module = (
            nn.Identity() if in_channels == d_model else nn.Conv2d(in_channels, d_model, 1)
        )
        self.position = PositionEmbeddingSine(d_model // 2)
        self.encoder = TransformerEncoder(
            d_model, nhead, num_encoder_layers, dim_feedforward, dropout, batchformer
        )
        self.decoder = TransformerDecoder(
            d_model, nhead, num_decoder_layers, dim_feedforward, dropout
        )
        # One learned query per class: the decoder's query positions (target starts at zeros).
        self.query_embed = nn.Embedding(num_classes, d_model)
        self.classifier = GroupWiseLinear(num_classes, d_model)
        # Q2L/DETR: Xavier-uniform for every matrix of the Transformer.
        for module in (self.encoder, self.decoder):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def _decode(self, features: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        x = self.input_proj(features)  # [B, C, h, w] -> [B, d, h, w]
        b, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, h*w, d]
        pos = self.position(h, w, device=x.device, dtype=tokens.dtype).unsqueeze(0)  # [1, hw, d]
        memory = self.encoder(tokens, pos)  # [B, hw, d], or [2B, hw, d] with the training branch
        hs, weights = self.decoder(memory, pos, self.query_embed.weight, need_weights)
        return self.classifier(hs), weights  # [N, K], [N, K, hw] | None

    def forward(self, features: Tensor) -> Tensor:
        """features [B, C, h, w] -> logits [B, K] ([2B, K] in training with the branch)."""
        return self._decode(features, need_weights=False)[0]

    def cross_attention(self, features: Tensor) -> Tensor:
        """Last decoder layer's cross-attention, averaged over heads: [B, K, h, w]; rows sum to 1."""
        h, w = features.shape[-2:]
        weights = self._decode(features, need_weights=True)[1]
        return weights.unflatten(-1, (h, w))
