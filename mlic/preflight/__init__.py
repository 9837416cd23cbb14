"""`mlic data check`: one screen, before a long run, of what it needs and what is missing.

It reads the annotation files with the loaders training uses, counts and decodes the images
(`data`), asks whether the backbone's ImageNet weights can be had (`weights`), and compares the
GPU's memory and the dataset's size with the paper model's measured figures (`gpu`); `report`
holds the findings and prints them. It never builds the model, so a missing file is reported
in seconds, not after the model is built.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlic.config import Config, load_config
from mlic.plan import runs
from mlic.preflight.data import Counts, check_data, data_key, with_dataset_root
from mlic.preflight.gpu import check_gpu, epoch_time, memory_need
from mlic.preflight.report import Finding, describe, render
from mlic.preflight.weights import Probe, check_weights
from mlic.reproduce import run_overrides

__all__ = [
    "Counts",
    "Finding",
    "Probe",
    "check_configs",
    "check_data",
    "check_gpu",
    "check_weights",
    "describe",
    "epoch_time",
    "memory_need",
    "plan_configs",
    "render",
    "with_dataset_root",
]


def check_configs(
    configs: Sequence[tuple[str, Config]],
    *,
    verify: bool = False,
    gpus: int = 1,
    probe: Probe | None = None,
    workers: int | None = None,
) -> list[Finding]:
    """Findings for the runs `configs` ((label, config) pairs): data and weights once per
    distinct dataset and backbone, memory and epoch time per run."""
    findings: list[Finding] = []
    counts: dict[tuple, Counts] = {}
    resolved = []
    for label, cfg in configs:
        cfg, note = with_dataset_root(cfg)
        key = data_key(cfg)
        if key not in counts:
            if note:
                findings.append(Finding("info", "data", note))
            counts[key] = check_data(cfg, findings, verify=verify, workers=workers)
        resolved.append((label, cfg))
    seen_weights = set()
    for _, cfg in resolved:
        key = (cfg.model.backbone, cfg.model.pretrained, cfg.model.pretrained_file)
        if key not in seen_weights:
            seen_weights.add(key)
            findings.append(check_weights(cfg, probe=probe))
    findings.extend(check_gpu(resolved, counts, gpus=gpus))
    return findings


def plan_configs(
    family: str, data_root: str | None, overrides: Sequence[str] = ()
) -> list[tuple[str, Config]]:
    """The runs `mlic reproduce --preset FAMILY --data-root DIR` would train, as (name, config)."""
    return [
        (run.name, load_config(run.preset, run_overrides(run, family, data_root, overrides)))
        for run in runs(family)
    ]
