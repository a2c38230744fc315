"""scikit-learn's bundled handwritten digits (1797 images, 10 classes) as 32x32 RGB: real data, no download."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

from data.base import ArrayDataset, ClassificationDataModule, resolve_size, seeded_split
from data.subsets import check_classes, check_per_class, few_per_class, keep_classes


def upsampled_digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits resized (bilinear) to ``size`` x ``size``: float (N, size, size) in [0, 1]; labels."""
    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float()[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x[:, 0].numpy(), bunch.target.astype(np.int64)


def digits_as_images(image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The digits at ``image_size`` repeated to 3 channels: uint8 (N, H, W, 3); labels."""
    x, targets = upsampled_digits(image_size)
    images = np.repeat((x * 255).round().astype(np.uint8)[..., None], 3, axis=-1)  # (N, H, W, 3)
    return images, targets


class DigitsDataModule(ClassificationDataModule):
    """Seeded train/val/test split of the digits (``split_seed`` is fixed by default so that runs with
    different seeds are scored on the same test images)."""

    num_classes = 10
    class_names = [str(i) for i in range(10)]

    def __init__(
        self,
        *,
        image_size: int = 32,
        val_size: float | int = 0.1,
        test_size: float | int = 0.2,
        split_seed: int = 0,
        classes: list[int] | None = None,
        train_per_class: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.image_size = image_size
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed
        # A subset of the digits (e.g. 0-4 for pretraining, 5-9 for transfer), relabelled 0..k-1.
        self.classes = check_classes(classes, self.class_names)
        if self.classes is not None:
            self.num_classes = len(self.classes)
            self.class_names = [self.class_names[c] for c in self.classes]
        # Few-shot training sets (transfer learning): this many labelled images per class, drawn with ``seed``.
        self.train_per_class = check_per_class(train_per_class)

    def make_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        images, targets = digits_as_images(self.image_size)
        images, targets = keep_classes(images, targets, self.classes)
        n = len(images)
        n_val, n_test = (
            resolve_size(self.val_size, n, "data.val_size"),
            resolve_size(self.test_size, n, "data.test_size"),
        )
        test_idx, val_idx, train_idx = seeded_split(n, (n_test, n_val, n - n_test - n_val), self.split_seed)
        if self.train_per_class is not None:
            train_idx = few_per_class(
                train_idx, targets[train_idx], self.train_per_class, seed=self.seed, class_names=self.class_names
            )
        return (
            ArrayDataset(images[train_idx], targets[train_idx], self.train_transform),
            ArrayDataset(images[val_idx], targets[val_idx], self.eval_transform),
            ArrayDataset(images[test_idx], targets[test_idx], self.eval_transform),
        )
