"""Where and how the computation runs: the device, the precision, the CPU's threads, the seeds.

On CUDA: bf16 autocast, channels_last, TF32 and cudnn.benchmark, torch.compile (eager if it
fails), DDP under `torchrun`. On the CPU: fp32, the memory bound checked before anything is
allocated, and the thread policy of mlic/cpu.py. Seeds follow from (run seed, epoch), so an
epoch reseeded from them is the same whether or not the run stopped before it.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from mlic.compilation import Compiler, resolve_compile
from mlic.config import Config
from mlic.config_rules import cpu_batch_memory_problem
from mlic.cpu import configure_cpu
from mlic.distributed import DistInfo, init_distributed
from mlic.errors import ConfigError, MlicError


@dataclass(frozen=True)
class Runtime:
    """Where and how the computation runs; derived from the config and the launcher."""

    device: torch.device
    dist: DistInfo
    amp_dtype: torch.dtype | None
    channels_last: bool
    # torch.compile for training and evaluation (None: eager; benchmarks compile themselves).
    compiler: Compiler | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MlicError(f"train.device={name!r} but no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise MlicError(
            f"train.device={name!r}: there are {torch.cuda.device_count()} CUDA devices"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MlicError(f"train.device={name!r} but MPS is not available")
    return device


def make_runtime(cfg: Config) -> Runtime:
    device = resolve_device(cfg.train.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    elif device.type == "cpu":
        problem = cpu_batch_memory_problem(cfg)  # before any allocation (mlic.config_rules)
        if problem:
            raise ConfigError(f"on the CPU, {problem}")
        configure_cpu(cfg.train.num_threads)  # denormals flushed, threads set (mlic.cpu)
    compiler = Compiler(resolve_compile(cfg.train.compile, device), cfg.train.compile_mode)
    channels_last = cfg.train.channels_last and device.type == "cuda"
    return Runtime(device, info, amp_dtype, channels_last, compiler)


def device_name(rt: Runtime) -> str:
    """The device as metrics.json records it: the GPU's name, or the CPU and its threads."""
    if rt.cuda:
        return torch.cuda.get_device_name(rt.device)
    return f"cpu ({torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % 2**31
