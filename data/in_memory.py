"""Whole-set-in-memory loading with whole-batch augmentation on the training device (``data.in_memory``).

For datasets that fit in memory (digits, CIFAR-10) the per-sample path (index one image, run the
albumentations ``Pipeline`` on it, collate 128 small tensors, copy floats to the device) costs more than a
small model's training step. This path instead:

    uint8 tensor (N, C, H, W) --index a whole batch--> uint8 (B, C, H, W) --to device (4x fewer bytes)-->
    BatchAugment: normalise, pad, random crop + flip, all samples at once --> float (B, C, H, W)

``InMemoryDataset.__getitems__`` returns the whole batch (torch's DataLoader calls it with the sampler's
indices of one batch), so samplers, DDP sharding and resumable loaders work unchanged. The datamodule
applies ``BatchAugment`` after the batch reached its device (``on_after_batch_transfer``).

Only the geometric transforms of the CIFAR recipe translate: ``Pad`` / ``PadIfNeeded`` (reflect or
constant), ``RandomCrop`` and ``HorizontalFlip``; ``batch_augment_from`` raises for any other transform and
says to set ``data.in_memory=false`` (or ``auto``, which falls back to the per-sample path).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

IN_MEMORY_MODES = (True, False, "auto")
# cv2 border modes albumentations uses, and the torch padding mode that matches each.
BORDER_MODES = {
    0: "constant",
    4: "reflect",
}  # BORDER_CONSTANT, BORDER_REFLECT_101 (torch "reflect" excludes the edge)


class InMemoryDataset(Dataset):
    """Images as one uint8 tensor ``(N, C, H, W)`` and int64 targets; fetched a whole batch at a time."""

    def __init__(self, images: np.ndarray, targets: np.ndarray) -> None:
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W, C); got {images.dtype} {images.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input": self.images[i], "target": self.targets[i], "index": i}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return {
            "input": self.images[idx],
            "target": self.targets[idx],
            "index": idx,
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
        x = images.float()
        if any(self.pad):
            # Pad in pixel units: a constant fill is a pixel value.
            x = F.pad(x, self.pad, mode=self.pad_mode, value=self.pad_value if self.pad_mode == "constant" else None)
        if self.crop is not None or self.flip_p > 0:
            flip = None
            if self.alternate_flip and self.flip_p > 0:
                if index is None:
                    raise ValueError("alternate_flip needs the batch's image indices (batch['index'])")
                flip = self.base_flips(index.cpu()) ^ (epoch % 2 == 1)
            x = self._crop_flip(x, generator, flip)
        # Normalising commutes with crop and flip, so it runs last, on the (smaller) cropped batch, in place.
        if self.shift.device != x.device:
            self.shift, self.scale = self.shift.to(x.device), self.scale.to(x.device)
        return x.sub_(self.shift).mul_(self.scale)

    def _crop_flip(self, x: Tensor, generator: torch.Generator | None, flip: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        ch, cw = self.crop or (h, w)
        if ch > h or cw > w:
            raise ValueError(f"crop {ch}x{cw} is larger than the (padded) image {h}x{w}")
        dev = x.device
        # Draws on the CPU generator (seeded by seed_everything), then moved: same draws on any device.
        top = torch.randint(0, h - ch + 1, (b,), generator=generator)
        left = torch.randint(0, w - cw + 1, (b,), generator=generator)
        if flip is None:
            flip = torch.rand(b, generator=generator) < self.flip_p
        rows = (top[:, None] + torch.arange(ch)).to(dev)  # (B, ch)
        cols = torch.arange(cw).expand(b, cw)
        cols = torch.where(flip[:, None], cw - 1 - cols, cols) + left[:, None]
        cols = cols.to(dev)  # (B, cw)
        batch = torch.arange(b, device=dev)[:, None, None]
        out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, ch, cw, C)
        return out.permute(0, 3, 1, 2).contiguous()  # (B, C, ch, cw)


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
    splits: tuple[Dataset, ...], *, mode: bool | str, train_transform: Any, eval_transform: Any, seed: int = 0
) -> tuple[tuple[Dataset, ...], dict[str, BatchAugment] | None]:
    """``(train, val, test)`` image-array splits -> in-memory splits and their ``{"train", "eval"}`` batch
    transforms; the splits unchanged (and None) when ``mode`` is false, or ``"auto"`` and the datasets are
    not uint8 arrays or the augment pipelines have no whole-batch equivalent."""
    if mode not in IN_MEMORY_MODES:
        raise ValueError(f"data.in_memory={mode!r} must be true, false or auto")
    if getattr(train_transform, "alternate_flip", False) and mode is not True:
        raise ValueError(
            f"augment.train.alternate_flip=true works on whole batches only; data.in_memory={mode}: "
            f"set data.in_memory=true"
        )
    if mode is False:
        return splits, None
    arrays = [getattr(d, "images", None) for d in splits]
    if not all(isinstance(a, np.ndarray) and a.ndim == 4 and a.dtype == np.uint8 for a in arrays):
        if mode == "auto":
            return splits, None
        raise ValueError(
            f"data.in_memory=true needs datasets held as uint8 image arrays (digits, cifar10); got "
            f"{[type(d).__name__ for d in splits]}. Set data.in_memory=false"
        )
    size = tuple(arrays[0].shape[1:3])
    try:
        transforms = {
            "train": batch_augment_from(train_transform, image_size=size, seed=seed),
            "eval": batch_augment_from(eval_transform, image_size=size),
        }
    except ValueError:
        if mode == "auto":
            return splits, None
        raise
    return tuple(InMemoryDataset(d.images, d.targets) for d in splits), transforms


def augment_batch(
    batch: dict[str, Any], transforms: dict[str, BatchAugment], *, train: bool, epoch: int = 0
) -> dict[str, Any]:
    """Turns a batch's uint8 ``input`` into the augmented, normalised float input (on the batch's device)."""
    x = batch.get("input")
    if x is None or x.dtype != torch.uint8:
        return batch
    transform = transforms["train" if train else "eval"]
    return {**batch, "input": transform(x, index=batch.get("index"), epoch=epoch)}
