"""Samplers that shard a dataset over the processes of a distributed run, and the class-balanced sampler.

Training uses ``data.resumable.ResumableSampler``, torch's ``DistributedSampler`` (a seeded shuffle per epoch,
``set_epoch`` called by Lightning, shards of equal length since every process must take the same number of
optimiser steps) that can also resume in the middle of an epoch; with ``data.sampler=balanced`` it is
``BalancedSampler``, the same but drawing classes equally often.
Evaluation uses ``UnpaddedDistributedSampler``: torch's sampler pads the last shard with repeated samples,
which would count them twice in val/test metrics. Here each sample belongs to exactly one shard and the
shards may differ in length by one; the metrics (torchmetrics states) are summed over processes, so the
result equals a single-process evaluation.

All subclass ``DistributedSampler``, so Lightning (``use_distributed_sampler=True``) leaves them in place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

from data.resumable import ResumableSampler

SAMPLERS = ("random", "balanced")


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


class BalancedSampler(ResumableSampler):
    """An epoch of ``len(dataset)`` draws with replacement in which every class present is equally likely (as
    torch's ``WeightedRandomSampler`` with weights 1 / class count), then a uniform sample of the drawn class.

    The draws depend only on ``(seed, epoch)``; every process makes the same draws and takes its shard
    (every ``num_replicas``-th), and a resumed epoch skips ``start`` of them (``ResumableLoader``), so an
    interrupted run resumes exactly. Minority samples repeat within an epoch, majority ones are left out.
    """

    def __init__(
        self, dataset: Dataset, *, targets: Sequence[int], seed: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(dataset, seed=seed, num_replicas=num_replicas, rank=rank)
        targets = np.asarray(targets, dtype=np.int64)
        if targets.shape != (len(dataset),):
            raise ValueError(f"BalancedSampler: {targets.shape} targets for a dataset of {len(dataset)} samples")
        self.by_class = np.argsort(targets, kind="stable")  # sample indices grouped by class
        _, self.first, self.counts = np.unique(targets[self.by_class], return_index=True, return_counts=True)

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        rng = np.random.default_rng((self.seed, self.epoch))
        cls = rng.integers(len(self.counts), size=self.total_size)  # which class each draw takes
        within = (rng.random(self.total_size) * self.counts[cls]).astype(np.int64)  # (total,) in [0, count)
        drawn = self.by_class[self.first[cls] + within]
        return iter(drawn[self.rank : self.total_size : self.num_replicas][start:].tolist())


def class_counts(targets: Sequence[int], num_classes: int) -> np.ndarray:
    """Samples per class, ``(num_classes,)``; a label outside ``[0, num_classes)`` is an error."""
    targets = np.asarray(targets, dtype=np.int64)
    if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"labels {targets.min()}..{targets.max()} fall outside the {num_classes} classes")
    return np.bincount(targets, minlength=num_classes)


def balanced_class_weights(targets: Sequence[int], class_names: Sequence[str]) -> np.ndarray:
    """Inverse class frequency, ``n_samples / (n_classes * count)`` (scikit-learn's ``balanced``): a weighted
    loss then counts each class as much as the others in total. Every class needs a training sample."""
    counts = class_counts(targets, len(class_names))
    empty = [name for name, c in zip(class_names, counts, strict=True) if c == 0]
    if empty:
        raise ValueError(
            f"module.class_weights=balanced: classes {empty[:10]} have no training samples; give the weights as a "
            f"list of {len(class_names)} floats, or fix the training split"
        )
    return counts.sum() / (len(counts) * counts.astype(np.float64))


def train_sampler(
    dataset: Dataset, *, kind: str, targets: Sequence[int] | None, seed: int, num_replicas: int = 1, rank: int = 0
) -> ResumableSampler:
    """The training sampler ``data.sampler`` names: ``random`` (a seeded shuffle) or ``balanced``."""
    if kind == "balanced":
        return BalancedSampler(dataset, targets=targets, seed=seed, num_replicas=num_replicas, rank=rank)
    return ResumableSampler(dataset, seed=seed, num_replicas=num_replicas, rank=rank)


def shard_sampler(
    dataset: Dataset,
    *,
    train: bool,
    num_replicas: int,
    rank: int,
    seed: int,
    kind: str = "random",
    targets: Sequence[int] | None = None,
) -> DistributedSampler:
    if train:  # a DistributedSampler whose position in an epoch is checkpointed (exact mid-epoch resume)
        return train_sampler(dataset, kind=kind, targets=targets, seed=seed, num_replicas=num_replicas, rank=rank)
    return UnpaddedDistributedSampler(dataset, num_replicas=num_replicas, rank=rank)
