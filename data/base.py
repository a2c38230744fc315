"""The DataModule every dataset config builds on: splits in, seeded loaders of dict batches out.

A sample is a dict ``{"input": Tensor, "target": int, "index": int, ...}`` (optionally ``boxes`` and
``path``). A dataset returns ``None`` for a sample it had to skip (an unreadable file during training);
``collate`` drops those and reports how many it dropped as ``batch["num_skipped"]`` so the
LightningModule can count them (``data/skipped`` in results.json) even when loading runs in workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.data._utils.collate import default_collate

from data.in_memory import InMemoryDataset, augment_batch, hold_in_memory
from data.resumable import ResumableLoader, ResumableSampler
from data.sampler import SAMPLERS, shard_sampler, train_sampler

# Per-sample keys whose values differ in shape between samples; they stay Python lists.
LIST_KEYS = ("boxes", "path")


def collate(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    if isinstance(samples, dict):  # a whole batch fetched at once (data/in_memory.py)
        return {"num_skipped": 0, **samples}
    kept = [s for s in samples if s is not None]
    batch: dict[str, Any] = {}
    if kept:
        keys = kept[0].keys()
        batch = {k: default_collate([s[k] for s in kept]) for k in keys if k not in LIST_KEYS}
        batch.update({k: [s[k] for s in kept] for k in keys if k in LIST_KEYS})
    batch["num_skipped"] = len(samples) - len(kept)
    return batch


def seeded_split(n: int, sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Disjoint index sets of the given sizes from a seeded permutation of ``range(n)``."""
    if sum(sizes) > n:
        raise ValueError(f"split sizes {sizes} need {sum(sizes)} samples but the dataset has {n}")
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum((0, *sizes))
    return [np.sort(perm[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def resolve_size(size: float | int, n: int, name: str) -> int:
    """A split size given as a fraction of ``n`` (0 < size < 1) or as a count."""
    if isinstance(size, float) and 0 < size < 1:
        return int(round(size * n))
    if int(size) != size or not 0 <= size < n:
        raise ValueError(f"{name}={size} must be a fraction in (0, 1) or a count in [0, {n})")
    return int(size)


def seed_worker(worker_id: int) -> None:
    """Seeds numpy and random in each loader worker from torch's per-worker seed (itself from the run seed)."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ClassificationDataModule(pl.LightningDataModule):
    """Subclasses implement ``make_splits`` and set ``num_classes`` / ``class_names``.

    Args:
        batch_size: samples per batch (per process under DDP).
        num_workers: loader processes; 0 loads in the training process.
        in_memory: true holds the splits as uint8 tensors (image arrays of digits and cifar10; image files decoded
            once, in ``num_workers`` processes) and augments whole batches on the training device
            (data/in_memory.py); ``auto`` does so when the augment pipeline allows it and decoded files fit in
            memory.
        seed: seeds the train/val split and the shuffling order.
        train_transform / eval_transform: callables from an image (HWC uint8) or clip (THWC uint8) to a
            float tensor; built from the ``augment`` config.
        num_classes: the number of classes the config promises (the model's head is sized from it);
            ``check_num_classes`` compares it with what the data holds. None: what the data holds (class
            folders, class-index file), which ``check_num_classes`` returns for the config to take.
        mean / std: per-channel statistics used for normalisation (read by the augment config).
        sampler: training order: ``random`` (a seeded shuffle) or ``balanced`` (classes drawn equally often, with
            replacement; data/sampler.py). Both resume exactly mid-epoch.
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        in_memory: bool | str = False,
        seed: int = 0,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        num_classes: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        sampler: str = "random",
    ) -> None:
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"data.sampler={sampler!r} is unknown; choose one of {SAMPLERS}")
        self.sampler_kind = sampler
        self.expected_num_classes = num_classes
        self.mean, self.std = mean, std
        if int(batch_size) < 1:
            raise ValueError(f"data.batch_size={batch_size} must be a positive integer")
        if int(num_workers) < 0:
            raise ValueError(f"data.num_workers={num_workers} must be >= 0")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.in_memory = in_memory
        self.batch_transforms = None  # {"train", "eval"} whole-batch augmentations when held in memory
        self.seed = seed
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # --- to implement -------------------------------------------------------------------------------
    # Datasets with a fixed label set override ``class_names`` (and ``num_classes``) as class attributes;
    # datasets that discover classes on disk set ``_class_names`` in ``check()``.
    _class_names: list[str] | None = None
    _listed: tuple[Dataset, Dataset, Dataset] | None = None

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self.check()
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check(self) -> None:
        """Fail early (before any training) when the data is missing; named paths and fixes in the message."""

    def make_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        raise NotImplementedError

    def check_num_classes(self) -> int:
        """The number of classes of the data; raises when the config promised another number."""
        expected, actual = self.expected_num_classes, self.num_classes
        if expected is not None and expected != actual:
            raise ValueError(
                f"data.num_classes={expected} but the data has {actual} classes ({self.class_names}); "
                f"set data.num_classes={actual} (or null: the number of classes the data has)"
            )
        return actual

    # --- shared -------------------------------------------------------------------------------------
    def train_targets(self) -> np.ndarray:
        """Labels of the training split, one per sample (class weights, the balanced sampler)."""
        self.setup("fit")
        return dataset_targets(self.train_set)

    def list_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """The splits as ``make_splits`` gives them, made once, before anything is decoded into memory: file
        lists checked (and filtered) before the first step are the ones ``setup`` then holds."""
        if self._listed is None:
            self._listed = self.make_splits()
        return self._listed

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            splits, self.batch_transforms = hold_in_memory(
                self.list_splits(),
                mode=self.in_memory,
                train_transform=self.train_transform,
                eval_transform=self.eval_transform,
                seed=self.seed,
                num_workers=self.num_workers,
            )
            self.train_set, self.val_set, self.test_set = splits

    def train_images(self, n: int) -> torch.Tensor:
        """The first ``n`` training images, normalised and not augmented: float ``(n, C, H, W)`` (for layers
        initialised from data, e.g. airbench's whitening)."""
        self.setup("fit")
        data = self.train_set
        if self.batch_transforms is not None:  # held in memory: one uint8 tensor
            return self.batch_transforms["eval"](data.images[:n])
        if isinstance(data, ArrayDataset) and self.eval_transform is not None:
            return torch.stack([self.eval_transform(image) for image in data.images[:n]])
        raise ValueError(
            f"{type(self).__name__}: training images for a data-initialised layer need images held as arrays "
            f"(data.in_memory=true, or an array dataset such as digits or cifar10) and an augment config"
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.batch_transforms is None:
            return batch
        training = self.trainer is not None and self.trainer.training
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return augment_batch(batch, self.batch_transforms, train=training, epoch=epoch)

    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        sampler = self._shard_sampler(dataset, train=train)
        # trainer.overfit_batches wants the same first batches every epoch: a plain, unshuffled loader.
        overfit = self.trainer is not None and getattr(self.trainer, "overfit_batches", 0) > 0
        if train and sampler is None and not overfit:
            # An epoch's order depends only on (seed, epoch) and a mid-epoch checkpoint records the position.
            targets = self._sampler_targets(train)
            sampler = train_sampler(dataset, kind=self.sampler_kind, targets=targets, seed=self.seed)
        loader = ResumableLoader if isinstance(sampler, ResumableSampler) else DataLoader
        # A batch of an in-memory split is one indexing of a tensor (microseconds): worker processes would only
        # add a copy through shared memory per batch and take cores from the training step.
        workers = 0 if isinstance(dataset, InMemoryDataset) else self.num_workers
        return loader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train and sampler is None and not overfit,
            sampler=sampler,
            drop_last=train and len(sampler if sampler is not None else dataset) > self.batch_size,
            num_workers=workers,
            pin_memory=self.pins_memory(),
            persistent_workers=self.persistent_workers and workers > 0,
            collate_fn=collate,
            worker_init_fn=seed_worker,
            generator=generator,
        )

    def pins_memory(self) -> bool:
        """``data.pin_memory`` where it helps, batches copied to a CUDA device; on CPU it does nothing but make
        torch warn (the GPU-minded data configs set it)."""
        if not self.pin_memory:
            return False
        trainer = self.trainer
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _shard_sampler(self, dataset: Dataset, *, train: bool) -> DistributedSampler | None:
        """This process's shard under DDP (unpadded for evaluation, see data/sampler.py); None otherwise."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return None
        return shard_sampler(
            dataset,
            train=train,
            num_replicas=trainer.world_size,
            rank=trainer.global_rank,
            seed=self.seed,
            kind=self.sampler_kind,
            targets=self._sampler_targets(train),
        )

    def _sampler_targets(self, train: bool) -> np.ndarray | None:
        return self.train_targets() if train and self.sampler_kind == "balanced" else None

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """``dataset.targets`` as int64 ``(len(dataset),)``: every dataset of a DataModule lists its labels so that
    class statistics never need to load (decode) a sample."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(
            f"{type(dataset).__name__} has no `targets` (one label per sample); data.sampler=balanced and "
            f"module.class_weights=balanced need it: add a `targets` attribute or property to the dataset"
        )
    targets = np.asarray(targets, dtype=np.int64)
    if targets.shape != (len(dataset),):
        raise ValueError(f"{type(dataset).__name__}.targets has shape {targets.shape}, expected ({len(dataset)},)")
    return targets


def dataset_files(dataset: Dataset) -> list | None:
    """The ``(path, label)`` list a file-reading dataset reads from: ``ImageFileDataset.samples``,
    ``VideoClipDataset.videos``; None for datasets held in memory."""
    for name in ("samples", "videos"):
        items = getattr(dataset, name, None)
        if isinstance(items, list):
            return items
    return None


class ArrayDataset(Dataset):
    """Images held in memory as one uint8 array ``(N, H, W, C)`` with integer labels."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Callable | None = None) -> None:
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W, C); got {images.dtype} {images.shape}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.images[i]
        x = self.transform(image) if self.transform else torch.from_numpy(image).permute(2, 0, 1).float() / 255
        return {"input": x, "target": int(self.targets[i]), "index": i}
