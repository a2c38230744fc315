"""Whole-set-in-memory loading with whole-batch augmentation on the training device (``data.in_memory``).

For datasets that fit in memory (digits, CIFAR-10, image folders of small images) the per-sample path
(index one image, run the albumentations ``Pipeline`` on it, collate 128 small tensors, copy floats to the
device) costs more than a small model's training step. This path instead:

    uint8 tensor (N, C, H, W) --index a whole batch--> uint8 (B, C, H, W) --to device (4x fewer bytes)-->
    BatchAugment: normalise, pad, random crop + flip, all samples at once --> float (B, C, H, W)

``InMemoryDataset.__getitems__`` returns the whole batch (torch's DataLoader calls it with the sampler's
indices of one batch), so samplers, DDP sharding and resumable loaders work unchanged. The datamodule
applies ``BatchAugment`` after the batch reached its device (``on_after_batch_transfer``).

Two kinds of split can be held: uint8 image arrays (``ArrayDataset`` of digits and CIFAR-10), and splits of
image files that decode themselves once into one uint8 tensor (``held_shape()`` / ``decode_all()``, the
``ImageFileDataset`` of data/image_folder.py: PIL decoding in the loader's worker processes). ``auto`` holds a
split of files only when its decoded size is below ``RAM_FRACTION`` of the memory available now. Files that
could not be decoded stay in the tensor as unreadable rows: the batches that draw them drop them and count
them (``num_skipped``), as the per-sample path does.

Only the geometric transforms of the CIFAR recipe translate: ``Pad`` / ``PadIfNeeded`` (reflect or
constant), ``RandomCrop`` and ``HorizontalFlip``; ``batch_augment_from`` raises for any other transform and
says to set ``data.in_memory=false`` (or ``auto``, which falls back to the per-sample path).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Protocol

import albumentations as A
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

log = logging.getLogger(__name__)
IN_MEMORY_MODES = (True, False, "auto")
# data.in_memory=auto holds decoded files only below this share of the memory available (MemAvailable): the
# rest stays for the model, the loader and the other processes of the machine.
RAM_FRACTION = 0.5
# cv2 border modes albumentations uses, and the torch padding mode that matches each.
BORDER_MODES = {
    0: "constant",
    4: "reflect",
}  # BORDER_CONSTANT, BORDER_REFLECT_101 (torch "reflect" excludes the edge)


class DecodableSplit(Protocol):
    """A split of image files that can decode itself into one uint8 tensor (data/image_folder.py)."""

    def __len__(self) -> int: ...

    def held_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image once decoded; raises ValueError (naming the fix) when they cannot be held."""
        ...

    def decode_all(self, *, num_workers: int) -> tuple[Tensor, Tensor, Tensor]:
        """Images uint8 (N, C, H, W), targets int64 (N,), readable bool (N,)."""
        ...


class InMemoryDataset(Dataset):
    """Images as one uint8 tensor ``(N, C, H, W)`` and int64 targets; fetched a whole batch at a time.

    ``readable`` (bool, N) marks the images that could be decoded; a batch drops the others and counts them
    in ``num_skipped``.
    """

    def __init__(self, images: Tensor, targets: Tensor, readable: Tensor | None = None) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images (N, C, H, W); got {images.dtype} {tuple(images.shape)}")
        self.images, self.targets = images, torch.as_tensor(targets, dtype=torch.int64)
        self.readable = None if readable is None or bool(readable.all()) else readable

    @classmethod
    def from_arrays(cls, images: np.ndarray, targets: np.ndarray) -> InMemoryDataset:
        """From uint8 ``(N, H, W, C)`` arrays (``ArrayDataset``)."""
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W, C); got {images.dtype} {images.shape}")
        nchw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
        return cls(nchw, torch.as_tensor(np.asarray(targets), dtype=torch.int64))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        if self.readable is not None and not self.readable[i]:
            return None
        return {"input": self.images[i], "target": self.targets[i], "index": i}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        skipped = 0
        if self.readable is not None:
            keep = self.readable[idx]
            skipped, idx = len(idx) - int(keep.sum()), idx[keep]
            if not len(idx):  # every sample of the batch was unreadable (as collate reports it)
                return {"num_skipped": skipped}
        return {
            "input": self.images[idx],
            "target": self.targets[idx],
            "index": idx,
            "num_skipped": skipped,
        }  # input: (B, C, H, W) uint8


