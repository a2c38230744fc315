"""Report card of feature stores: ``python -m features.report features=<dir>|[<dir>,...] output=<dir>``.

Flow: each ``features`` entry is an extraction folder (features.npy or a dense one) or a multi-layer
extraction (``layers=[...]``: its layer stores, in extraction order) -> labelled, readable rows ->
[``baseline=pixels``: the raw pixels of the same images as one more row] -> per store, with the same
stratified folds grouped by ``path`` (the clips, boxes or windows of one file never straddle a split):

    k-NN accuracy      cosine, weighted votes (features.knn), for every k in ``k``
    linear probe       scikit-learn: StandardScaler + LogisticRegression, its C chosen by GridSearchCV
                       (``inner_folds`` stratified folds of the training part) nested in cross_val_score
    mAP@R              retrieval: each row queries the rows of other files; R = the number of those with its
                       label; mean over queries of (1/R) * sum of precision@i at the hits among the first R
    per-class          accuracy of each class under k-NN with the first k (out-of-fold predictions)

-> ``output/report.md`` (tables), ``report.json`` (every number), ``scatter.png`` (2-D PCA, or UMAP when
umap-learn is installed, coloured by label, one panel per store), ``per_class.png`` and, for multi-layer
extractions, ``depth.png`` (k-NN accuracy against layer).

Progress: a bar over the stores naming the figure being computed (``progress=false``: none), and one line
per store with its figures and seconds. The fits run with ``threads`` (1) BLAS/OpenMP threads: the probe's
solver makes thousands of small matrix products, and threads handing them over cost more than they compute
(8x slower with 2 threads on a busy 2-core machine: docs/extract.md).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.image_folder import load_image  # noqa: E402
from features.knn import knn_accuracy, knn_predict, load_feature_set  # noqa: E402
from runs.atomic import atomic_open  # noqa: E402

DEFAULTS = {
    "features": "???",
    "output": "???",
    "k": [1, 5, 20],
    "folds": 5,
    "inner_folds": 3,
    "C": [0.01, 0.1, 1.0, 10.0],
    "max_iter": 1000,
    "temperature": 0.07,
    "seed": 0,
    "baseline": None,
    "projection": "auto",
    "threads": 1,
    "progress": True,
}
BASELINES = (None, "pixels")
PROJECTIONS = ("auto", "pca", "umap")


# --- the figures --------------------------------------------------------------------------------------------


def splitter(folds: int, seed: int) -> StratifiedGroupKFold:
    return StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)


def linear_probe(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    folds: int,
    inner_folds: int,
    Cs: list[float],
    max_iter: int,
    seed: int,
    progress: Callable[[str], None] = lambda stage: None,
) -> dict[str, Any]:
    """Cross-validated accuracy of a logistic regression whose C is chosen inside each training part
    (scikit-learn's ``cross_val_score`` of a ``GridSearchCV``, one outer fold at a time for ``progress``)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    inner = StratifiedKFold(n_splits=inner_folds, shuffle=True, random_state=seed)
    search = GridSearchCV(model, {"logisticregression__C": list(Cs)}, cv=inner)
    scores = []
    for fold, (train, test) in enumerate(splitter(folds, seed).split(x, y, groups)):
        progress(f"linear probe, fold {fold + 1}/{folds}")
        scores += cross_val_score(search, x, y, groups=groups, cv=[(train, test)]).tolist()
    scores = np.asarray(scores)
    return {"probe/acc": float(scores.mean()), "probe/acc_std": float(scores.std()), "probe/fold_acc": scores.tolist()}


def map_at_r(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, chunk: int = 1024) -> float:
    """Mean over queries of AP@R (Musgrave et al., 2020) under cosine similarity; a query's own file is not
    searched, and queries with no relevant row elsewhere are skipped."""
    feats = F.normalize(torch.from_numpy(np.asarray(x, np.float32)), dim=1)
    labels = torch.from_numpy(y.astype(np.int64))
    group_ids = torch.from_numpy(np.unique(groups, return_inverse=True)[1].astype(np.int64))
    scores = []
    for lo in range(0, len(feats), chunk):
        q = slice(lo, lo + chunk)
        sims = feats[q] @ feats.T  # (Q, N)
        same_file = group_ids[q, None] == group_ids[None]  # (Q, N)
        sims = sims.masked_fill(same_file, float("-inf"))
        relevant = (labels[q, None] == labels[None]) & ~same_file  # (Q, N)
        r = relevant.sum(1)  # (Q,)
        r_max = int(r.max()) if len(r) else 0
        if r_max == 0:
            continue
        order = sims.topk(r_max, dim=1).indices  # (Q, Rmax), most similar first
        hits = relevant.gather(1, order).float()  # (Q, Rmax)
        ranks = torch.arange(1, r_max + 1, dtype=torch.float32)
        within = ranks[None] <= r[:, None]  # only the first R ranks count
        precision = hits.cumsum(1) / ranks[None]
        ap = (precision * hits * within).sum(1) / r.clamp_min(1)
        scores.append(ap[r > 0])
    return float(torch.cat(scores).mean()) if scores else float("nan")


def knn_out_of_fold(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, k: int, folds: int, temperature: float, seed: int
) -> np.ndarray:
    """Each row's k-NN prediction from the folds it is not in (the same folds as the accuracies)."""
    pred = np.empty_like(y)
    feats, targets = torch.from_numpy(x), torch.from_numpy(y)
    for train, test in splitter(folds, seed).split(x, y, groups):
        pred[test] = knn_predict(
            feats[train], targets[train], feats[test], k=k, num_classes=int(y.max()) + 1, temperature=temperature
        ).numpy()
    return pred


def score_store(
    x: np.ndarray,
    labels: list[str],
    paths: list[str],
    cfg: Any,
    progress: Callable[[str], None] = lambda stage: None,
) -> dict[str, Any]:
    """Every figure of one store's labelled rows; ``progress(stage)`` is told each one as it starts."""
    names, y = np.unique(np.asarray(labels), return_inverse=True)
    groups = np.asarray(paths)
    counts = np.bincount(y)
    folds = min(cfg.folds, int(counts.min()))
    if folds < 2:
        raise ValueError(f"classes {list(names[counts < 2])} have a single row; cross-validation needs two per class")
    result: dict[str, Any] = {"rows": len(y), "dim": int(x.shape[1]), "classes": names.tolist(), "folds": folds}
    for k in cfg.k:
        progress(f"k-NN k={k}")
        knn = knn_accuracy(x, y, groups=groups, k=k, folds=folds, temperature=cfg.temperature, seed=cfg.seed)
        result[f"knn@{k}/acc"], result[f"knn@{k}/acc_std"] = knn["knn/acc"], knn["knn/acc_std"]
    result["knn/chance"] = float(counts.max() / counts.sum())
    result.update(
        linear_probe(
            x,
            y,
            groups,
            folds=folds,
            inner_folds=min(cfg.inner_folds, folds),
            Cs=list(cfg.C),
            max_iter=cfg.max_iter,
            seed=cfg.seed,
            progress=progress,
        )
    )
    progress("mAP@R")
    result["map@r"] = map_at_r(x, y, groups)
    progress("per-class accuracy")
    pred = knn_out_of_fold(x, y, groups, k=cfg.k[0], folds=folds, temperature=cfg.temperature, seed=cfg.seed)
    result["per_class"] = {str(n): float((pred[y == c] == c).mean()) for c, n in enumerate(names)}
    return result


# --- the stores ---------------------------------------------------------------------------------------------


def is_store(folder: Path) -> bool:
    return (folder / "index.csv").is_file() and (folder / "meta.json").is_file()


def find_stores(entries: list[str]) -> list[dict[str, Any]]:
    """``[{"name", "folder", "group", "depth"}]``: each entry's store, or a multi-layer extraction's layer
    stores in extraction order (group: the entry; depth: the layer's place)."""
    stores = []
    for entry in entries:
        folder = Path(entry)
        if is_store(folder):
            stores.append({"name": folder.name, "folder": folder, "group": None, "depth": None})
            continue
        layers = sorted(p for p in folder.iterdir() if p.is_dir() and is_store(p)) if folder.is_dir() else []
        if not layers:
            raise FileNotFoundError(
                f"{folder}: neither an extraction folder (index.csv + meta.json) nor one with layers"
            )
        order = json.loads((layers[0] / "meta.json").read_text()).get("layers") or [p.name for p in layers]
        layers.sort(key=lambda p: order.index(p.name) if p.name in order else len(order))
        for depth, layer in enumerate(layers):
            stores.append(
                {"name": f"{folder.name}/{layer.name}", "folder": layer, "group": folder.name, "depth": depth}
            )
    names = [s["name"] for s in stores]
    if len(set(names)) != len(names):
        for s in stores:
            s["name"] = str(s["folder"])
    return stores


def pixel_rows(folder: Path, paths: list[str]) -> np.ndarray:
    """Raw pixels (the extraction's image size, in [0, 1]) of the images ``paths`` of the extraction in
    ``folder``, one flattened row each."""
    settings = json.loads((folder / "meta.json").read_text())
    if settings.get("kind") != "images" or settings.get("boxes") is not None:
        raise ValueError(f"baseline=pixels needs a whole-image extraction; {folder} holds {settings.get('kind')} rows")
    if settings.get("input") is None:
        raise ValueError(
            f"baseline=pixels reads the image files of an input=<folder> extraction; {folder} was read through "
            f"data={settings.get('data', {}).get('_target_')}: extract its files with input=<folder> for a baseline"
        )
    root = Path(settings["input"])
    root = root if root.is_dir() else root.parent  # a file list's paths are relative to its folder
    size = settings["preprocessing"]["image_size"]
    return np.stack([load_image(root / p, size).reshape(-1) for p in paths]).astype(np.float32) / 255.0


# --- the output ---------------------------------------------------------------------------------------------


def projection_2d(x: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    x = F.normalize(torch.from_numpy(x), dim=1).numpy()
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError as err:
            if method == "umap":
                raise ImportError(
                    "projection=umap needs umap-learn (pip install umap-learn), or use projection=pca"
                ) from err
        else:
            return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
    return PCA(n_components=2, random_state=seed).fit_transform(x), "PCA"


def save_png(fig: plt.Figure, path: Path) -> Path:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_scatter(rows: list[dict[str, Any]], out: Path, method: str, seed: int) -> Path:
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        xy, name = projection_2d(row["x"], method, seed)
        classes, y = np.unique(row["labels"], return_inverse=True)
        scatter = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10" if len(classes) <= 10 else "tab20", s=6)
        ax.set_title(f"{row['name']} ({name})", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
        if len(classes) <= 20:
            ax.legend(scatter.legend_elements()[0], classes, fontsize=6, markerscale=0.6, loc="best")
    return save_png(fig, out / "scatter.png")


def plot_per_class(rows: list[dict[str, Any]], out: Path) -> Path:
    classes = sorted({c for r in rows for c in r["scores"]["per_class"]})
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(classes) * len(rows)), 4))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        accs = [row["scores"]["per_class"].get(c, np.nan) for c in classes]
        ax.bar(np.arange(len(classes)) + i * width, accs, width, label=row["name"])
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=90 if len(classes) > 20 else 0)
    ax.set_ylabel("k-NN accuracy"), ax.set_ylim(0, 1), ax.legend(fontsize=7)
    return save_png(fig, out / "per_class.png")


