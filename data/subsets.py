"""Class subsets and few-shot training sets (``data.classes``, ``data.train_per_class``), for transfer learning:
pretrain on some classes, fine-tune on the others from a few labelled images each."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_classes(classes: Sequence[int] | None, names: Sequence[str]) -> list[int] | None:
    """``classes`` as a list of distinct class indices of a dataset whose classes are ``names``."""
    if classes is None:
        return None
    classes = [int(c) for c in classes]
    if any(c not in range(len(names)) for c in classes) or len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"data.classes={classes} must be distinct class indices in 0..{len(names) - 1}: {list(names)}")
    return classes


def check_per_class(train_per_class: int | None) -> int | None:
    if train_per_class is not None and int(train_per_class) < 1:
        raise ValueError(f"data.train_per_class={train_per_class} must be a positive count (or null for all)")
    return int(train_per_class) if train_per_class is not None else None


def keep_classes(images: np.ndarray, targets: np.ndarray, classes: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The samples of ``classes`` only, relabelled 0..k-1 in the order given."""
    if classes is None:
        return images, targets
    keep = np.isin(targets, classes)
    relabel = np.full(int(targets.max()) + 1, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    return images[keep], relabel[targets[keep]]


def few_per_class(
    idx: np.ndarray, targets: np.ndarray, per_class: int, *, seed: int, class_names: Sequence[str]
) -> np.ndarray:
    """``per_class`` indices of each class drawn (with ``seed``) from ``idx`` (whose labels are ``targets``)."""
    rng = np.random.default_rng(seed)
    picked = []
    for c, name in enumerate(class_names):
        of_class = idx[targets == c]
        if len(of_class) < per_class:
            raise ValueError(
                f"data.train_per_class={per_class} but class {name} has only {len(of_class)} training images"
            )
        picked.append(rng.choice(of_class, per_class, replace=False))
    return np.sort(np.concatenate(picked))