class BatchAugment:
    """uint8 ``(B, C, H, W)`` -> normalised float ``(B, C, H, W)``: pad, random crop, horizontal flip, with
    independent draws per sample, in a single gather on the batch's device."""

    def __init__(
        self,
        *,
        mean: np.ndarray | list[float],
        std: np.ndarray | list[float],
        pad: tuple[int, int, int, int] = (0, 0, 0, 0),  # left, right, top, bottom
        pad_mode: str = "reflect",
        pad_value: float = 0.0,
        crop: tuple[int, int] | None = None,  # (height, width); None keeps the padded size
        flip_p: float = 0.0,
        alternate_flip: bool = False,
        seed: int = 0,
    ) -> None:
        # Normalisation of pixel values in [0, 255]: (x - shift) * scale, kept on the device of the last batch.
        self.shift = torch.as_tensor(np.asarray(mean, dtype=np.float32)).view(1, -1, 1, 1) * 255.0
        self.scale = 1.0 / (torch.as_tensor(np.asarray(std, dtype=np.float32)).view(1, -1, 1, 1) * 255.0)
        if pad_mode not in BORDER_MODES.values():
            raise ValueError(f"pad_mode={pad_mode!r} must be one of {sorted(BORDER_MODES.values())}")
        self.pad, self.pad_mode, self.pad_value = tuple(int(p) for p in pad), pad_mode, float(pad_value)
        self.crop, self.flip_p = crop, float(flip_p)
        # airbench: image i is flipped in epoch e iff bit(i) xor (e odd), bit(i) a seeded coin per image.
        self.alternate_flip, self.seed = bool(alternate_flip), int(seed)

    def base_flips(self, index: Tensor) -> Tensor:
        """The seeded coin of each image index (bool): a multiplicative hash, so any subset of images gets the
        same coins in any order and on any process."""
        h = (index.long() + self.seed * 1_000_003) * 2_654_435_761 % (1 << 32)
        return ((h >> 16) & 1).bool()

    def __call__(
        self, images: Tensor, generator: torch.Generator | None = None, *, index: Tensor | None = None, epoch: int = 0
    ) -> Tensor:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(
                f"BatchAugment expects uint8 images (B, C, H, W); got {images.dtype} {tuple(images.shape)}"
            )
        flip = None
        if self.alternate_flip and self.flip_p > 0:
            if index is None:
                raise ValueError("alternate_flip needs the batch's image indices (batch['index'])")
            flip = self.base_flips(index.cpu()) ^ (epoch % 2 == 1)
        needed = any(self.pad) or self.crop is not None or self.flip_p > 0
        x = self._pad_crop_flip(images, generator, flip) if needed else images
        # Normalising commutes with pad (of the fill value), crop and flip: it runs last, on the output, in place.
        if self.shift.device != x.device:
            self.shift, self.scale = self.shift.to(x.device), self.scale.to(x.device)
        return x.float().sub_(self.shift).mul_(self.scale)

    def _pad_crop_flip(self, images: Tensor, generator: torch.Generator | None, flip: Tensor | None = None) -> Tensor:
        """Pad, crop and flip as one gather from the uint8 batch: each output pixel's source index is computed
        (the padding folded in as reflected or out-of-range indices), instead of padding a float copy first
        and indexing it (3-4x slower on a CPU for CIFAR-sized batches)."""
        b, c, h, w = images.shape
        left, right, top, bottom = self.pad
        ph, pw = h + top + bottom, w + left + right  # the padded size
        ch, cw = self.crop or (ph, pw)
        if ch > ph or cw > pw:
            raise ValueError(f"crop {ch}x{cw} is larger than the (padded) image {ph}x{pw}")
        if self.pad_mode == "reflect" and max(self.pad) >= min(h, w):
            raise ValueError(f"reflect padding {self.pad} must be smaller than the image {h}x{w}")
        dev = images.device
        # Draws on the CPU generator (seeded by seed_everything), then moved: same draws on any device.
        y0 = torch.randint(0, ph - ch + 1, (b,), generator=generator)
        x0 = torch.randint(0, pw - cw + 1, (b,), generator=generator)
        if flip is None:
            flip = torch.rand(b, generator=generator) < self.flip_p
        rows = y0[:, None] + torch.arange(ch) - top  # (B, ch) rows of the unpadded image
        cols = torch.arange(cw).expand(b, cw)
        cols = torch.where(flip[:, None], cw - 1 - cols, cols) + x0[:, None] - left  # (B, cw)
        rows, row_in = self._source(rows, h)
        cols, col_in = self._source(cols, w)
        flat = (rows[:, :, None] * w + cols[:, None, :]).to(dev)  # (B, ch, cw) indices into an H*W plane
        out = images.reshape(b, c, h * w).gather(2, flat.view(b, 1, ch * cw).expand(b, c, ch * cw))
        out = out.view(b, c, ch, cw)  # (B, C, ch, cw) uint8
        if self.pad_mode == "constant" and any(self.pad):
            inside = (row_in[:, :, None] & col_in[:, None, :]).to(dev)[:, None]  # (B, 1, ch, cw)
            out = torch.where(inside, out.float(), self.pad_value)
        return out

    def _source(self, index: Tensor, size: int) -> tuple[Tensor, Tensor]:
        """Indices into the padded image -> indices into the image (reflected, or clamped where the constant
        fill goes) and whether each lies inside it."""
        inside = (index >= 0) & (index < size)
        if self.pad_mode == "reflect":  # reflect-101: -1 -> 1, size -> size - 2 (the edge is not repeated)
            index = index.abs()
            index = torch.where(index >= size, 2 * (size - 1) - index, index)
        return index.clamp(0, size - 1), inside


