"""A training loader whose position survives a checkpoint, so a resumed run sees exactly the batches an
uninterrupted run would.

- ``ResumableSampler``: torch's ``DistributedSampler`` (its shuffle depends only on ``seed`` and the epoch that
  Lightning sets, and it shards over processes; one process is a shard of one) plus a start offset.
- ``ResumableLoader``: counts the batches it hands to the training loop; Lightning saves its ``state_dict()``
  in every checkpoint (``loops.fit_loop.state_dict.combined_loader``) and gives it back on resume, before
  the first batch. Lightning fetches no batch ahead from a loader with a length, so the count is the number
  of batches trained on. Iteration starts lazily, at the first batch, so it always follows ``set_epoch``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    def __init__(self, dataset: Dataset, *, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0  # samples of this epoch to skip (already trained on before an interruption)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return itertools.islice(super().__iter__(), start, None)


class ResumableLoader(DataLoader):
    sampler: ResumableSampler

    def __init__(self, dataset: Dataset, *, sampler: ResumableSampler, **kwargs: Any) -> None:
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"ResumableLoader needs a ResumableSampler, got {type(sampler).__name__}")
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._epoch, self._batches_done = sampler.epoch, 0

    def __iter__(self) -> Iterator[Any]:
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        self._epoch, self._batches_done = self.sampler.epoch, self.sampler.start // self.batch_size
        if self.generator is not None:  # worker seeds of an epoch then depend on (seed, epoch) only, too
            self.generator.manual_seed(self.sampler.seed + self.sampler.epoch)
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        done = self._batches_done if self._epoch == self.sampler.epoch else 0
        return {"epoch": int(self.sampler.epoch), "batches": int(done)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.sampler.epoch = self._epoch = int(state_dict["epoch"])
        self._batches_done = int(state_dict["batches"])
        self.sampler.start = self._batches_done * self.batch_size
