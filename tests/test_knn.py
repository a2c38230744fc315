"""features.knn: cosine k-NN votes, cross-validated accuracy, the command line over an extraction folder."""

from __future__ import annotations

import json

import numpy as np
import torch

from features.knn import knn_accuracy, knn_predict, main


def test_knn_predict_votes_by_cosine_neighbours():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[5.0, 0.5], [0.3, 3.0], [1.0, 0.4]])  # scale does not matter for cosine
    assert knn_predict(train, labels, query, k=2, num_classes=2).tolist() == [0, 1, 0]
    # k=5: majority is class 1 everywhere; the weighted vote keeps the near class-0 pair decisive for query 0.
    assert knn_predict(train, labels, query, k=5, num_classes=2, vote="majority").tolist() == [1, 1, 1]
    assert knn_predict(train, labels, query, k=5, num_classes=2, vote="weighted", temperature=0.01).tolist()[0] == 0


def test_knn_accuracy_separable_vs_random_labels():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 5
    labels = np.repeat(np.array(["a", "b", "c", "d"]), 30)
    features = centres[np.repeat(np.arange(4), 30)] + rng.normal(size=(120, 16))
    result = knn_accuracy(features, labels, k=5, folds=5)
    assert result["knn/acc"] == 1.0 and len(result["knn/fold_acc"]) == 5 and result["knn/chance"] == 0.25
    shuffled = knn_accuracy(rng.normal(size=(120, 16)), labels, k=5, folds=5)["knn/acc"]
    assert shuffled < 0.45


def test_groups_keep_clips_of_one_video_on_one_side():
    # Every "video" has 3 identical clip rows and a label of its own class pair: without grouping, a clip's
    # twin would mostly sit in the training fold and k=1 nearly perfect; grouped, twins are never neighbours.
    rng = np.random.default_rng(1)
    videos = rng.normal(size=(40, 8))
    features = np.repeat(videos, 3, axis=0)
    labels = np.repeat(rng.integers(0, 2, 40).astype(str), 3)
    groups = np.repeat([f"v{i}" for i in range(40)], 3)
    assert knn_accuracy(features, labels, k=1, folds=4)["knn/acc"] > 0.9  # twins usually split across folds
    assert knn_accuracy(features, labels, groups=groups, k=1, folds=4)["knn/acc"] < 0.8


def test_command_line_writes_knn_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(size=(20, 4)) + 4, rng.normal(size=(20, 4)) - 4, np.full((1, 4), np.nan)])
    rows = [f"{i},img{i}.png,{'x' if i < 20 else 'y'}" for i in range(40)] + [
        "40,broken.png,x",
        "41,unlabelled.png,",
    ]
    np.save(tmp_path / "features.npy", np.concatenate([features, np.zeros((1, 4))]).astype(np.float16))
    (tmp_path / "index.csv").write_text("row,path,label\n" + "\n".join(rows) + "\n")
    result = main([f"features={tmp_path}", "k=3", "folds=4"])
    saved = json.loads((tmp_path / "knn.json").read_text())
    assert saved["knn/acc"] == result["knn/acc"] == 1.0
    assert saved["rows"] == 40 and saved["rows_left_out"] == 2 and saved["folds"] == 4 and saved["k"] == 3
    assert "k-NN accuracy 1.0000" in capsys.readouterr().out
