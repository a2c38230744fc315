"""Augmentation pipelines: albumentations transforms from the ``augment`` config, then normalisation.

``Pipeline`` maps an image ``(H, W, C)`` uint8 array to a float tensor ``(C, H, W)`` normalised by the
dataset's mean and std, and a clip ``(T, H, W, C)`` to ``(C, T, H, W)`` with one draw of the random
parameters shared by all frames (same crop, same flip), so that motion stays coherent.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch import Tensor


class Pipeline:
    def __init__(self, *, transforms: Sequence[A.BasicTransform] = (), mean: Sequence[float], std: Sequence[float]):
        self.compose = A.Compose(list(transforms))
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)

    def __call__(self, array: np.ndarray) -> Tensor:
        if array.ndim == 3:  # (H, W, C)
            out = self.compose(image=array)["image"]
            return torch.from_numpy(self._normalize(out)).permute(2, 0, 1).contiguous()  # (C, H, W)
        if array.ndim == 4:  # (T, H, W, C): albumentations applies one parameter draw to all frames
            out = self.compose(images=array)["images"]
            return torch.from_numpy(self._normalize(np.asarray(out))).permute(3, 0, 1, 2).contiguous()  # (C, T, H, W)
        raise ValueError(f"expected an image (H, W, C) or a clip (T, H, W, C); got shape {array.shape}")

    def _normalize(self, array: np.ndarray) -> np.ndarray:
        return (array.astype(np.float32) - self.mean) * self.inv_std

    def __repr__(self) -> str:
        return f"Pipeline({self.compose.transforms})"
