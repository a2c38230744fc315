"""Score a feature set by k-NN classification: ``python -m features.knn features=<dir> [k=20] [folds=5]``.

Reads ``<dir>/features.npy`` and the ``label`` column of ``<dir>/index.csv`` (rows without a label, or with
NaN features from unreadable files, are left out), then cross-validates a cosine k-NN classifier: stratified
folds grouped by ``path``, so that the clips or boxes of one file never sit on both sides of a split. Prints
the mean accuracy and writes ``<dir>/knn.json``. No classifier is trained, so feature sets compare directly.

Vote: ``weighted`` (each neighbour votes exp(cosine / temperature), as in DINO's k-NN evaluation) or
``majority`` (one vote each; ties go to the nearest neighbour's class among the tied ones).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from sklearn.model_selection import StratifiedGroupKFold

from features.modes import stored_mode

DEFAULTS = {"features": "???", "k": 20, "folds": 5, "vote": "weighted", "temperature": 0.07, "seed": 0}
VOTES = ("weighted", "majority")


def knn_predict(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    query: torch.Tensor,
    *,
    k: int,
    num_classes: int,
    vote: str = "weighted",
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class of each query row by its k nearest (cosine) training rows. Features are (N, D), labels int64."""
    if vote not in VOTES:
        raise ValueError(f"vote={vote!r} is unknown; choose one of {VOTES}")
    k = min(k, len(train))
    train = F.normalize(train.float(), dim=1)
    preds = []
    for q in F.normalize(query.float(), dim=1).split(chunk):
        sims, idx = (q @ train.T).topk(k, dim=1)  # (Q, k), nearest first
        neighbours = train_labels[idx]  # (Q, k)
        weights = (sims / temperature).exp() if vote == "weighted" else torch.ones_like(sims)
        # Ties in a majority vote go to the nearest: a tiny decreasing bonus by rank.
        weights = weights + torch.linspace(1e-6, 0, k)[None] * (vote == "majority")
        scores = torch.zeros(len(q), num_classes).scatter_add_(1, neighbours, weights)  # (Q, num_classes)
        preds.append(scores.argmax(1))
    return torch.cat(preds)


def knn_accuracy(
    features: np.ndarray,
    labels: list[str] | np.ndarray,
    *,
    groups: list[str] | None = None,
    k: int = 20,
    folds: int = 5,
    vote: str = "weighted",
    temperature: float = 0.07,
    seed: int = 0,
) -> dict[str, Any]:
    """Cross-validated k-NN accuracy of ``features`` (N, D) for ``labels`` (N,); a group stays in one fold."""
    labels = np.asarray(labels)
    names, y = np.unique(labels, return_inverse=True)
    if len(names) < 2:
        raise ValueError(f"k-NN accuracy needs at least two classes; the labelled rows have {list(names)}")
    counts = np.bincount(y)
    folds = min(folds, int(counts.min()))
    if folds < 2:
        rare = [str(n) for n, c in zip(names, counts, strict=True) if c < 2]
        raise ValueError(
            f"classes {rare[:5]} have a single labelled row; cross-validation needs at least two per class"
        )
    groups = np.asarray(groups) if groups is not None else np.arange(len(y))
    x, t = torch.from_numpy(np.asarray(features, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    accs = []
    for train_idx, test_idx in splitter.split(np.zeros(len(y)), y, groups):
        pred = knn_predict(
            x[train_idx],
            t[train_idx],
            x[test_idx],
            k=k,
            num_classes=len(names),
            vote=vote,
            temperature=temperature,
        )
        accs.append(float((pred == t[test_idx]).float().mean()))
    return {
        "knn/acc": float(np.mean(accs)),
        "knn/acc_std": float(np.std(accs)),
        "knn/fold_acc": accs,
        "knn/chance": float(counts.max() / counts.sum()),
        "rows": int(len(y)),
        "classes": [str(n) for n in names],
        "k": k,
        "folds": folds,
        "vote": vote,
        "temperature": temperature,
        "seed": seed,
    }


def load_feature_set(folder: str | Path) -> tuple[np.ndarray, list[str], list[str], int]:
    """Features, labels and paths of an extraction folder's labelled, readable rows; rows left out.

    Read through the extraction's mode (features/modes.py): a dense one (one ``<video>.npy`` per video) reads as
    its windows in index order.
    """
    folder = Path(folder)
    if not (folder / "index.csv").is_file():
        raise FileNotFoundError(f"{folder / 'index.csv'} not found; features= must be an output folder of extract.py")
    with (folder / "index.csv").open(newline="") as f:
        index = list(csv.DictReader(f))
    features = stored_mode(folder).read(folder, index)
    if len(index) != len(features):
        raise ValueError(f"{folder}: index.csv has {len(index)} rows but the features {len(features)}")
    finite = np.isfinite(np.asarray(features, dtype=np.float32)).all(1)
    keep = [i for i, r in enumerate(index) if r.get("label") and finite[i]]
    if not keep:
        raise ValueError(f"{folder}: no labelled rows (index.csv's label column is empty: class folders give labels)")
    rows = np.asarray(keep)
    return (
        np.asarray(features[rows], dtype=np.float32),
        [index[i]["label"] for i in keep],
        [index[i]["path"] for i in keep],
        len(index) - len(keep),
    )


def main(argv: list[str]) -> dict[str, Any]:
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(argv))
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise SystemExit(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    if OmegaConf.is_missing(cfg, "features"):
        raise SystemExit("usage: python -m features.knn features=<extract output dir> [k=20] [folds=5] [vote=weighted]")
    features, labels, paths, left_out = load_feature_set(cfg.features)
    result = knn_accuracy(
        features,
        labels,
        groups=paths,
        k=cfg.k,
        folds=cfg.folds,
        vote=cfg.vote,
        temperature=cfg.temperature,
        seed=cfg.seed,
    )
    result["rows_left_out"] = left_out
    out = Path(cfg.features) / "knn.json"
    out.write_text(json.dumps(result, indent=1))
    print(
        f"k-NN accuracy {result['knn/acc']:.4f} +- {result['knn/acc_std']:.4f} "
        f"({result['folds']}-fold, k={result['k']}, "
        f"{result['rows']} rows, {len(result['classes'])} classes, "
        f"chance {result['knn/chance']:.4f}) -> {out}"
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
