"""What trains the weights: AdamW's parameter groups, the OneCycle schedule, the EMA of the
weights. Each builder takes the config, as the run's other builders do."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlic.config import Config
from mlic.ema import ForeachEma
from mlic.errors import MlicError
from mlic.runtime import Runtime


def param_groups(
    model: nn.Module,
    weight_decay: float,
    exempt: str = "norm_bias_queries",
    batchformer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """AdamW groups by `train.weight_decay_exempt`: "none" decays every parameter (Query2Label's
    main_mlc.py); "norm_bias" exempts 1-D tensors and biases (ASL's add_weight_decay);
    "norm_bias_queries" also exempts embeddings (the learned class queries).

    `batchformer_decay` (`train.batchformer_weight_decay`), when set, is the decay of the
    BatchFormerV2 layer's own parameters, as the official BatchFormerV2 code's separate group with
    `--bt_decay`; the exemption policy still applies to that layer's norms and biases."""
    if exempt not in ("none", "norm_bias", "norm_bias_queries"):
        raise MlicError(f"train.weight_decay_exempt={exempt!r} is not a known policy")
    decay, batch_layer, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        norm_or_bias = p.ndim <= 1 or name.endswith(".bias")
        embedding = "query_embed" in name or "embed" in name.split(".")[-1]
        if exempt != "none" and (norm_or_bias or (exempt == "norm_bias_queries" and embedding)):
            no_decay.append(p)
        # TransformerEncoder.batch_layer: the separate BatchFormerV2 layer (under DDP too).
        elif batchformer_decay is not None and ".batch_layer." in f".{name}":
            batch_layer.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": batch_layer, "weight_decay": batchformer_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: Config, rt: Runtime) -> torch.optim.AdamW:
    t = cfg.train
    groups = param_groups(model, t.weight_decay, t.weight_decay_exempt, t.batchformer_weight_decay)
    return torch.optim.AdamW(groups, lr=t.lr, fused=rt.cuda or None)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int
) -> torch.optim.lr_scheduler.OneCycleLR:
    t = cfg.train
    # The paper's "initial learning rate 1e-6" is read as OneCycle's starting lr = lr / div_factor
    # (1e-4 / 100 in the paper presets: our reading; Query2Label's and ASL's scripts use OneCycle
    # with its default div_factor 25, i.e. a start at 4e-6).
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=t.lr,
        total_steps=t.epochs * steps_per_epoch,
        pct_start=t.pct_start,
        div_factor=t.div_factor,
        final_div_factor=t.final_div_factor,
    )


def build_ema(model: nn.Module, cfg: Config) -> ForeachEma:
    """timm's ModelEmaV3 with its update on cached tensor lists (mlic/ema.py): per optimizer step."""
    return ForeachEma(model, decay=cfg.train.ema_decay)
