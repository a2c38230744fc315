"""Extracting from a configured dataset: ``extract.py data=<group> [data.<key>=...] split=train|val|test``.

The DataModule of ``data=<group>`` lists the split, decodes each sample and applies its eval transform (the
checkpoint's ``augment.eval`` when the net comes from one, else normalisation by ``data.mean`` / ``data.std``,
as ``augment=none``), so any dataset format a DataModule reads for training is also extractable. Labels are
the DataModule's class names. The train split is read with the eval transform too; a video DataModule
samples its train clips as in training (one clip per video), and its val/test splits give their
``test_clips`` views per video as in testing.

    images      item = sample            -> 1 row:  path (relative to data.root; ``<split>/<i>`` for arrays), label
    videos      item = (video, view)     -> 1 row:  path, label, clip (the view), video-major as in testing
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from data.base import dataset_files, dataset_targets
from data.transforms import Pipeline
from features.plans import READ_ERRORS, Plan
from nets.stored import named_parameters

SPLITS = ("train", "val", "test")
# Keys of extract.yaml's own `data:` node (preprocessing of raw inputs) that a DataModule may not take.
RAW_INPUT_KEYS = (
    "image_size",
    "mean",
    "std",
    "num_frames",
    "frame_stride",
    "target_fps",
    "short_side",
    "crop_size",
    "test_clips",
)


def is_dataset(data_cfg: DictConfig) -> bool:
    """Whether ``data`` is a dataset config (``data=<group>``) rather than preprocessing of a raw input."""
    return data_cfg.get("_target_") is not None


def split_plan(data_cfg: DictConfig, split: str, stored: dict[str, Any]) -> tuple[str, Plan, int, dict[str, Any]]:
    """``(kind, plan, views per file, settings)`` of ``split`` of the DataModule ``data_cfg`` builds."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; choose one of {SPLITS}")
    ctor = datamodule_config(data_cfg)
    transform = eval_transform(ctor, stored)
    datamodule = instantiate(ctor, train_transform=transform, eval_transform=transform)
    datamodule.check()
    dataset = datamodule.list_splits()[SPLITS.index(split)]
    if len(dataset) == 0:
        raise ValueError(f"split={split} of {ctor['_target_']} is empty; choose another split")
    names = datamodule.class_names
    labels = [names[t] for t in dataset_targets(dataset)]
    files = dataset_files(dataset)
    root = getattr(datamodule, "root", None)
    if files is None:
        paths, views = [f"{split}/{i}" for i in range(len(dataset))], 1
    else:
        views = len(dataset) // len(files)
        paths = [relative(path, root) for path, _ in files for _ in range(views)]
    index = [{"path": p, "label": label} for p, label in zip(paths, labels, strict=True)]
    if views > 1:
        for i, row in enumerate(index):
            row["clip"] = i % views
    items = SplitItems(dataset, paths)
    shape = tuple(first_sample(items)["input"].shape)
    kind = "videos" if len(shape) == 4 else "images"  # (C, T, H, W) or (C, H, W)
    columns = ["row", "path", "label", *(["clip"] if views > 1 else [])]
    plan = Plan(columns, index, np.arange(len(index) + 1), items, shape)
    settings = {
        "input": None,
        "data": ctor,
        "split": split,
        "kind": kind,
        "preprocessing": {"test_clips": views, "transform": repr(transform)},  # test_clips: views per video
    }
    return kind, plan, views, settings


def datamodule_config(data_cfg: DictConfig) -> dict[str, Any]:
    """The DataModule's constructor arguments: ``data`` without extract.yaml's raw-input keys it does not take
    (those are left at null there; one that is set and not taken is an error naming it)."""
    ctor = OmegaConf.to_container(data_cfg, resolve=True)
    taken = named_parameters(get_class(ctor["_target_"]))
    for key in RAW_INPUT_KEYS:
        if key in ctor and key not in taken:
            if ctor[key] is not None:
                raise ValueError(
                    f"data.{key}={ctor[key]} is not an option of {ctor['_target_']} (data=<group> reads the "
                    f"dataset with its own preprocessing); drop it, or give input=<folder> for raw files"
                )
            del ctor[key]
    return ctor


def eval_transform(ctor: dict[str, Any], stored: dict[str, Any]) -> Any:
    """The checkpoint's ``augment.eval`` (what the net was evaluated with), else the data's normalisation."""
    eval_cfg = stored.get("augment", {}).get("eval")
    if eval_cfg is not None:
        return instantiate(eval_cfg)
    if ctor.get("mean") is None or ctor.get("std") is None:
        raise ValueError(f"{ctor['_target_']}: set data.mean=[...] and data.std=[...] (per channel, in [0, 1] units)")
    return Pipeline(mean=list(ctor["mean"]), std=list(ctor["std"]))


def relative(path: Any, root: Any) -> str:
    if root is None:
        return str(path)
    rel = os.path.relpath(path, root)
    return str(path) if rel.startswith("..") else rel


def first_sample(items: SplitItems) -> dict[str, Any]:
    """The first sample that decodes (its shape sizes the stores before the loop)."""
    errors = []
    for i in range(min(len(items), 8)):
        try:
            return items[i]
        except READ_ERRORS as e:
            errors.append(f"{items.paths[i]}: {e}")
    raise ValueError(f"none of the first samples decodes: {'; '.join(errors)}")


class SplitItems(Dataset):
    """A split's samples as extraction items: ``{"input": ...}``; a sample the DataModule skips (``None``)
    raises, so it lands in failures.csv (see features/plans.Guarded)."""

    def __init__(self, dataset: Dataset, paths: list[str]) -> None:
        self.dataset, self.paths = dataset, paths

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = self.dataset[i]
        if sample is None:
            raise OSError(f"{self.paths[i]} could not be read (skipped by the DataModule)")
        return {"input": sample["input"]}