def batch_augment_from(pipeline: Any, *, image_size: tuple[int, int], seed: int = 0) -> BatchAugment:
    """The ``BatchAugment`` equivalent of a ``data.transforms.Pipeline`` made of Pad / PadIfNeeded /
    RandomCrop / HorizontalFlip (in that order), for images of ``image_size`` (H, W)."""
    if pipeline is None:
        raise ValueError("data.in_memory=true needs the augment config's train/eval pipelines (mean and std)")
    mean, std = pipeline.mean / 255.0, 1.0 / (pipeline.inv_std * 255.0)
    h, w = image_size
    pad, pad_mode, pad_value, crop, flip_p = (0, 0, 0, 0), "reflect", 0.0, None, 0.0
    for t in pipeline.compose.transforms:
        kind = type(t).__name__
        if kind in ("Pad", "PadIfNeeded") and not any(pad) and crop is None:
            pad = _pad_amounts(t, h, w)
            pad_mode, pad_value = _border(t), float(np.mean(getattr(t, "fill", 0) or 0))
        elif kind == "RandomCrop" and crop is None and t.p == 1.0:
            crop = (int(t.height), int(t.width))
        elif kind == "HorizontalFlip" and flip_p == 0:
            flip_p = float(t.p)
        else:
            raise ValueError(
                f"data.in_memory=true: augment transform {kind} has no whole-batch equivalent (supported, in this "
                f"order: Pad | PadIfNeeded, RandomCrop, HorizontalFlip); set data.in_memory=false or auto"
            )
    alternate = bool(getattr(pipeline, "alternate_flip", False))
    return BatchAugment(
        mean=mean,
        std=std,
        pad=pad,
        pad_mode=pad_mode,
        pad_value=pad_value,
        crop=crop,
        flip_p=flip_p,
        alternate_flip=alternate,
        seed=seed,
    )


def _pad_amounts(t: A.BasicTransform, h: int, w: int) -> tuple[int, int, int, int]:
    if type(t).__name__ == "Pad":
        p = t.padding
        if isinstance(p, int):
            return (p, p, p, p)
        if len(p) == 2:  # (x, y)
            return (p[0], p[0], p[1], p[1])
        left, top, right, bottom = p
        return (left, right, top, bottom)
    if getattr(t, "position", "center") != "center" or t.min_height is None or t.min_width is None:
        raise ValueError("data.in_memory=true supports PadIfNeeded with min_height/min_width and position=center only")
    dh, dw = max(0, t.min_height - h), max(0, t.min_width - w)
    return (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)


def _border(t: A.BasicTransform) -> str:
    mode = int(t.border_mode)
    if mode not in BORDER_MODES:
        raise ValueError(f"data.in_memory=true supports border_mode 0 (constant) or 4 (reflect_101); got {mode}")
    return BORDER_MODES[mode]


