"""Class folders of images: ``root/{train,val,test}/<class>/<image>``.

``val/`` is optional (then a seeded part of ``train/`` is held out); ``test/`` is optional (then the
validation images are also the test images, and results.json says ``data/test_is_val: true``).
Images are decoded with PIL, converted to RGB and resized (shorter side to ``image_size``, then a centre
crop) so that a batch has one shape before augmentation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from data.base import ClassificationDataModule, resolve_size, seeded_split
from data.boxes import BoxAnnotations, resize_crop_boxes

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def find_images(split_dir: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    samples = []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (split_dir / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        samples += [(p, label) for p in files]
    return samples


def resize_crop_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Resized width and height, and crop left and top, of "shorter side to ``size``, centre square crop"."""
    scale = size / min(width, height)
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    return w, h, (w - size) // 2, (h - size) // 2


def load_image(path: Path, size: int | None) -> np.ndarray:
    """RGB uint8 (H, W, 3); shorter side resized to ``size`` and centre-cropped to a square when given."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None:
            w, h, left, top = resize_crop_geometry(im.width, im.height, size)
            im = im.resize((w, h), Image.BILINEAR)
            im = im.crop((left, top, left + size, top + size))
        return np.array(im, dtype=np.uint8)  # a writable copy; torch warns on read-only arrays


class ImageFileDataset(Dataset):
    """Images read from files on access. An unreadable file is skipped (``None``, counted by the collate
    function, with a warning naming it) when ``skip_unreadable`` is set, otherwise it raises naming the file."""

    def __init__(
        self,
        samples: list[tuple[Path, int]],
        *,
        root: Path,
        image_size: int | None,
        transform: Callable | None,
        skip_unreadable: bool,
        boxes: BoxAnnotations | None = None,
    ) -> None:
        self.samples, self.root, self.image_size = samples, root, image_size
        self.transform, self.skip_unreadable = transform, skip_unreadable
        self.boxes = boxes

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        path, label = self.samples[i]
        try:
            image = load_image(path, self.image_size)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            if not self.skip_unreadable:
                raise RuntimeError(
                    f"cannot decode image {path}: {e}. Remove or replace the file "
                    f"(or set data.skip_unreadable_eval=true to skip such files in evaluation)."
                ) from e
            log.warning("skipping unreadable image %s (%s)", path, e)
            return None
        x = self.transform(image) if self.transform else torch.from_numpy(image).permute(2, 0, 1).float() / 255
        sample = {"input": x, "target": label, "index": i, "path": str(path.relative_to(self.root))}
        if self.boxes is not None:
            sample["boxes"] = self.image_boxes(path, sample["path"])
        return sample

    def image_boxes(self, path: Path, key: str) -> torch.Tensor:
        """The file's boxes (checked against its size) moved through the resize and crop of ``load_image``."""
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
        boxes = self.boxes.get(key, width=width, height=height)  # (K, 4) in original pixels
        if self.image_size is None:
            return boxes
        w, h, left, top = resize_crop_geometry(width, height, self.image_size)
        return resize_crop_boxes(
            boxes, scale=(w / width, h / height), left=left, top=top, size=(self.image_size, self.image_size)
        )


class ImageFolderDataModule(ClassificationDataModule):
    def __init__(
        self,
        *,
        root: str,
        image_size: int | None = 64,
        val_size: float | int = 0.1,
        split_seed: int = 0,
        skip_unreadable_train: bool = True,
        skip_unreadable_eval: bool = False,
        boxes_file: str | None = None,
        boxes_missing: str = "error",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        # Optional boxes (data/boxes.py formats) keyed by the image path relative to root; read and checked now.
        self.boxes = BoxAnnotations(boxes_file, missing=boxes_missing) if boxes_file else None
        self.image_size, self.val_size, self.split_seed = image_size, val_size, split_seed
        self.skip_unreadable_train, self.skip_unreadable_eval = skip_unreadable_train, skip_unreadable_eval
        self.test_is_val = False

    def check(self) -> None:
        train = self.root / "train"
        if not train.is_dir():
            raise FileNotFoundError(
                f"image folder dataset not found: expected {train}/<class>/<image> (and optionally val/ and "
                f"test/ beside it). Set data.root to the folder that contains train/."
            )
        names = sorted(p.name for p in train.iterdir() if p.is_dir())
        if not names:
            raise FileNotFoundError(f"{train} has no class folders; expected {train}/<class>/<image>")
        for split in ("val", "test"):
            d = self.root / split
            if d.is_dir():
                other = sorted(p.name for p in d.iterdir() if p.is_dir())
                if other != names:
                    raise ValueError(f"class folders of {d} ({other}) differ from those of {train} ({names})")
        self._class_names = names

    def _dataset(self, samples: list[tuple[Path, int]], *, train: bool) -> ImageFileDataset:
        return ImageFileDataset(
            samples,
            root=self.root,
            image_size=self.image_size,
            transform=self.train_transform if train else self.eval_transform,
            skip_unreadable=self.skip_unreadable_train if train else self.skip_unreadable_eval,
            boxes=self.boxes,
        )

    def make_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        names = self.class_names
        train = find_images(self.root / "train", names)
        if not train:
            raise FileNotFoundError(f"no images ({sorted(IMAGE_EXTENSIONS)}) under {self.root / 'train'}")
        if (self.root / "val").is_dir():
            val = find_images(self.root / "val", names)
        else:
            n_val = resolve_size(self.val_size, len(train), "data.val_size")
            val_idx, train_idx = seeded_split(len(train), (n_val, len(train) - n_val), self.split_seed)
            train, val = [train[i] for i in train_idx], [train[i] for i in val_idx]
        self.test_is_val = not (self.root / "test").is_dir()
        test = val if self.test_is_val else find_images(self.root / "test", names)
        return self._dataset(train, train=True), self._dataset(val, train=False), self._dataset(test, train=False)
