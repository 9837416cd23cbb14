"""From datasets to device batches: the training sampler, the DataLoader, the copy to the device.

The datasets yield uint8 images; the device finishes them (float conversion, normalisation):
a quarter of the bytes to copy, and the conversion off the loader workers. Every worker's
seeds follow from the loader's generator, which the run reseeds each epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mlic.config import Config, DataConfig
from mlic.data import collate_skip_unreadable, to_model_input
from mlic.distributed import DistInfo
from mlic.errors import MlicError
from mlic.runtime import Runtime, epoch_seed


class EpochShuffleSampler(Sampler[int]):
    """A shuffle fixed by (seed, epoch), sharded across ranks; drops the ragged tail so every
    rank runs the same number of full batches (DDP needs that; BatchFormer needs B >= 2)."""

    def __init__(self, length: int, batch_size: int, seed: int, info: DistInfo):
        self.length, self.batch_size, self.seed, self.info = length, batch_size, seed, info
        per_rank = length // info.world_size
        self.num_samples = (per_rank // batch_size) * batch_size
        if self.num_samples == 0:
            raise MlicError(
                f"the training split has {length} images, fewer than one batch of {batch_size} "
                f"per process ({info.world_size} processes); lower train.batch_size"
            )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.length, generator=g).tolist()
        mine = order[self.info.rank :: self.info.world_size]
        return iter(mine[: self.num_samples])

    def __len__(self) -> int:
        return self.num_samples


def build_loader(
    dataset: Dataset, batch_size: int, sampler: Sampler, cfg: Config, rt: Runtime, *, train: bool
) -> DataLoader:
    """The DataLoader of training, evaluation and prediction: pinned memory on CUDA, workers
    that persist across epochs when training on CUDA, unreadable images skipped and counted."""
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip_unreadable,
        pin_memory=rt.cuda,
        drop_last=False,
        persistent_workers=rt.cuda and workers > 0 and train,
        worker_init_fn=_seed_worker,
        generator=torch.Generator(),
        prefetch_factor=4 if workers > 0 else None,
    )


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive Python's and NumPy's from it.
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def images_to_device(images: torch.Tensor, rt: Runtime, data: DataConfig) -> torch.Tensor:
    """Copy a (uint8) batch, then finish it on the device: a quarter of the bytes to move, and
    the float conversion off the loader workers. The layout change is done on the uint8 copy
    (a quarter of the bytes again); the conversion keeps it."""
    images = images.to(rt.device, non_blocking=True)
    if rt.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return to_model_input(images, data.mean, data.std)
