"""Augmentation pipelines: albumentations transforms from the ``augment`` config, then normalisation.

``Pipeline`` maps an image ``(H, W, C)`` uint8 array to a float tensor ``(C, H, W)`` normalised by the
dataset's mean and std, and a clip ``(T, H, W, C)`` to ``(C, T, H, W)`` with one draw of the random
parameters shared by all frames (same crop, same flip, same colour change), so that motion stays coherent:
albumentations applies a ``Compose`` called with ``images=`` to every frame with one parameter draw.

Transforms are given as a mapping ``name -> transform`` (the YAML form: presets extend each other and the
command line adds, changes or removes one by name) or as a list; ``None`` entries are skipped. They are
checked when the pipeline is built, so a misspelt argument fails before training with the transform named.

Randomness: albumentations keeps its own generators, untouched by ``seed_everything``. The pipeline seeds
them from ``torch.initial_seed()`` the first time it runs in a process: the run seed in the main process,
and in each DataLoader worker the per-worker seed torch derives from the loader's seeded generator. So a
run's augmentations are reproducible under ``seed`` and differ between workers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence

import albumentations as A
import numpy as np
import torch
from torch import Tensor

# Floor of per-sample std (uint8 units): a flat black clip stays finite instead of blowing sensor noise up.
PER_SAMPLE_EPS = 1.0
# They would undo or repeat what Pipeline does itself after the transforms.
FORBIDDEN = ("Normalize", "ToTensorV2", "ToFloat", "FromFloat")


class Pipeline:
    def __init__(
        self,
        *,
        transforms: Mapping[str, A.BasicTransform | None] | Sequence[A.BasicTransform | None] = (),
        mean: Sequence[float],
        std: Sequence[float],
        alternate_flip: bool = False,
        per_sample_norm: bool = False,
    ):
        named = dict(transforms.items()) if isinstance(transforms, Mapping) else dict(enumerate(transforms))
        named = {str(k): t for k, t in named.items() if t is not None}
        for name, t in named.items():
            check_transform(name, t)
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"augment: mean={list(mean)} and std={list(std)} must have one positive std per channel")
        # airbench's alternating flip: each image flipped in every other epoch (a random half of them in the
        # even ones) instead of a fresh coin per epoch. It needs the epoch and the image's index: only the
        # whole-batch path of data.in_memory=true has them (data/in_memory.py).
        self.alternate_flip = bool(alternate_flip)
        if self.alternate_flip and not any(type(t).__name__ == "HorizontalFlip" for t in named.values()):
            raise ValueError("augment: alternate_flip=true needs a HorizontalFlip transform in the same pipeline")
        # Each image or clip standardised by its own per-channel mean and std instead of the dataset's: a dark
        # clip and a bright one reach the net at one contrast (low-light video; mean/std then go unused).
        self.per_sample_norm = bool(per_sample_norm)
        self.names = list(named)
        self.compose = A.Compose(list(named.values()))
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)
        self._seed: int | None = None

    def __call__(self, array: np.ndarray) -> Tensor:
        if self.alternate_flip:
            raise RuntimeError("augment: alternate_flip=true works on whole batches only: set data.in_memory=true")
        self._seed_once_per_process()
        if array.ndim == 3:  # (H, W, C)
            return torch.from_numpy(self._normalize(self.compose(image=array)["image"]))  # (C, H, W)
        if array.ndim == 4:  # (T, H, W, C): one parameter draw for all frames
            return torch.from_numpy(self._normalize(np.asarray(self.compose(images=array)["images"])))  # (C, T, H, W)
        raise ValueError(f"expected an image (H, W, C) or a clip (T, H, W, C); got shape {array.shape}")

    def _seed_once_per_process(self) -> None:
        seed = torch.initial_seed()
        if seed != self._seed:
            self._seed = seed
            # One shared stream for all transforms: seeding each with the same number would correlate them.
            self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def _normalize(self, array: np.ndarray) -> np.ndarray:
        """``(..., C)`` -> normalised float32 ``(C, ...)``, contiguous. Channels go first in the same numpy pass: a
        torch copy per sample would run torch's intra-op threads, which on busy cores cost more than the copy
        (bench.loading --video)."""
        if array.shape[-1] != len(self.mean):
            raise ValueError(
                f"augment: the transforms produced {array.shape[-1]} channels but data.mean has {len(self.mean)}"
            )
        channels_first = np.moveaxis(array, -1, 0)  # a view
        if self.per_sample_norm:
            axes = tuple(range(1, array.ndim))  # all but channels: (H, W) or (T, H, W)
            x = np.ascontiguousarray(channels_first, dtype=np.float32)
            mean, std = x.mean(axis=axes, keepdims=True), x.std(axis=axes, keepdims=True)
            return (x - mean) / np.maximum(std, PER_SAMPLE_EPS)
        per_channel = (-1,) + (1,) * (array.ndim - 1)
        out = np.empty(channels_first.shape, np.float32)
        np.subtract(channels_first, self.mean.reshape(per_channel), out=out)
        out *= self.inv_std.reshape(per_channel)
        return out

    def __repr__(self) -> str:
        return f"Pipeline({dict(zip(self.names, self.compose.transforms, strict=True))})"


def walk(transform: A.BasicTransform | A.BaseCompose) -> Iterator[A.BasicTransform]:
    """Every leaf transform, inside ``OneOf`` / ``SomeOf`` / ``RandAugment`` too."""
    if isinstance(transform, A.BaseCompose):
        for t in transform.transforms:
            yield from walk(t)
    else:
        yield transform


def check_transform(name: str, transform: object) -> None:
    """Build-time checks that albumentations leaves to warnings (unknown arguments) or to the first sample."""
    if not isinstance(transform, A.BasicTransform | A.BaseCompose):
        raise TypeError(
            f"augment transform {name!r} is a {type(transform).__qualname__}, "
            "not an albumentations transform; "
            "give `_target_: albumentations.<Name>` (or a class deriving from one)"
        )
    for leaf in walk(transform):
        kind = type(leaf).__name__
        invalid = getattr(leaf, "invalid_args", None)
        if invalid:
            valid = sorted(leaf.get_transform_init_args_names())
            raise ValueError(
                f"augment transform {name!r} ({kind}): argument(s) {invalid} are not valid for {kind}; "
                f"valid arguments: {valid}"
            )
        if kind in FORBIDDEN:
            raise ValueError(
                f"augment transform {name!r} is {kind}: the pipeline converts to float and normalises by "
                "data.mean / data.std itself after the transforms; remove it"
            )
