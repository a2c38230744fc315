"""features.report: every figure equals scikit-learn's (or a brute-force count) on the same arrays."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import recall_score
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedGroupKFold,
    StratifiedKFold,
    cross_val_predict,
    cross_val_score,
)
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_info, threadpool_limits

from data.digits import digits_as_images
from features.report import main, map_at_r
from tests.test_extract import lenet_digits, write_digits

T = 0.07


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Tiny logistic regressions: BLAS threads only fight each other (and other processes) on two cores."""
    with threadpool_limits(1):
        yield


def write_store(folder: Path, x: np.ndarray, labels: np.ndarray, paths: list[str]) -> Path:
    folder.mkdir(parents=True)
    np.save(folder / "features.npy", x.astype(np.float32))
    rows = "".join(f"{i},{p},{y}\n" for i, (p, y) in enumerate(zip(paths, labels, strict=True)))
    (folder / "index.csv").write_text("row,path,label\n" + rows)
    (folder / "meta.json").write_text(json.dumps({"kind": "images", "rows": len(x)}))
    return folder


def brute_map_at_r(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    aps = []
    for q in range(len(x)):
        others = np.flatnonzero(groups != groups[q])
        relevant = y[others] == y[q]
        r = int(relevant.sum())
        if r == 0:
            continue
        order = np.argsort(-(x[others] @ x[q]), kind="stable")[:r]
        hits = relevant[order]
        aps.append(sum(hits[: i + 1].mean() for i in range(r) if hits[i]) / r)
    return float(np.mean(aps))


@pytest.fixture
def digits(tmp_path):
    """200 sklearn digits (64 pixels) as two stores: the pixels, and the pixels under a random projection
    with noise; pairs of rows share a file (a group)."""
    x, y = load_digits(return_X_y=True)
    x, y = x[:200].astype(np.float32) + 0.01, y[:200]
    rng = np.random.default_rng(0)
    noisy = x @ rng.normal(size=(64, 16)) + rng.normal(scale=20, size=(200, 16))
    paths = [f"f{i // 2}.png" for i in range(200)]
    write_store(tmp_path / "pixels64", x, y, paths)
    write_store(tmp_path / "noisy", noisy, y, paths)
    return tmp_path, {"pixels64": x, "noisy": noisy.astype(np.float32)}, y, np.asarray(paths)


def test_report_figures_equal_scikit_learn(digits):
    root, arrays, y, groups = digits
    result = main(
        [
            f"features=[{root / 'pixels64'},{root / 'noisy'}]",
            f"output={root / 'report'}",
            "k=[1,5]",
            "folds=3",
            "C=[0.1,1.0]",
            "inner_folds=2",
        ]
    )
    outer = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=0)
    for name, x in arrays.items():
        scores = result["stores"][name]
        for k in (1, 5):
            knn = KNeighborsClassifier(
                n_neighbors=k, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / T)
            )
            expected = cross_val_score(knn, x, y, groups=groups, cv=outer).mean()
            assert scores[f"knn@{k}/acc"] == pytest.approx(expected, abs=1e-6), (name, k)
        search = GridSearchCV(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
            {"logisticregression__C": [0.1, 1.0]},
            cv=StratifiedKFold(n_splits=2, shuffle=True, random_state=0),
        )
        assert scores["probe/acc"] == pytest.approx(cross_val_score(search, x, y, groups=groups, cv=outer).mean())
        assert scores["map@r"] == pytest.approx(brute_map_at_r(x, y, groups), abs=1e-6)
        knn1 = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute")
        per_class = recall_score(y, cross_val_predict(knn1, x, y, groups=groups, cv=outer), average=None)
        assert [scores["per_class"][str(c)] for c in range(10)] == pytest.approx(per_class.tolist())
    # The pixels carry the digits; the noisy projection much less so.
    assert result["stores"]["pixels64"]["knn@5/acc"] > result["stores"]["noisy"]["knn@5/acc"] + 0.2
    md = (root / "report" / "report.md").read_text()
    assert "| pixels64 | 200 | 64 |" in md and "![scatter](scatter.png)" in md
    assert (root / "report" / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert not (root / "report" / "depth.png").exists()  # no multi-layer extraction given


def test_report_shows_progress_and_fits_with_one_blas_thread(digits, capsys, monkeypatch):
    """The bar names each figure as it starts and each store gets a line as it is done; the probe's fits run
    with ``threads`` BLAS threads (two fighting over tiny products made it 20x slower: docs/extract.md)."""
    root, _, _, _ = digits
    threads_seen = []
    fit = LogisticRegression.fit

    def recording_fit(self, *args, **kwargs):
        threads_seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", recording_fit)
    with threadpool_limits(2):  # what the process would have (2 cores) without the report's own limit
        main(
            [f"features=[{root / 'pixels64'},{root / 'noisy'}]", f"output={root / 'r'}", "k=[1]", "folds=2", "C=[1.0]"]
        )
    out, err = capsys.readouterr()
    assert re.search(
        r"^pixels64: 200 rows, D=64: k-NN@1 0\.\d{4}  probe 0\.\d{4}  mAP@R 0\.\d{4}  \(\d+\.\d s\)$", out, re.M
    )
    assert re.search(r"^noisy: 200 rows, D=16: ", out, re.M)
    for stage in ("pixels64: k-NN k=1", "pixels64: linear probe, fold 2/2", "noisy: mAP@R", "2/2 ["):
        assert stage in err, stage
    assert threads_seen and set(threads_seen) == {1}


def test_map_at_r_on_a_hand_counted_case():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.3]])
    y = np.array([0, 0, 1, 1])
    # Query 0: R = 1, nearest other is row 1 (same class) -> 1. Query 1: nearest is 0 -> 1.
    # Query 2: R = 1, nearest is 3 -> 1. Query 3: R = 1, nearest is 1 (class 0) -> 0.
    assert map_at_r(x, y, np.arange(4)) == pytest.approx(0.75)


def test_multi_layer_extraction_gives_a_depth_curve_and_pixel_baseline(make_cfg, tmp_path):
    pixels = write_digits(tmp_path / "in", np.arange(40))
    lenet_digits(make_cfg, tmp_path, "layers=[conv1,conv2,pooled]")
    result = main(
        [
            f"features={tmp_path / 'out'}",
            f"output={tmp_path / 'report'}",
            "k=[3]",
            "folds=2",
            "C=[1.0]",
            "baseline=pixels",
        ]
    )
    assert list(result["stores"]) == ["pixels", "out/conv1", "out/conv2", "out/pooled"]
    assert (tmp_path / "report" / "depth.png").is_file()
    targets = digits_as_images(32)[1][:40]
    rel = np.array([f"{t}/{i:04d}.png" for i, t in enumerate(targets)])  # write_digits' files, in index order
    order = np.argsort(rel)  # the store's rows: sorted paths
    knn = KNeighborsClassifier(n_neighbors=3, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / T))
    outer = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=0)
    expected = cross_val_score(knn, pixels[order] / 255.0, targets[order].astype(str), groups=rel[order], cv=outer)
    assert result["stores"]["pixels"]["knn@3/acc"] == pytest.approx(expected.mean())
