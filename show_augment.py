"""See an augmentation pipeline: ``python -m show_augment augment=<preset> data=<dataset>``.

Loads raw samples (uint8, before any transform) of the chosen split, runs the ``augment.<split>`` pipeline
on each several times, undoes the normalisation and writes one PNG grid: for images a row per sample
(original, then the draws); for clips a block per sample with a row per draw (the original first) and a
column per frame, so one can check that every frame of a clip got the same crop, flip and colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig


def raw(array: np.ndarray) -> torch.Tensor:
    """Stands in for the transform so that the dataset hands out its uint8 arrays untouched."""
    return torch.from_numpy(np.ascontiguousarray(array))


def to_uint8(x: torch.Tensor, mean, std) -> np.ndarray:
    """A pipeline output ``(C, [T,] H, W)`` back to displayable ``([T,] H, W, C)`` uint8."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    pixels = x * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
    pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.movedim(0, -1).numpy()


def rows_for(original: np.ndarray, draws: list[np.ndarray], num_frames: int) -> list[list[np.ndarray]]:
    if original.ndim == 3:  # image: one row, original then the draws
        return [[original, *draws]]
    frames = np.linspace(0, len(original) - 1, min(num_frames, len(original))).round().astype(int)
    return [[clip[t] for t in frames] for clip in (original, *draws)]


def show(cfg: DictConfig) -> Path:
    """Write the grid for ``cfg`` (conf/show_augment.yaml) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hydra.utils import instantiate

    if cfg.split not in ("train", "eval"):
        raise ValueError(f"split={cfg.split!r} must be train or eval")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    pipeline = instantiate(cfg.augment[cfg.split])
    # Per-sample loading: the in-memory path (data/in_memory.py) would hand out batches.
    per_sample = {"in_memory": False} if "in_memory" in cfg.data else {}
    datamodule = instantiate(cfg.data, train_transform=raw, eval_transform=raw, **per_sample)
    datamodule.check()
    datamodule.setup("fit")
    dataset = datamodule.train_set if cfg.split == "train" else datamodule.val_set
    picks = np.random.default_rng(cfg.seed).choice(len(dataset), size=min(cfg.num_samples, len(dataset)), replace=False)

    rows, labels = [], []
    for i in picks:
        sample = dataset[int(i)]
        if sample is None:  # an unreadable file the dataset skips
            continue
        original = sample["input"].numpy()
        draws = [to_uint8(pipeline(original), datamodule.mean, datamodule.std) for _ in range(cfg.num_draws)]
        block = rows_for(original, draws, cfg.num_frames)
        name = datamodule.class_names[sample["target"]]
        labels += [f"{name}: original"] + [f"{name}: draw {d + 1}" for d in range(len(block) - 1)]
        rows += block
    if not rows:
        raise RuntimeError("no readable samples to show")

    is_clip = len(rows) > len(labels) or original.ndim == 4
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.6 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                ax.imshow(row[c])
            if r == 0:
                title = f"frame {c + 1}" if is_clip else ("original" if c == 0 else f"draw {c}")
                ax.set_title(title, fontsize=7)
        if is_clip:
            axes[r][0].text(-0.1, 0.5, labels[r], fontsize=7, ha="right", va="center", transform=axes[r][0].transAxes)
        else:
            axes[r][0].text(
                -0.1,
                0.5,
                labels[r].split(":")[0],
                fontsize=8,
                ha="right",
                va="center",
                transform=axes[r][0].transAxes,
            )
    fig.suptitle(f"{cfg.split} pipeline: {pipeline.names or 'normalisation only'}", fontsize=8)
    path = Path(cfg.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    import hydra

    import runs.resolvers  # noqa: F401  (${visfeat.root:} in conf/paths)

    @hydra.main(version_base="1.3", config_path="conf", config_name="show_augment")
    def main(cfg: DictConfig) -> None:
        print(show(cfg))

    main()
