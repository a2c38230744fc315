"""Small datasets written in the real on-disk formats, for tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_cifar10(root: Path, *, n_per_batch: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """A tiny CIFAR-10 in the official ``cifar-10-batches-py`` pickle layout; labels are learnable
    (each class has its own mean colour)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n: int, name: str) -> None:
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 32, 32, 3)) + (labels[:, None, None, None] * 19)
        data = images.astype(np.uint8).transpose(0, 3, 1, 2).reshape(n, 3072)  # rows of R, G, B planes
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    "batch_label": name,
                    "labels": labels.tolist(),
                    "data": data,
                    "filenames": [f"{name}_{i}.png" for i in range(n)],
                },
                f,
            )

    for i in range(1, 6):
        batch(n_per_batch, f"data_batch_{i}")
    batch(n_test, "test_batch")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]},
            f,
        )
    return folder


def class_image(label: int, rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """An image whose class is visible: a bright square in one of four corners on noise."""
    image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    h = size // 2
    y, x = divmod(label % 4, 2)
    image[y * h : (y + 1) * h, x * h : (x + 1) * h] = 230
    return image


def write_image_folder(
    root: Path,
    *,
    classes=("a", "b", "c"),
    per_class: int = 6,
    splits=("train", "val", "test"),
    size: int = 24,
    seed: int = 0,
) -> Path:
    """``root/<split>/<class>/<i>.jpg`` with class-dependent JPEGs of varying sizes."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                s = size + int(rng.integers(0, 8))
                Image.fromarray(class_image(label, rng, s)).save(d / f"{i}.jpg", quality=95)
    return root
