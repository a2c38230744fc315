"""PNG figures of a run: learning curves, learning rates, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history: Sequence[dict], out_dir: Path) -> list[Path]:
    """One PNG per metric family (loss, acc, lr) against epoch; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    families = {
        "loss": lambda k: k.endswith("loss") or "loss_" in k,
        "acc": lambda k: "/acc" in k,
        "lr": lambda k: k.startswith("lr"),
    }
    written = []
    for name, wanted in families.items():
        keys = sorted({k for row in history for k in row if wanted(k) and k != "epoch"})
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            pts = [(row["epoch"], row[key]) for row in history if key in row]
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        # Fixed margins: tight_layout measures every text box and costs more than drawing the figure.
        fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.96)
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class; a cell is the fraction of that class predicted as the
    column's class), with the fractions in the cells when it is small (up to 20 classes), and the counts
    below them up to 10 classes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(matrix)
    norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = min(12, 2 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}\n{int(matrix[i, j])}" if n <= 10 else f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("fraction of each true class (count below)" if n <= 10 else "fraction of each true class", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_finetune(history: Sequence[dict], path: Path) -> Path:
    """Fine-tuning schedule: lr of each parameter group (top) and which groups trained in each epoch (bottom)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    groups = list(dict.fromkeys(k.split("/", 1)[1] for row in history for k in row if k.startswith("trainable/")))
    epochs = [row["epoch"] for row in history]
    fig, (ax_lr, ax_on) = plt.subplots(
        2, 1, figsize=(7, 3 + 0.3 * len(groups)), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    for g in groups:
        pts = [(row["epoch"], row[f"lr/{g}"]) for row in history if f"lr/{g}" in row]
        if pts:
            ax_lr.plot(*zip(*pts, strict=True), marker="o", ms=3, label=g)
    ax_lr.set_ylabel("lr at epoch start")
    ax_lr.grid(alpha=0.3)
    ax_lr.legend(fontsize=7, ncol=2)
    on = np.array([[row.get(f"trainable/{g}", 0.0) for row in history] for g in groups])  # (groups, epochs)
    ax_on.imshow(
        on,
        aspect="auto",
        cmap="Greens",
        vmin=0,
        vmax=1,
        interpolation="nearest",
        extent=(min(epochs) - 0.5, max(epochs) + 0.5, len(groups) - 0.5, -0.5),
    )
    ax_on.set_yticks(range(len(groups)), groups, fontsize=7)
    ax_on.set_xlabel("epoch")
    ax_on.set_title("trainable (green)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
