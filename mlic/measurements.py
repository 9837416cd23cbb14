"""The paper model's GPU figures, as data: what `mlic data check` compares a card and a
dataset against (memory need, epoch time). Measured on one NVIDIA H200 on 2026-11-27
(`benchmarks/gpu_check.sh` and `benchmarks/train_step.py --compile default`;
docs/performance.md gives the full tables). Everything else (other cards, other backbones or heads,
576 px training, several GPUs, full COCO epochs) is not measured: the estimates built from these
numbers say so.

The model measured: ResNeSt-101e + dual head, d_model 2048, FFN 8192 (the paper presets), bf16
autocast, channels_last, fused AdamW, EMA, one fixed synthetic batch already on the device (no
loader). Memory is CUDA's peak allocated memory of a training step.
"""

from __future__ import annotations

from dataclasses import dataclass

MEASURED_ON = "measured on one NVIDIA H200 (2026-11-27)"


@dataclass(frozen=True)
class TrainStep:
    image_size: int
    batch: int  # images per forward pass (a micro-batch under accumulation)
    compiled: bool  # torch.compile (mode "default") or eager
    images_per_s: float
    peak_gib: float


@dataclass(frozen=True)
class EvalStep:
    image_size: int
    batch: int
    images_per_s: float  # eager, no grad, the EMA's and the model's evaluation alike
    peak_gib: float


TRAIN_STEPS: tuple[TrainStep, ...] = (
    TrainStep(448, 32, False, 207.8, 18.39),
    TrainStep(448, 64, False, 232.9, 32.54),
    TrainStep(448, 128, False, 245.1, 60.80),
    TrainStep(448, 64, True, 395.0, 28.13),
)
EVAL_STEPS: tuple[EvalStep, ...] = (
    EvalStep(448, 128, 798.3, 5.62),
    EvalStep(576, 128, 492.3, 8.84),
)
# The three eager points lie on a line within 0.02 GiB: weights, gradients, AdamW state and EMA
# (fixed) plus activations per image of the micro-batch, at 448 px without checkpointing.
FIXED_GIB = 4.3
PER_IMAGE_GIB_448 = 0.44
# With every block and head layer recomputed, autograd keeps 0.23x the activations per image
# (counted on the meta device by benchmarks/activation_memory.py, not on a GPU): a plan.
CHECKPOINT_ALL_FACTOR = 0.23
# The input pipeline with 8 loader workers on the GPU machine's 16-core host (uint8 batches,
# decode + resize to 448 + RandAugment): above the compiled step's rate, so not the limit there.
LOADER_IMAGES_PER_S = 843.6
LOADER_WORKERS = 8


def is_measured_model(backbone: str, head: str, d_model: int, dim_feedforward: int) -> bool:
    """Whether these figures are the configuration's own (the paper presets' model)."""
    return (backbone, head, d_model, dim_feedforward) == ("resnest101e", "dual", 2048, 8192)


def train_step(image_size: int, batch: int, compiled: bool) -> TrainStep | None:
    for step in TRAIN_STEPS:
        if (step.image_size, step.batch, step.compiled) == (image_size, batch, compiled):
            return step
    return None


def eval_step(image_size: int) -> EvalStep | None:
    for step in EVAL_STEPS:
        if step.image_size == image_size:
            return step
    return None
