"""data.classes / data.train_per_class on CIFAR-10 pickles (the transfer benchmark's splits)."""

import numpy as np
import pytest

from data.cifar10 import CIFAR10DataModule
from tests.data_utils import write_cifar10


def test_cifar10_class_subset_and_few_per_class(tmp_path):
    write_cifar10(tmp_path, n_per_batch=60, n_test=60)
    full = CIFAR10DataModule(root=str(tmp_path), val_size=0)
    full.setup()
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=0, classes=[5, 7, 9], train_per_class=2, seed=1)
    dm.setup()
    assert dm.num_classes == 3 and dm.class_names == ["dog", "horse", "truck"]
    assert sorted(dm.train_set.targets.tolist()) == [0, 0, 1, 1, 2, 2]
    # relabelled test images are exactly the originals of those classes, in order
    keep = np.isin(full.test_set.targets, [5, 7, 9])
    assert np.array_equal(dm.test_set.images, full.test_set.images[keep])
    assert np.array_equal(dm.test_set.targets, np.searchsorted([5, 7, 9], full.test_set.targets[keep]))
    other = CIFAR10DataModule(root=str(tmp_path), val_size=0, classes=[5, 7, 9], train_per_class=2, seed=2)
    other.setup()
    assert not np.array_equal(other.train_set.images, dm.train_set.images)  # drawn with the run seed


def test_bad_class_subset_named():
    with pytest.raises(ValueError, match=r"data.classes=\[3, 3\] must be distinct class indices in 0..9"):
        CIFAR10DataModule(root="x", classes=[3, 3])
    with pytest.raises(ValueError, match="data.train_per_class=0"):
        CIFAR10DataModule(root="x", train_per_class=0)
