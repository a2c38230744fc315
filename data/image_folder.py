"""Class folders of images: ``root/{train,val,test}/<class>/<image>``.

``val/`` is optional (then a seeded part of ``train/`` is held out); ``test/`` is optional (then the
validation images are also the test images, and results.json says ``data/test_is_val: true``).
Images are decoded with PIL, converted to RGB and resized (shorter side to ``image_size``, then a centre
crop) so that a batch has one shape before augmentation: per sample on access, or (``data.in_memory``) all
of a split once, in the loader's worker processes, into one uint8 tensor that data/in_memory.py then
serves a whole batch at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.base import ClassificationDataModule, resolve_size, seeded_split
from data.boxes import BoxAnnotations, resize_crop_boxes

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DECODE_CHUNK = 256  # images a decoding worker returns at a time
ORIENTATION = 0x0112  # the EXIF tag
TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


def class_folders(split_dir: Path) -> list[str]:
    """The class folders of a split, sorted; hidden ones (``.ipynb_checkpoints``, ``.git``, ...) are not classes."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in folder.rglob("*"))


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
    """RGB uint8 (H, W, 3), upright (EXIF orientation applied, as torchvision's and timm's loaders do);
    shorter side resized to ``size`` and centre-cropped to a square when given."""
    with Image.open(path) as im:
        im = rgb(ImageOps.exif_transpose(im), path)
        if size is not None:
            w, h, left, top = resize_crop_geometry(im.width, im.height, size)
            im = im.resize((w, h), Image.BILINEAR)
            im = im.crop((left, top, left + size, top + size))
        return np.array(im, dtype=np.uint8)  # a writable copy; torch warns on read-only arrays


