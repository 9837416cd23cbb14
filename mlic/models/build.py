"""``build_model``: backbone + head, and the model class the engine trains.

One builder, variants as arguments (timm's ``create_model`` style). ``model.arch`` holds the
architecture-defining arguments, so ``build_model(**model.arch)`` rebuilds the same network
and a checkpoint of another architecture can be refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mlic.config import BatchFormerVariant, HeadName, ModelConfig, model_config
from mlic.config_rules import training_batch_minimum
from mlic.errors import ConfigError, MlicError
from mlic.models.backbone import create_backbone, pooled_batch_norms
from mlic.models.heads import GapHead, QueryHead


class MultiLabelClassifier(nn.Module):
    """Backbone (§1.1) + head (§1.2, Fig. 1): images [B, 3, S, S] -> logits.

    Output contract of ``forward``:
      * eval mode: logits [B, K] for every head.
      * training, ``gap`` / ``transformer``: logits [B, K].
      * training, ``dual``: logits [2B, K] - rows 0..B-1 the ordinary stream, rows B..2B-1 the
        BatchFormerV2 stream of the same images, so the loss's targets are
        ``targets.repeat(2, 1)`` (``num_streams`` says how many repeats).
    The dual head attends across the batch and ResNeSt's split attention batch-normalises a
    pooled 1x1 map, so a training batch of one image raises ``MlicError`` for either (use
    batches of >= 2 images, e.g. ``drop_last=True``). Logits are in the autocast dtype.

    Module names: ``backbone`` (timm), ``head``; the class queries are
    ``head.query_embed.weight`` (no weight decay); the "separate" BatchFormerV2 layer is
    ``head.encoder.batch_layer`` - trained and checkpointed with the model, not needed for
    inference (``deployed_state_dict``).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, arch: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch = arch
        # Not registered as submodules (they already are, under backbone): a plain tuple.
        self._pooled_bns = pooled_batch_norms(backbone)

    @property
    def num_streams(self) -> int:
        """How many copies of the batch ``forward`` returns: 2 for dual in training, else 1."""
        return 2 if self.arch["head"] == "dual" and self.training else 1

    def _training_batch_minimum(self) -> tuple[int, str]:
        # The rule is the configuration's (mlic.config_rules), with what only the built
        # backbone knows: whether a pooled-map batch norm is in training mode.
        pooled = any(bn.training for bn in self._pooled_bns)
        return training_batch_minimum(self.arch["head"], pooled_batch_norm=pooled)

    @property
    def min_training_batch(self) -> int:
        """Smallest batch ``forward`` accepts in training mode (2 for dual or ResNeSt, else 1).

        A training loop can skip a shorter batch (e.g. the last one, or one left after
        unreadable images were dropped) instead of meeting the error.
        """
        return self._training_batch_minimum()[0]

    def _check_batch(self, images: Tensor) -> None:
        if not self.training:
            return
        need, why = self._training_batch_minimum()
        if images.shape[0] < need:
            raise MlicError(
                f"backbone {self.arch['backbone']!r}, head {self.arch['head']!r}: {why}, so a "
                f"training batch needs at least {need} images, got {images.shape[0]} (use "
                f"train.batch_size >= {need} and drop the last short batch)"
            )

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, S, S] -> logits [B, K] ([2B, K] for dual in training; see class doc)."""
        self._check_batch(images)
        features = self.backbone.forward_features(images)  # [B, C, S/32, S/32]
        return self.head(features)

    def set_grad_checkpointing(self, backbone: bool = True, head: bool = True) -> None:
        """Activation checkpointing (memory for compute): timm's own for the backbone (every
        residual block recomputed in backward), torch.utils.checkpoint per encoder layer, the
        BatchFormerV2 stream and per decoder layer for the head. The loss and the gradients
        stay those of the plain model; BatchNorm layers of the backbone see their forward twice,
        so their running statistics take two momentum updates per step (timm's behaviour)."""
        self.backbone.set_grad_checkpointing(backbone)
        for part in ("encoder", "decoder"):
            module = getattr(self.head, part, None)
            if module is not None:
                module.grad_checkpointing = head

    @torch.no_grad()
    def cross_attention(self, images: Tensor) -> Tensor:
        """Eval-mode cross-attention of each class query in the last decoder layer: [B, K, h, w].

        Averaged over heads; each [h, w] map sums to 1 and (h, w) = (S/32, S/32): where the
        query for class k looks. The model's train/eval mode is restored afterwards.
        """
        if not isinstance(self.head, QueryHead):
            raise MlicError(
                "cross_attention needs a transformer or dual head; the gap head has no queries"
            )
        was_training = self.training
        self.eval()
        try:
            return self.head.cross_attention(self.backbone.forward_features(images))
        finally:
            self.train(was_training)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters: backbone, head (deployed part), batchformer (training-only), total, deployed."""
        branch = self._branch_parameters()
        branch_ids = {id(p) for p in branch}
        backbone = sum(p.numel() for p in self.backbone.parameters())
        head = sum(p.numel() for p in self.head.parameters() if id(p) not in branch_ids)
        extra = sum(p.numel() for p in branch)
        return {
            "backbone": backbone,
            "head": head,
            "batchformer": extra,
            "total": backbone + head + extra,
            "deployed": backbone + head,
        }

    def deployed_parameter_count(self) -> int:
        """Parameters of the network that is evaluated and exported (no BatchFormerV2 layer)."""
        return self.parameter_counts()["deployed"]

    def deployed_state_dict(self) -> dict[str, Tensor]:
        """``state_dict`` without the training-only BatchFormerV2 layer ("separate" variant).

        It loads into ``build_model(**arch)`` with ``head="transformer"`` and no
        ``batchformer``, which gives the same eval logits. With "shared" it equals
        ``state_dict()``.
        """
        prefix = "head.encoder.batch_layer."
        return {k: v for k, v in self.state_dict().items() if not k.startswith(prefix)}

    def _branch_parameters(self) -> list[nn.Parameter]:
        layer = getattr(getattr(self.head, "encoder", None), "batch_layer", None)
        return list(layer.parameters()) if layer is not None else []


def build_model(
    backbone: str,
    head: HeadName,
    num_classes: int,
    *,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    d_model: int = 2048,
    nhead: int = 4,
    num_encoder_layers: int = 1,
    num_decoder_layers: int = 2,
    dim_feedforward: int = 8192,
    dropout: float = 0.1,
    batchformer: BatchFormerVariant = "separate",
) -> MultiLabelClassifier:
    """Build a model of the paper's family (defaults: the Q2L / paper head at d_model 2048).

    ``head``: "gap" (pool + linear), "transformer" (Query2Label), "dual" (Query2Label +
    BatchFormerV2 branch in training; ``batchformer`` "separate" = the official BatchFormerV2
    layer (default), "shared" = encoder layer 0's weights reused, the paper's other reading).
    Transformer options are not used for "gap"; ``batchformer`` other than its default is
    refused for a head other than "dual". The arguments are checked as the ``model`` section of
    a configuration is (``mlic.config.model_config``): a bad one is a ``ConfigError`` naming
    its ``model.*`` key. A ``pretrained_file`` is loaded whatever ``pretrained`` says.
    Build on the meta device (``with torch.device("meta"):``) to count parameters cheaply.
    """
    spec = model_config(
        backbone=backbone,
        head=head,
        pretrained=pretrained,
        pretrained_file=str(pretrained_file or ""),
        backbone_kwargs=dict(backbone_kwargs or {}),
        d_model=d_model,
        nhead=nhead,
        num_encoder_layers=num_encoder_layers,
        num_decoder_layers=num_decoder_layers,
        dim_feedforward=dim_feedforward,
        dropout=dropout,
        batchformer=batchformer,
    )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} must be a positive integer")
    arch: dict[str, Any] = {
        "backbone": spec.backbone,
        "head": spec.head,
        "num_classes": num_classes,
        "backbone_kwargs": spec.backbone_kwargs,
    }
    # The Transformer head's options: recorded in `arch` and passed to QueryHead alike.
    transformer = {
        "d_model": spec.d_model,
        "nhead": spec.nhead,
        "num_encoder_layers": spec.num_encoder_layers,
        "num_decoder_layers": spec.num_decoder_layers,
        "dim_feedforward": spec.dim_feedforward,
        "dropout": spec.dropout,
    }
    if spec.head != "gap":
        arch.update(transformer)
    if spec.head == "dual":
        arch["batchformer"] = spec.batchformer

    net = create_backbone(
        spec.backbone,
        pretrained=spec.pretrained,
        pretrained_file=spec.pretrained_file or None,
        backbone_kwargs=spec.backbone_kwargs,
    )
    channels = int(net.num_features)
    if spec.head == "gap":
        head_module: nn.Module = GapHead(channels, num_classes)
    else:
        head_module = QueryHead(
            channels,
            num_classes,
            **transformer,
            batchformer=spec.batchformer if spec.head == "dual" else None,
        )
    return MultiLabelClassifier(net, head_module, arch)


def build_model_from_config(cfg: ModelConfig, num_classes: int) -> MultiLabelClassifier:
    """``build_model`` from the ``model`` section of a run's configuration."""
    return build_model(
        cfg.backbone,
        cfg.head,
        num_classes,
        pretrained=cfg.pretrained,
        pretrained_file=cfg.pretrained_file or None,
        backbone_kwargs=dict(cfg.backbone_kwargs),
        d_model=cfg.d_model,
        nhead=cfg.nhead,
        num_encoder_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        batchformer=cfg.batchformer,
    )
