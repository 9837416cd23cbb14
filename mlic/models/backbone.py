"""The feature extractor (§1.1): any timm ``resnet*`` / ``resnest*`` at stride 32.

``forward_features`` of the returned model gives [B, C, S/32, S/32] (C = ``num_features``,
2048 for ResNet-101 and ResNeSt-101e). ImageNet weights come from the Hugging Face hub
(``pretrained=True``) or from a local file (``pretrained_file``), for machines without a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import timm
from timm.layers import SplitAttn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mlic.checkpoint import describe_load_error, load_weights
from mlic.errors import CheckpointError, ConfigError, MlicError


def create_backbone(
    name: str,
    *,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A timm model without classifier or pooling; a given ``pretrained_file`` is always loaded."""
    if not timm.is_model(name):
        raise ConfigError(
            f"model.backbone={name!r} is not a timm model name (e.g. resnet101, resnest101e)"
        )
    kwargs = {"num_classes": 0, "global_pool": "", **(backbone_kwargs or {})}
    if pretrained_file:
        model = _create(name, False, kwargs)
        load_backbone_weights(model, Path(pretrained_file))
        return model
    return _create(name, pretrained, kwargs)


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError, KeyError, IndexError, AssertionError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and pretrained:
            _weights_unavailable(name, exc)
        # An unknown keyword or an unusable value in backbone_kwargs (timm raises any of these).
        extra = {k: v for k, v in kwargs.items() if k not in ("num_classes", "global_pool")}
        raise ConfigError(
            f"model.backbone_kwargs={str(extra)[:120]}: {_first_line(exc)[:200]}"
        ) from None
    except OSError as exc:
        if not pretrained:
            raise
        _weights_unavailable(name, exc)


def _weights_unavailable(name: str, exc: BaseException) -> NoReturn:
    """The ImageNet weights cannot be had here: say how to give them."""
    # huggingface_hub raises OSError subclasses (LocalEntryNotFoundError, HTTP errors) when
    # offline; timm raises RuntimeError for a model without published weights.
    raise MlicError(
        f"cannot get ImageNet weights for backbone {name!r} ({type(exc).__name__}); "
        "download them on a machine with a network (timm/Hugging Face hub) and pass "
        "model.pretrained_file=PATH (.pth or .safetensors state_dict), or set "
        "model.pretrained=false"
    ) from None


def load_backbone_weights(model: nn.Module, path: Path) -> None:
    """Strictly load a timm state_dict file into ``model``; its classifier, if any, is dropped.

    We read the file ourselves rather than through timm's ``pretrained_cfg_overlay=dict(file=...)``
    because timm loads non-strictly whenever the classifier is removed (``num_classes=0``):
    a file of another architecture would then leave the backbone silently random.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: backbone weight file not found (model.pretrained_file)")
    try:
        # timm's reader: .safetensors or torch.save files, unwraps 'state_dict'/'model'/EMA
        # entries and 'module.' prefixes; torch.load with weights_only=True.
        state = timm.models.load_state_dict(str(path))
    except Exception as exc:  # any unreadable user file: pickle, zip, safetensors errors
        raise CheckpointError(
            f"{path}: cannot read backbone weights: {describe_load_error(exc)}"
        ) from None
    own = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier") or ()
    for head_name in (classifier,) if isinstance(classifier, str) else classifier:
        for key in (f"{head_name}.weight", f"{head_name}.bias"):
            if key not in own:
                state.pop(key, None)
    arch = model.pretrained_cfg.get("architecture", type(model).__name__)
    load_weights(path, model, state, what=f"backbone {arch}")


def pooled_batch_norms(model: nn.Module) -> tuple[nn.Module, ...]:
    """Batch norms that see a 1x1 (globally pooled) map: ResNeSt's split attention (Fig. 3).

    In training they need more than one sample per batch; the model checks these before
    a forward pass so that a batch of one gives a clear error instead of PyTorch's.
    """
    found = []
    for module in model.modules():
        if isinstance(module, SplitAttn) and isinstance(module.bn1, _BatchNorm):
            found.append(module.bn1)
    return tuple(found)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
