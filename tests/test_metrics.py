"""Metrics for imbalanced data: mean-class and per-class accuracy from the confusion matrix (checked against
scikit-learn), the class-weighted loss and the class-balanced sampler (seeded, sharded, resumable), and both
on digits whose classes 5-9 are subsampled 10:1 in training: each raises the minority classes' accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score
from sklearn.utils.class_weight import compute_class_weight

from data.digits import DigitsDataModule
from data.sampler import BalancedSampler, balanced_class_weights
from runs.compose import compose_config
from tests.conftest import SMALL
from trainer.module import check_class_weights, class_accuracies, confusion_accuracies, video_confusion
from trainer.run import train

MINORITY = [5, 6, 7, 8, 9]


class ImbalancedDigits(DigitsDataModule):
    """Digits whose ``minority`` classes keep one training image in ``ratio`` (validation and test untouched)."""

    def __init__(self, *, minority: list[int], ratio: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.minority, self.ratio = list(minority), int(ratio)

    def make_splits(self):
        train, val, test = super().make_splits()
        keep = np.ones(len(train.targets), dtype=bool)
        for c in self.minority:
            of_class = np.flatnonzero(train.targets == c)
            keep[of_class[len(of_class) // self.ratio :]] = False
        train.images, train.targets = train.images[keep], train.targets[keep]
        return train, val, test


def test_accuracies_from_the_confusion_matrix_match_sklearn():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, 300)
    pred = np.where(rng.random(300) < 0.6, target, rng.integers(0, 6, 300))
    target[target == 5] = 4  # class 5 has no samples (but is predicted): left out of the mean, None per class
    confusion = torch.as_tensor(confusion_matrix(target, pred, labels=range(6)))
    acc, macro = confusion_accuracies(confusion)
    assert acc.item() == pytest.approx((pred == target).mean())
    assert macro.item() == pytest.approx(balanced_accuracy_score(target, pred))
    per_class = class_accuracies(confusion, list("abcdef"))
    expected = recall_score(target, pred, labels=range(5), average=None)
    assert list(per_class) == list("abcdef") and per_class["f"] is None
    np.testing.assert_allclose([per_class[c] for c in "abcde"], expected)


def test_video_confusion_sums_the_views_of_each_video():
    video = torch.tensor([3, 3, 7, 7, 9])
    logits = torch.tensor([[2.0, 0, 0], [0, 1.5, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]])  # (views, 3)
    target = torch.tensor([0, 0, 2, 2, 1])
    expected = torch.zeros(3, 3, dtype=torch.long)
    expected[0, 0] = expected[2, 2] = expected[1, 0] = 1  # video 3: 2 > 1.5; video 9 (class 1) predicted 0
    assert torch.equal(video_confusion(video, logits, target, num_classes=3), expected)


def test_balanced_weights_match_sklearn_and_bad_weights_fail_early():
    targets = np.array([0] * 50 + [1] * 5 + [2] * 20)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=targets)
    np.testing.assert_allclose(balanced_class_weights(targets, ["a", "b", "c"]), expected)
    with pytest.raises(ValueError, match=r"classes \['d'\] have no training samples"):
        balanced_class_weights(targets, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="has 2 values but the model has 3 classes"):
        check_class_weights([1.0, 2.0], 3)
    with pytest.raises(ValueError, match="must all be positive"):
        check_class_weights([1.0, 0.0, 2.0], 3)
    with pytest.raises(ValueError, match="'inverse' must be 'balanced'"):
        check_class_weights("inverse", 3)


def test_class_weights_of_the_wrong_length_fail_before_training(make_cfg):
    with pytest.raises(ValueError, match="has 3 values but the model has 10 classes"):
        train(make_cfg("module.class_weights=[1,2,3]"))


def test_balanced_sampler_draws_classes_equally_seeded_sharded_and_resumable():
    targets = np.array([0] * 900 + [1] * 90 + [2] * 10)
    dataset = list(range(len(targets)))
    sampler = BalancedSampler(dataset, targets=targets, seed=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 1000
    share = np.bincount(targets[epoch0], minlength=3) / 1000
    np.testing.assert_allclose(share, 1 / 3, atol=0.05)  # draws ~ Binomial(1000, 1/3): sd 0.015
    assert list(BalancedSampler(dataset, targets=targets, seed=3)) == epoch0  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    # Resumed 96 samples into epoch 1 (ResumableLoader sets `start`): the rest of the same epoch.
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.start = 96
    assert list(sampler) == full[96:]
    # Two processes: disjoint turns of the one sequence of draws, equal lengths.
    shards = [BalancedSampler(dataset, targets=targets, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for s in shards:
        s.set_epoch(0)
    a, b = (list(s) for s in shards)
    assert len(a) == len(b) == 500
    assert [x for pair in zip(a, b, strict=True) for x in pair] == epoch0


def minority_accuracy(run_dir: Path) -> float:
    per_class = json.loads((run_dir / "results.json").read_text())["test/acc_per_class"]
    return float(np.mean([per_class[str(c)] for c in MINORITY]))


# Two epochs of LeNet on all ~840 training digits, of which classes 5-9 have ~14 each.
IMBALANCED = [
    "data._target_=tests.test_metrics.ImbalancedDigits",
    f"+data.minority={MINORITY}",
    "+data.ratio=10",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=1.0",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1.0",
    "seed=0",
]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("plain")
    train(compose_config(*SMALL, *IMBALANCED, output_dir=run_dir))
    GlobalHydra.instance().clear()
    return run_dir


@pytest.mark.parametrize("option", ["module.class_weights=balanced", "data.sampler=balanced"])
def test_balanced_loss_or_sampler_raises_minority_accuracy(make_cfg, tmp_path, plain_run, option):
    train(make_cfg(*IMBALANCED, option, output_dir=tmp_path / "balanced"))
    plain, balanced = minority_accuracy(plain_run), minority_accuracy(tmp_path / "balanced")
    # Measured (seed 0): plain 0.00 (the minority digits are all predicted as majority ones), weighted loss
    # 0.59, balanced sampler 0.62.
    assert balanced > plain + 0.3, (plain, balanced)
    results = json.loads((tmp_path / "balanced" / "results.json").read_text())
    assert results["test/acc_macro"] > json.loads((plain_run / "results.json").read_text())["test/acc_macro"]
    assert 0 <= results["val/acc_macro"] <= 1
    assert set(results["test/acc_per_class"]) == {str(c) for c in range(10)}


EXACT = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.deterministic=true", "seed=7"]
FAULT = ["+callbacks.fault._target_=tests.faults.SignalAt", "+callbacks.fault.step=4"]


def test_balanced_run_killed_mid_epoch_resumes_exactly(make_cfg, tmp_path):
    balanced = ["data.sampler=balanced", "module.class_weights=balanced", "data.batch_size=32"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    train(make_cfg(*EXACT, *balanced, output_dir=ref))
    with pytest.raises(SystemExit):
        train(make_cfg(*EXACT, *balanced, *FAULT, output_dir=cut))
    train(make_cfg(*EXACT, *balanced, *FAULT, "resume=auto", output_dir=cut))  # the fault callback named again
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in (ref, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