def hold_in_memory(
    splits: tuple[Dataset, ...],
    *,
    mode: bool | str,
    train_transform: Any,
    eval_transform: Any,
    num_workers: int = 0,
    seed: int = 0,
) -> tuple[tuple[Dataset, ...], dict[str, BatchAugment] | None]:
    """``(train, val, test)`` splits -> in-memory splits and their ``{"train", "eval"}`` batch transforms.

    The splits unchanged (and None) when ``mode`` is false, or ``"auto"`` and they cannot be held (neither
    uint8 image arrays nor decodable files of one size, augment pipelines without a whole-batch equivalent,
    decoded files too large for the memory available). A split given twice (test = val) is held once.
    """
    if mode not in IN_MEMORY_MODES:
        raise ValueError(f"data.in_memory={mode!r} must be true, false or auto")
    if getattr(train_transform, "alternate_flip", False) and mode is not True:
        raise ValueError(
            f"augment.train.alternate_flip=true works on whole batches only; data.in_memory={mode}: "
            f"set data.in_memory=true"
        )
    if mode is False:
        return splits, None
    try:
        shape = held_shape(splits)
        transforms = {
            "train": batch_augment_from(train_transform, image_size=shape[:2], seed=seed),
            "eval": batch_augment_from(eval_transform, image_size=shape[:2]),
        }
        unique = list({id(d): d for d in splits}.values())
        if mode == "auto":
            check_fits(unique, shape)
    except ValueError as e:
        if mode == "auto":
            log.info("data.in_memory=auto: per-sample loading (%s)", e)
            return splits, None
        raise
    held = {id(d): hold(d, num_workers=num_workers) for d in unique}
    return tuple(held[id(d)] for d in splits), transforms


def held_shape(splits: tuple[Dataset, ...]) -> tuple[int, int, int]:
    """The (H, W, C) that every image of every split has once held; ValueError when there is none."""
    shapes = set()
    for d in splits:
        images = getattr(d, "images", None)
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.uint8:
            shapes.add(tuple(images.shape[1:]))
        elif callable(getattr(d, "held_shape", None)):
            shapes.add(tuple(d.held_shape()))
        else:
            raise ValueError(
                f"data.in_memory=true needs uint8 image arrays (digits, cifar10) or image files (image_folder); "
                f"got {[type(d).__name__ for d in splits]}. Set data.in_memory=false"
            )
    if len(shapes) != 1:
        raise ValueError(f"data.in_memory=true needs one image shape in all splits; got {sorted(shapes)}")
    return shapes.pop()


def available_memory() -> int:
    """Bytes of memory available to a new allocation without swapping (Linux MemAvailable; else free pages)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(splits: list[Dataset], shape: tuple[int, int, int]) -> None:
    """Splits of files to decode must fit in ``RAM_FRACTION`` of the available memory (arrays are held already)."""
    files = [d for d in splits if not isinstance(getattr(d, "images", None), np.ndarray)]
    need = sum(len(d) for d in files) * math.prod(shape)
    free = available_memory()
    if need > RAM_FRACTION * free:
        raise ValueError(
            f"{sum(len(d) for d in files)} decoded images of {shape} need {need / 2**30:.1f} GiB, more than "
            f"{RAM_FRACTION:.0%} of the {free / 2**30:.1f} GiB available; data.in_memory=true holds them anyway"
        )


def hold(split: Dataset | DecodableSplit, *, num_workers: int) -> InMemoryDataset:
    if isinstance(getattr(split, "images", None), np.ndarray):
        return InMemoryDataset.from_arrays(split.images, split.targets)
    return InMemoryDataset(*split.decode_all(num_workers=num_workers))


def augment_batch(
    batch: dict[str, Any], transforms: dict[str, BatchAugment], *, train: bool, epoch: int = 0
) -> dict[str, Any]:
    """Turns a batch's uint8 ``input`` into the augmented, normalised float input (on the batch's device)."""
    x = batch.get("input")
    if x is None or x.dtype != torch.uint8:
        return batch
    transform = transforms["train" if train else "eval"]
    return {**batch, "input": transform(x, index=batch.get("index"), epoch=epoch)}
