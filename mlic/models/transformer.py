"""The Transformer of the head: encoder, decoder (Query2Label) and the BatchFormerV2 branch.

All tensors are batch-first, ``[B, L, d]``. Layers are post-norm with ReLU and dropout, as
DETR and Query2Label (Q2L). Attention is ``nn.MultiheadAttention``, which runs PyTorch's
scaled-dot-product attention kernel whenever the attention weights are not asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mlic.config import BatchFormerVariant
from mlic.config_rules import BATCHFORMER_LAYER_HEADS


def _add(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


def _maybe_checkpoint(enabled: bool, module: nn.Module, layer, *args):
    """`layer(*args)`, or the same recomputed in backward instead of keeping its activations
    (activation checkpointing: non-reentrant, and the RNG state is restored, so dropout draws
    the same masks again and the gradients are those of the plain call)."""
    if enabled and module.training and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


class EncoderLayer(nn.Module):
    """Self-attention over the tokens + FFN, post-norm (DETR's ``forward_post``).

    The positional embedding is added to queries and keys, not to the values (DETR/Q2L).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor | None = None) -> Tensor:
        """src [N, S, d] (N sequences of length S); pos broadcastable to it, or None."""
        q = k = _add(src, pos)
        attended = self.self_attn(q, k, src, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class DecoderLayer(nn.Module):
    """Cross-attention of the class queries to the encoder memory + FFN; no self-attention.

    Q2L removes the decoder's self-attention (``rm_self_attn_dec``): the queries interact with
    the image only. Query positions (the learned class embeddings) are added to the queries,
    the sine embedding to the memory's keys.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None,
        query_pos: Tensor | None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """tgt [B, K, d], memory [B, L, d] -> ([B, K, d], head-averaged weights [B, K, L] | None)."""
        attended, weights = self.cross_attn(
            _add(tgt, query_pos),
            _add(memory, pos),
            memory,
            need_weights=need_weights,
            average_attn_weights=True,
        )
        tgt = self.norm1(tgt + self.dropout1(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm2(tgt + self.dropout2(ffn)), weights


def _decoder_tokens(
    layer: DecoderLayer, tgt: Tensor, memory: Tensor, pos: Tensor | None, query_pos: Tensor | None
) -> Tensor:
    return layer(tgt, memory, pos, query_pos)[0]


def batch_attention(layer: EncoderLayer, tokens: Tensor) -> Tensor:
    """BatchFormerV2 (§1.2, eq. (2)): attention ACROSS THE BATCH at every token position.

    [B, L, d] -> [L, B, d]: the L = H*W positions become L independent sequences of length B,
    so sample i's token at position n attends to every sample's token at position n. No
    positional embedding, as the official BatchFormerV2 code. -> back to [B, L, d].
    """
    return layer(tokens.transpose(0, 1), pos=None).transpose(0, 1)


class TransformerEncoder(nn.Module):
    """Encoder layers; with a BatchFormerV2 branch, the second stream is added in training.

    ``batchformer``:
      * ``None`` - the Q2L encoder.
      * ``"shared"`` - one reading of the paper (§1: the BatchFormerV2 encoder is obtained "by
        sharing" the Transformer encoder; §1.2, eq. (2): "送入共享的 Transformer 模块"; text of
        Fig. 4: "两个分支共享 Transformer Encoder 模块"): the batch attention IS encoder layer 0,
        its weights (and dropout) applied a second time, now along the batch axis, to layer 0's
        output. Stream 2 = enc0_batch(enc0_spatial(x)); no parameter is added. (The official
        code's ``share_bf`` flag is something else: one BatchFormer layer shared between
        insertion points.)
      * ``"separate"`` (the presets' default) - the official BatchFormerV2 code, and the other
        reading of the paper (Fig. 4's text: a BatchFormerV2 module is "added" in the branch,
        deleted at inference "to avoid extra parameters"): its own
        ``TransformerEncoderLayer(d, nhead=4, dim_feedforward=d, dropout=0.5)`` (post-norm,
        ReLU), trained with the model and not needed at inference.

    In both, the branch sits after encoder layer 0 and its output is concatenated with the
    untouched stream along the batch: [B, L, d] -> [2B, L, d] (official code:
    ``torch.cat([old_output, output], dim=1)`` on [L, B, d]). Later layers, the decoder and the
    classifier then run on 2B samples with shared weights. In eval mode the branch is skipped,
    so the evaluated network is exactly the single-branch one.

    Arguments are not checked here: ``build_model`` checks them (``mlic.config_rules``), e.g.
    that the branch has an encoder layer 0 to follow.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int,
        dropout: float,
        batchformer: BatchFormerVariant | None = None,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)
        )
        self.batchformer = batchformer
        # Official BatchFormerV2: TransformerEncoderLayer(d_model, 4, d_model, dropout=0.5).
        self.batch_layer = (
            EncoderLayer(d_model, BATCHFORMER_LAYER_HEADS, d_model, dropout=0.5)
            if batchformer == "separate"
            else None
        )
        self.grad_checkpointing = False  # set by MultiLabelClassifier.set_grad_checkpointing

    def forward(self, src: Tensor, pos: Tensor | None) -> Tensor:
        """src [B, L, d], pos [1, L, d] -> memory [B, L, d] (eval) or [2B, L, d] (training + branch)."""
        x = src
        ckpt = self.grad_checkpointing
        for i, layer in enumerate(self.layers):
            x = _maybe_checkpoint(ckpt, self, layer, x, pos)
            if i == 0 and self.training and self.batchformer is not None:
                branch_layer = self.layers[0] if self.batch_layer is None else self.batch_layer
                # Stream 1: x as it is; stream 2: x attended across the batch.
                stream2 = _maybe_checkpoint(ckpt, self, batch_attention, branch_layer, x)
                x = torch.cat([x, stream2], dim=0)  # [2B, L, d]
        return x


class TransformerDecoder(nn.Module):
    """Q2L decoder: target starts at zeros, one learned query position per class, final LayerNorm."""

    def __init__(
        self, d_model: int, nhead: int, num_layers: int, dim_feedforward: int, dropout: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.grad_checkpointing = False  # set by MultiLabelClassifier.set_grad_checkpointing

    def forward(
        self, memory: Tensor, pos: Tensor | None, query_pos: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """memory [N, L, d], query_pos [K, d] -> (hs [N, K, d], last layer's weights [N, K, L] | None)."""
        n = memory.shape[0]
        query_pos = query_pos.unsqueeze(0).to(memory.dtype)  # [1, K, d], broadcast over N
        tgt = torch.zeros(
            n, query_pos.shape[1], query_pos.shape[2], dtype=memory.dtype, device=memory.device
        )
        weights = None
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            if need_weights and last:  # attention maps are for inspection, never checkpointed
                tgt, weights = layer(tgt, memory, pos, query_pos, need_weights=True)
            else:
                tgt = _maybe_checkpoint(
                    self.grad_checkpointing, self, _decoder_tokens, layer, tgt, memory, pos,
                    query_pos,
                )  # fmt: skip
        return self.norm(tgt), weights
