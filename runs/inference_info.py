"""What inference needs from a checkpoint besides the weights: the input shape, the normalisation, the class names.

train.py stores them under the checkpoint's ``inference`` key (``ClassificationModule.on_save_checkpoint``):

    input_shape   one input without the batch axis as the net saw it in evaluation: [C, H, W] or [C, T, H, W]
    mean, std     the per-channel normalisation of the eval preprocessing (0-1 pixel units)
    class_names   the training data's class names, in label order

so eval.py, extract.py, export.py and predict.py need no ``data.image_size`` / ``input_shape`` for, e.g., a
CIFAR-10 checkpoint, and predict.py prints names rather than indices. Checkpoints written before the key
existed still load: each value falls back to the stored data config (``image_size`` / ``crop_size`` /
``num_frames``, ``mean`` / ``std``) and the class names to the label numbers, with a message saying which.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INFERENCE_KEY = "inference"


def inference_record(
    *,
    input_shape: Sequence[int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    class_names: Sequence[str] | None,
) -> dict[str, Any]:
    """The checkpoint's ``inference`` entry, as plain lists (a checkpoint loads with ``weights_only=True``)."""
    return {
        "input_shape": [int(s) for s in input_shape] if input_shape is not None else None,
        "mean": [float(m) for m in mean] if mean is not None else None,
        "std": [float(s) for s in std] if std is not None else None,
        "class_names": [str(c) for c in class_names] if class_names is not None else None,
    }


@dataclass(frozen=True)
class InferenceInfo:
    input_shape: tuple[int, ...] | None  # (C, H, W) or (C, T, H, W); None: unknown
    mean: list[float] | None
    std: list[float] | None
    class_names: list[str]  # the label numbers as strings when the checkpoint names none
    stored: bool  # the checkpoint has an ``inference`` entry (False: every value came from a fallback)

    @property
    def is_video(self) -> bool | None:
        return None if self.input_shape is None else len(self.input_shape) == 4


def inference_info(ckpt: dict[str, Any], path: str | Path) -> InferenceInfo:
    """The checkpoint's inference values; for checkpoints without them (or without one of them), values from its
    stored data config, logged as such."""
    config = ckpt.get("hyper_parameters", {}).get("config", {}) or {}
    data, model = config.get("data") or {}, config.get("model") or {}
    stored = ckpt.get(INFERENCE_KEY)
    record = stored if isinstance(stored, dict) else {}
    missing = []

    shape = record.get("input_shape")
    if shape is None:
        shape = shape_from_data_config(data, model)
        missing.append(f"input_shape (from its data config: {list(shape) if shape else 'none'})")
    mean, std = record.get("mean"), record.get("std")
    if mean is None or std is None:
        mean, std = data.get("mean"), data.get("std")
        missing.append(f"mean/std (from its data config: {mean}/{std})")
    names = record.get("class_names")
    if names is None:
        num_classes = model.get("num_classes")
        names = [str(i) for i in range(int(num_classes))] if num_classes is not None else []
        missing.append("class_names (the label numbers are used)")
    if missing:
        log.info(
            "%s stores no %s; written before checkpoints recorded them, or by another tool",
            path,
            "; no ".join(missing),
        )
    return InferenceInfo(
        input_shape=tuple(int(s) for s in shape) if shape else None,
        mean=[float(m) for m in mean] if mean is not None else None,
        std=[float(s) for s in std] if std is not None else None,
        class_names=[str(n) for n in names],
        stored=bool(record),
    )


def shape_from_data_config(data: dict[str, Any], model: dict[str, Any]) -> tuple[int, ...] | None:
    """``(C, H, W)`` or ``(C, T, H, W)`` as far as a data config names it (``num_frames`` and ``crop_size`` of
    videos, ``image_size`` or ``crop_size`` of images); None when it names no size (CIFAR-10: 32x32 by nature)."""
    channels = int((model.get("backbone") or {}).get("in_chans", 3))
    size = data.get("image_size") or data.get("crop_size")
    if size is None:
        return None
    if data.get("num_frames"):
        return channels, int(data["num_frames"]), int(size), int(size)
    return channels, int(size), int(size)
