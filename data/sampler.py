"""Samplers that shard a dataset over the processes of a distributed run.

Training uses ``data.resumable.ResumableSampler``, torch's ``DistributedSampler`` (a seeded shuffle per epoch,
``set_epoch`` called by Lightning, shards of equal length since every process must take the same number of
optimiser steps) that can also resume in the middle of an epoch.
Evaluation uses ``UnpaddedDistributedSampler``: torch's sampler pads the last shard with repeated samples,
which would count them twice in val/test metrics. Here each sample belongs to exactly one shard and the
shards may differ in length by one; the metrics (torchmetrics states) are summed over processes, so the
result equals a single-process evaluation.

Both subclass ``DistributedSampler``, so Lightning (``use_distributed_sampler=True``) leaves them in place.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler

from data.resumable import ResumableSampler


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank ``r`` of ``w`` gets samples ``r, r + w, r + 2w, ...`` in order: disjoint shards, none padded."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def shard_sampler(dataset: Dataset, *, train: bool, num_replicas: int, rank: int, seed: int) -> DistributedSampler:
    if train:  # a DistributedSampler whose position in an epoch is checkpointed (exact mid-epoch resume)
        return ResumableSampler(dataset, seed=seed, num_replicas=num_replicas, rank=rank)
    return UnpaddedDistributedSampler(dataset, num_replicas=num_replicas, rank=rank)
