"""Data loading: per-sample albumentations pipeline vs the whole set in memory with whole-batch augmentation.

    python -m bench.loading [--device cpu|cuda] [--batch-size 128] [--batches 60] [--workers 0 2] [--repeats 3]

What is timed: producing ``--batches`` training batches that are ready for the model, i.e. augmented,
normalised float ``(B, 3, 32, 32)`` on ``--device``, with the CIFAR recipe (``augment=cifar``: pad 4
reflect, random 32x32 crop, horizontal flip), for

- ``per-sample, W workers``: the default path (``data.in_memory=false``): ``ArrayDataset`` + the
  albumentations ``Pipeline`` per image, ``collate``, pinned when on CUDA, copied to the device;
- ``in-memory``: ``data.in_memory=true``: a batch indexed from the uint8 tensor, copied to the device as
  uint8, then ``BatchAugment`` (data/in_memory.py) on the device.

Data: the digits (1437 train images, real) and a CIFAR-10-sized array (50000 random uint8 images; the
content does not change the speed). Loaders are built by the datamodule (``_loader``) as in training.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from bench.common import add_common_args, machine, median_time, setup_device, table
from data.base import ArrayDataset, ClassificationDataModule
from data.in_memory import augment_batch
from runs.compose import compose_config


class ArraysDataModule(ClassificationDataModule):
    """Given uint8 arrays as the train split (for the CIFAR-sized case without the CIFAR files)."""

    num_classes = 10
    class_names = [str(i) for i in range(10)]

    def __init__(self, *, images: np.ndarray, targets: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        self.images, self.targets = images, targets

    def make_splits(self):
        return tuple(
            ArrayDataset(self.images, self.targets, t)
            for t in (self.train_transform, self.eval_transform, self.eval_transform)
        )


def datamodule(source: str, *, in_memory: bool, workers: int, args: argparse.Namespace, run_dir: Path):
    cfg = compose_config("data=digits", "augment=cifar", f"data.batch_size={args.batch_size}", output_dir=run_dir)
    kwargs = dict(
        batch_size=args.batch_size,
        num_workers=workers,
        pin_memory=args.device.startswith("cuda"),
        persistent_workers=workers > 0,
        in_memory=in_memory,
        train_transform=instantiate(cfg.augment.train),
        eval_transform=instantiate(cfg.augment.eval),
    )
    if source == "digits":
        dm = instantiate(cfg.data, **kwargs)
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8)
        dm = ArraysDataModule(
            images=images, targets=rng.integers(0, 10, 50000), mean=cfg.data.mean, std=cfg.data.std, **kwargs
        )
    dm.setup()
    return dm


def consume(dm: ClassificationDataModule, device: torch.device, batches: int) -> None:
    loader = dm.train_dataloader()
    done = 0
    while done < batches:
        for batch in itertools.islice(loader, batches - done):
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            if dm.batch_transforms is not None:
                batch = augment_batch(batch, dm.batch_transforms, train=True)
            assert batch["input"].dtype == torch.float32 and batch["input"].shape[1:] == (3, 32, 32)
            done += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=60, help="batches per timed repeat")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader workers of the per-sample path")
    add_common_args(parser, repeats=3)
    args = parser.parse_args()
    device = setup_device(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in ("digits", "cifar10-sized"):
            modes = [(False, w) for w in args.workers] + [(True, 0)]
            base = None
            for in_memory, workers in modes:
                dm = datamodule(source, in_memory=in_memory, workers=workers, args=args, run_dir=Path(tmp) / "run")
                seconds = median_time(lambda dm=dm: consume(dm, device, args.batches), device, repeats=args.repeats)
                rate = args.batches * args.batch_size / seconds
                base = base or rate
                name = (
                    "in-memory, batch augment on device"
                    if in_memory
                    else f"per-sample albumentations, {workers} workers"
                )
                rows.append(
                    [
                        source,
                        name,
                        f"{rate:,.0f}",
                        f"{1e3 * seconds / args.batches:.2f}",
                        f"{rate / base:.1f}x",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    print(f"\nmachine: {machine(device)}")
    print(
        f"augment=cifar (pad 4 reflect, crop 32, flip), batch {args.batch_size}, "
        f"{args.batches} batches x {args.repeats} repeats, device {args.device}"
    )
    print(table(["data", "path", "images/s", "ms/batch", "vs first"], rows))


if __name__ == "__main__":
    main()