def plot_depth(rows: list[dict[str, Any]], out: Path, ks: list[int]) -> Path | None:
    groups = {r["group"] for r in rows if r["group"] is not None}
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for group in sorted(groups):
        layers = sorted((r for r in rows if r["group"] == group), key=lambda r: r["depth"])
        for k in ks:
            ax.plot(
                [r["name"].split("/")[-1] for r in layers],
                [r["scores"][f"knn@{k}/acc"] for r in layers],
                "o-",
                label=f"{group} k={k}",
            )
    ax.set_xlabel("layer"), ax.set_ylabel("k-NN accuracy"), ax.legend(fontsize=7)
    return save_png(fig, out / "depth.png")


def markdown(rows: list[dict[str, Any]], ks: list[int], pngs: list[Path]) -> str:
    head = ["features", "rows", "D", *[f"k-NN k={k}" for k in ks], "linear probe", "mAP@R"]
    lines = ["# Feature report card", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r["scores"]
        cells = [r["name"], str(s["rows"]), str(s["dim"])]
        cells += [f"{s[f'knn@{k}/acc']:.4f} ± {s[f'knn@{k}/acc_std']:.4f}" for k in ks]
        cells += [f"{s['probe/acc']:.4f} ± {s['probe/acc_std']:.4f}", f"{s['map@r']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    s0 = rows[0]["scores"]
    lines += [
        "",
        f"{s0['folds']}-fold cross-validation grouped by file; k-NN: cosine, weighted votes; linear probe: "
        f"StandardScaler + LogisticRegression, C chosen inside each training part; chance {s0['knn/chance']:.4f}.",
        "",
        f"## Per-class accuracy (k-NN, k={ks[0]})",
        "",
    ]
    classes = sorted({c for r in rows for c in r["scores"]["per_class"]})
    lines += ["| class | " + " | ".join(r["name"] for r in rows) + " |", "|" + "---|" * (len(rows) + 1)]
    for c in classes:
        accs = [r["scores"]["per_class"].get(c) for r in rows]
        lines.append(f"| {c} | " + " | ".join("" if a is None else f"{a:.4f}" for a in accs) + " |")
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in pngs]
    return "\n".join(lines) + "\n"


def report(cfg: Any) -> dict[str, Any]:
    entries = (
        list(cfg.features) if OmegaConf.is_list(cfg.features) or isinstance(cfg.features, list) else [cfg.features]
    )
    if cfg.baseline not in BASELINES:
        raise ValueError(f"baseline={cfg.baseline!r} is unknown; choose one of {BASELINES[1:]} (or leave it out)")
    if cfg.projection not in PROJECTIONS:
        raise ValueError(f"projection={cfg.projection!r} is unknown; choose one of {PROJECTIONS}")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for store in find_stores(entries):
        x, labels, paths, left_out = load_feature_set(store["folder"])
        rows.append({**store, "x": x, "labels": labels, "paths": paths, "left_out": left_out})
    if cfg.baseline == "pixels":
        first = rows[0]
        rows.insert(
            0,
            {**first, "name": "pixels", "group": None, "depth": None, "x": pixel_rows(first["folder"], first["paths"])},
        )
    with (
        threadpool_limits(cfg.threads),
        tqdm(rows, desc="report", unit="store", disable=not cfg.progress, dynamic_ncols=True) as bar,
    ):
        for row in bar:
            start = time.perf_counter()
            scores = score_store(
                row["x"],
                row["labels"],
                row["paths"],
                cfg,
                progress=lambda stage, name=row["name"]: bar.set_postfix_str(f"{name}: {stage}"),
            )
            row["scores"] = {**scores, "rows_left_out": row["left_out"], "seconds": time.perf_counter() - start}
            bar.write(store_line(row["name"], row["scores"], cfg.k[0]))
    pngs = [plot_scatter(rows, out, cfg.projection, cfg.seed), plot_per_class(rows, out)]
    depth = plot_depth(rows, out, list(cfg.k))
    pngs += [depth] if depth else []
    result = {"stores": {r["name"]: {"folder": str(r["folder"]), **r["scores"]} for r in rows}}
    with atomic_open(out / "report.json") as f:
        f.write(json.dumps(result, indent=1))
    with atomic_open(out / "report.md") as f:
        f.write(markdown(rows, list(cfg.k), pngs))
    return result


def store_line(name: str, s: dict[str, Any], k: int) -> str:
    return (
        f"{name}: {s['rows']} rows, D={s['dim']}: k-NN@{k} {s[f'knn@{k}/acc']:.4f}  probe {s['probe/acc']:.4f}  "
        f"mAP@R {s['map@r']:.4f}  ({s['seconds']:.1f} s)"
    )


def main(argv: list[str]) -> dict[str, Any]:
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(argv))
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise SystemExit(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    if OmegaConf.is_missing(cfg, "features") or OmegaConf.is_missing(cfg, "output"):
        raise SystemExit("usage: python -m features.report features=<dir>|[<dir>,<dir>] output=<dir> [baseline=pixels]")
    result = report(cfg)  # prints each store's figures as it is done
    print(f"-> {Path(cfg.output) / 'report.md'}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
