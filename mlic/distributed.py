"""Just enough torch.distributed for `torchrun`: set-up, a sharding sampler that neither pads
nor drops, and gathering variable-sized evaluation results.

Query2Label's evaluation uses `DistributedSampler`, which pads the last shard by repeating
images, so a few images are counted twice. `ShardSampler` gives rank r the indices
r, r + W, r + 2W, ... and `gather_by_index` puts the pieces back in dataset order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a no-op."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's value on every rank (e.g. a decision that only rank 0 can make)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


class ShardSampler(Sampler[int]):
    """Every index exactly once across ranks, in a fixed order: no padding, no dropping."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def gather_by_index(
    indices: torch.Tensor, tensors: list[torch.Tensor], info: DistInfo
) -> list[torch.Tensor]:
    """Concatenate each rank's rows and reorder them by their dataset index (CPU tensors)."""
    if info.enabled:
        pieces: list = [None] * info.world_size
        dist.all_gather_object(pieces, (indices.cpu(), [t.cpu() for t in tensors]))
        indices = torch.cat([p[0] for p in pieces])
        tensors = [torch.cat([p[1][i] for p in pieces]) for i in range(len(tensors))]
    order = torch.argsort(indices)
    if not torch.equal(indices[order], torch.arange(len(indices))):
        raise RuntimeError("distributed evaluation lost or repeated images")
    return [t[order] for t in tensors]


def sync_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before evaluating.

    DDP broadcasts buffers at the start of each training forward, so after the last step each
    rank holds statistics updated by its own batch; evaluating shards with different BN
    statistics (and saving rank 0's) would make the mAP depend on the number of GPUs.
    """
    if not info.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)