# PIL modes of 16-bit grey images (PNG, TIFF): PIL's own convert("RGB") clips them at 255, all white.
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def rgb(im: Image.Image, path: Path) -> Image.Image:
    """``im`` as 8-bit RGB. High-bit-depth grey images are scaled to 8 bits: 16-bit by their top 8 bits (as
    torchvision's ``to_dtype(uint8, scale=True)``), 32-bit integers when within 16 bits; float images (``F``,
    float TIFFs) when their values lie in [0, 1], torchvision's float range. Others are refused naming the file
    and the range found: no silent all-white or all-black image."""
    if im.mode in SIXTEEN_BIT or im.mode in ("I", "F"):
        values = np.asarray(im)
        if im.mode == "F":
            low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
            if not (np.isfinite(values).all() and low >= 0.0 and high <= 1.0):
                raise ValueError(
                    f"{path} is a float image (PIL mode F) with values in [{low:g}, {high:g}]; only [0, 1] is read "
                    f"as intensities. Convert it to an 8-bit image (or scale it to [0, 1])."
                )
            grey = np.round(values * 255.0).astype(np.uint8)
        else:
            values = values.astype(np.int64)
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise ValueError(
                    f"{path} is a 32-bit integer image (PIL mode {im.mode}) with values in [{values.min()}, "
                    f"{values.max()}], beyond 16 bits. Convert it to an 8- or 16-bit image."
                )
            grey = (values >> 8).astype(np.uint8)
        im = Image.fromarray(grey)  # (H, W) uint8: mode L
    return im.convert("RGB")


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

    def read(self, i: int) -> np.ndarray | None:
        """Image ``i`` as RGB uint8 (H, W, 3); None for an unreadable file when ``skip_unreadable`` is set."""
        path = self.samples[i][0]
        try:
            return load_image(path, self.image_size)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            if not self.skip_unreadable:
                raise RuntimeError(
                    f"cannot decode image {path}: {e}. Remove or replace the file "
                    f"(or set data.skip_unreadable_eval=true to skip such files in evaluation)."
                ) from e
            log.warning("skipping unreadable image %s (%s)", path, e)
            return None

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        path, label = self.samples[i]
        image = self.read(i)
        if image is None:
            return None
        x = self.transform(image) if self.transform else torch.from_numpy(image).permute(2, 0, 1).float() / 255
        sample = {"input": x, "target": label, "index": i, "path": str(path.relative_to(self.root))}
        if self.boxes is not None:
            sample["boxes"] = self.image_boxes(path, sample["path"])
        return sample

    # --- data.in_memory (data/in_memory.py) -------------------------------------------------------------
    def held_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image once decoded; ValueError naming the fix when the split cannot be held."""
        if self.image_size is None:
            raise ValueError(
                "data.in_memory=true stacks images of one size: set data.image_size (data.in_memory=false reads "
                "images of any size)"
            )
        if self.boxes is not None:
            raise ValueError("data.in_memory=true does not carry data.boxes_file's boxes; set data.in_memory=false")
        return (self.image_size, self.image_size, 3)

    def decode_all(self, *, num_workers: int) -> tuple[Tensor, Tensor, Tensor]:
        """Every image, decoded once (``num_workers`` processes, a progress bar on a terminal): uint8
        ``(N, 3, S, S)``, int64 targets ``(N,)`` and bool ``(N,)``, false for unreadable files (zeros)."""
        h, w, c = self.held_shape()
        n = len(self)
        images = torch.empty((n, c, h, w), dtype=torch.uint8)
        readable = torch.ones(n, dtype=torch.bool)
        chunks = DataLoader(_Decoding(self), batch_size=DECODE_CHUNK, num_workers=num_workers, collate_fn=_stack_chunk)
        done, start = 0, time.perf_counter()
        # The bar shows on a terminal only (disable=None); the log line below goes to train.log as well.
        with tqdm(total=n, desc="decoding images", unit="images", mininterval=1.0, disable=None) as bar:
            for chunk, ok in chunks:  # (b, H, W, C) uint8, (b,) bool
                images[done : done + len(ok)] = torch.from_numpy(chunk).permute(0, 3, 1, 2)  # (b, C, H, W)
                readable[done : done + len(ok)] = torch.from_numpy(ok)
                done += len(ok)
                bar.update(len(ok))
        log.info("decoded %d images under %s into memory in %.1f s", n, self.root, time.perf_counter() - start)
        if not readable.all():
            log.warning(
                "%d of %d images under %s are unreadable: batches skip them", int((~readable).sum()), n, self.root
            )
        targets = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        return images, targets, readable

    def image_boxes(self, path: Path, key: str) -> torch.Tensor:
        """The file's boxes (checked against its size) moved through the resize and crop of ``load_image``."""
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
            if im.getexif().get(ORIENTATION, 1) in TRANSPOSED:  # load_image turns it upright
                width, height = height, width
        boxes = self.boxes.get(key, width=width, height=height)  # (K, 4) in original pixels
        if self.image_size is None:
            return boxes
        w, h, left, top = resize_crop_geometry(width, height, self.image_size)
        return resize_crop_boxes(
            boxes, scale=(w / width, h / height), left=left, top=top, size=(self.image_size, self.image_size)
        )


class _Decoding(Dataset):
    """Each file of an ``ImageFileDataset`` decoded, with whether it could be (zeros when not), for ``decode_all``."""

    def __init__(self, files: ImageFileDataset) -> None:
        self.files, self.shape = files, files.held_shape()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, bool]:
        image = self.files.read(i)
        return (np.zeros(self.shape, np.uint8), False) if image is None else (image, True)  # (H, W, C)


def _stack_chunk(items: list[tuple[np.ndarray, bool]]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([im for im, _ in items]), np.array([ok for _, ok in items])  # (b, H, W, C), (b,)


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
        names = class_folders(train)
        if not names:
            raise FileNotFoundError(f"{train} has no class folders; expected {train}/<class>/<image>")
        if len(names) == 1:
            raise ValueError(
                f"{train} holds one class folder ({names[0]}): a classifier needs two or more, one folder per class "
                f"({train}/<class>/<image>). Add the other classes' folders, or point data.root at the folder "
                f"whose train/ holds them."
            )
        empty = [name for name in names if not has_images(train / name)]
        if empty:
            raise FileNotFoundError(
                f"class folder(s) {', '.join(str(train / n) for n in empty)} hold no images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}): the head would get a class that is never trained. "
                f"Add its images, or remove the folder."
            )
        for split in ("val", "test"):
            d = self.root / split
            if d.is_dir():
                other = class_folders(d)
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
        val_set = self._dataset(val, train=False)
        # The same dataset object when test is val: data.in_memory decodes it once.
        test_set = val_set if self.test_is_val else self._dataset(find_images(self.root / "test", names), train=False)
        return self._dataset(train, train=True), val_set, test_set
