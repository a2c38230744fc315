"""CIFAR-10 from the official python pickles (``<root>/cifar-10-batches-py``).

The pickles are read directly (torchvision is used only to download them), so any copy in the official
layout works, including the small ones the tests write. They are read with ``BatchUnpickler``, which builds
only what the official files hold (dicts, lists, strings, bytes, numbers and numpy arrays): ``data.root``
may come from a checkpoint's stored config, and a plain ``pickle.load`` of a crafted file runs its code.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from data.base import ArrayDataset, ClassificationDataModule, resolve_size, seeded_split
from data.subsets import check_classes, check_per_class, few_per_class, keep_classes

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]


# The only globals of the official pickles (numpy arrays; numpy 1 names them numpy.core, numpy 2 numpy._core)
# and of batches re-pickled by Python 3 (_codecs.encode: bytes of protocol 2). Nothing else is looked up.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class BatchUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only ``ALLOWED_GLOBALS``: a crafted file naming anything else (a
    function to call, a class to build) raises instead of running it."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch") from None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 32, 32, 3) and labels int64 (N,) from one CIFAR-10 pickle batch file."""
    fix = "Replace it with the file of that name from cifar-10-python.tar.gz (or delete it and use data.download=true)."
    if path.stat().st_size == 0:
        raise ValueError(f"CIFAR-10 batch {path} is empty (0 bytes): an interrupted download or copy. {fix}")
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
        raise ValueError(
            f"CIFAR-10 batch {path} is not a readable pickle batch ({type(e).__name__}: {e}). {fix}"
        ) from None
    data = batch.get("data") if isinstance(batch, dict) else None
    labels = batch.get("labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or not isinstance(labels, list):
        raise ValueError(f"CIFAR-10 batch {path} holds no 'data' array of (N, 3072) and 'labels' list. {fix}")
    if len(labels) != len(data):
        raise ValueError(f"CIFAR-10 batch {path}: {len(data)} images but {len(labels)} labels. {fix}")
    images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows of R, G, B planes
    return images, np.asarray(labels, dtype=np.int64)


def read_batches(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 32, 32, 3) and labels int64 (N,) from CIFAR-10 pickle batch files."""
    images, labels = zip(*(read_batch(folder / name) for name in names), strict=True)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


class CIFAR10DataModule(ClassificationDataModule):
    """Seeded train/val split of the official train set; the official test set for test."""

    num_classes = 10
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def __init__(
        self,
        *,
        root: str,
        download: bool = False,
        val_size: float | int = 5000,
        split_seed: int = 0,
        classes: list[int] | None = None,
        train_per_class: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.download = download
        self.val_size, self.split_seed = val_size, split_seed
        # A subset of the classes relabelled 0..k-1, and few-shot training sets (transfer learning, data/subsets.py).
        self.classes = check_classes(classes, self.class_names)
        if self.classes is not None:
            self.num_classes = len(self.classes)
            self.class_names = [self.class_names[c] for c in self.classes]
        self.train_per_class = check_per_class(train_per_class)

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    def _missing(self) -> list[str]:
        return [n for n in TRAIN_FILES + TEST_FILES if not (self.folder / n).is_file()]

    def check(self) -> None:
        if not self._missing():
            return
        if self.download:
            from torchvision.datasets import CIFAR10

            try:
                CIFAR10(str(self.root), train=True, download=True)
            except Exception as e:  # no network, proxy, disk full...
                raise FileNotFoundError(self._how_to_provide(f"download failed: {e}")) from e
        elif self._missing():
            raise FileNotFoundError(self._how_to_provide(f"missing: {', '.join(self._missing())}"))

    def _how_to_provide(self, reason: str) -> str:
        return (
            f"CIFAR-10 not found at {self.folder} ({reason}). Either run with data.download=true (needs internet), "
            f"or extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into "
            f"{self.root}, or point data.root (or $VISFEAT_DATA) to a folder that contains {FOLDER}/."
        )

    def prepare_data(self) -> None:
        self.check()

    def make_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        images, targets = keep_classes(*read_batches(self.folder, TRAIN_FILES), self.classes)
        n = len(images)
        n_val = resolve_size(self.val_size, n, "data.val_size")
        val_idx, train_idx = seeded_split(n, (n_val, n - n_val), self.split_seed)
        if self.train_per_class is not None:
            train_idx = few_per_class(
                train_idx, targets[train_idx], self.train_per_class, seed=self.seed, class_names=self.class_names
            )
        test_images, test_targets = keep_classes(*read_batches(self.folder, TEST_FILES), self.classes)
        return (
            ArrayDataset(images[train_idx], targets[train_idx], self.train_transform),
            ArrayDataset(images[val_idx], targets[val_idx], self.eval_transform),
            ArrayDataset(test_images, test_targets, self.eval_transform),
        )
