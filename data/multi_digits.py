"""Several scikit-learn digits on one canvas; a sample is (canvas, box of one digit, that digit's label).

Each canvas holds ``objects`` digits of different classes, placed in distinct cells of a 2x2 grid with a
random offset, and yields one sample per digit: the same image appears with different boxes and labels.
Global pooling sees the same input for all of them and cannot tell which digit is meant (at best
1/objects of the samples of a canvas are right), while an ROI head reads the given box. Source digits are
split into disjoint train / val / test pools before canvases are drawn, so test digits are unseen.
Generated in memory from ``split_seed``: no files, no download.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.base import ClassificationDataModule, seeded_split
from data.digits import upsampled_digits

GRID = 2  # cells per canvas side


def make_canvases(
    digits: np.ndarray,
    labels: np.ndarray,
    count: int,
    *,
    canvas_size: int,
    objects: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` canvases uint8 (M, H, W, 3), boxes float (M, objects, 4) and labels int64 (M, objects)."""
    size, cell = digits.shape[1], canvas_size // GRID
    by_label = {c: np.flatnonzero(labels == c) for c in range(10)}
    present = [c for c in range(10) if len(by_label[c])]
    canvases = np.zeros((count, canvas_size, canvas_size), dtype=np.float32)
    boxes = np.zeros((count, objects, 4), dtype=np.float32)
    classes = np.zeros((count, objects), dtype=np.int64)
    for m in range(count):
        cells = rng.choice(GRID * GRID, objects, replace=False)
        classes[m] = rng.choice(present, objects, replace=False)
        for k, (c, label) in enumerate(zip(cells, classes[m], strict=True)):
            x0 = (c % GRID) * cell + rng.integers(0, cell - size + 1)
            y0 = (c // GRID) * cell + rng.integers(0, cell - size + 1)
            digit = digits[rng.choice(by_label[label])]
            canvases[m, y0 : y0 + size, x0 : x0 + size] = np.maximum(canvases[m, y0 : y0 + size, x0 : x0 + size], digit)
            boxes[m, k] = (x0, y0, x0 + size, y0 + size)
    images = np.repeat((canvases * 255).round().astype(np.uint8)[..., None], 3, axis=-1)  # (M, H, W, 3)
    return images, boxes, classes


class MultiDigitsDataset(Dataset):
    """Sample i is object ``i % K`` of canvas ``i // K``: ``input``, ``target`` and ``boxes`` (1, 4)."""

    def __init__(self, images: np.ndarray, boxes: np.ndarray, labels: np.ndarray, transform=None) -> None:
        self.images, self.boxes, self.labels, self.transform = images, boxes, labels, transform
        self.objects = labels.shape[1]

    def __len__(self) -> int:
        return len(self.images) * self.objects

    @property
    def targets(self) -> np.ndarray:
        return self.labels.reshape(-1)  # sample i is object i % K of canvas i // K

    def __getitem__(self, i: int) -> dict[str, Any]:
        m, k = divmod(i, self.objects)
        image = self.images[m]
        x = self.transform(image) if self.transform else torch.from_numpy(image).permute(2, 0, 1).float() / 255
        box = torch.from_numpy(self.boxes[m, k : k + 1].copy())  # (1, 4)
        return {"input": x, "target": int(self.labels[m, k]), "index": i, "boxes": box}


class MultiDigitsDataModule(ClassificationDataModule):
    """Args beyond the base class: canvas and digit size in pixels, digits per canvas (2..4), canvases per
    split, and ``split_seed`` for the digit pools and the canvases. Use geometric augmentation with care:
    boxes are not moved by the transform pipeline (``augment=none`` is the intended setting)."""

    num_classes = 10
    class_names = [str(i) for i in range(10)]

    def __init__(
        self,
        *,
        canvas_size: int = 32,
        digit_size: int = 14,
        objects: int = 3,
        train_canvases: int = 1000,
        val_canvases: int = 150,
        test_canvases: int = 300,
        split_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 2 <= objects <= GRID * GRID:
            raise ValueError(f"data.objects={objects} must be in 2..{GRID * GRID} (digits per canvas)")
        if not 4 <= digit_size <= canvas_size // GRID:
            raise ValueError(
                f"data.digit_size={digit_size} must be in 4..{canvas_size // GRID} "
                f"(a cell of the {GRID}x{GRID} grid of a {canvas_size}px canvas)"
            )
        self.canvas_size, self.digit_size, self.objects = canvas_size, digit_size, objects
        self.counts = (train_canvases, val_canvases, test_canvases)
        self.split_seed = split_seed

    def make_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        digits, labels = upsampled_digits(self.digit_size)
        n = len(digits)
        pools = seeded_split(n, (int(0.7 * n), int(0.1 * n), n - int(0.7 * n) - int(0.1 * n)), self.split_seed)
        rng = np.random.default_rng(self.split_seed)
        sets = []
        for pool, count, transform in zip(
            pools, self.counts, (self.train_transform, self.eval_transform, self.eval_transform), strict=True
        ):
            arrays = make_canvases(
                digits[pool], labels[pool], count, canvas_size=self.canvas_size, objects=self.objects, rng=rng
            )
            sets.append(MultiDigitsDataset(*arrays, transform=transform))
        return tuple(sets)  # type: ignore[return-value]
