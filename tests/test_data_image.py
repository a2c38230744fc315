"""Image datasets: digits, CIFAR-10 pickles, class folders of JPEGs."""

import numpy as np
import pytest
import torch

from data.cifar10 import CIFAR10DataModule, read_batches
from data.digits import DigitsDataModule, digits_as_images
from data.image_folder import ImageFolderDataModule
from data.transforms import Pipeline
from tests.data_utils import write_cifar10, write_image_folder


def test_digits_are_32x32_rgb_uint8_and_splits_are_disjoint():
    images, targets = digits_as_images(32)
    assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 2]).all() and images.max() == 255
    dm = DigitsDataModule(val_size=0.1, test_size=0.2, split_seed=0)
    dm.setup()
    sizes = [len(dm.train_set), len(dm.val_set), len(dm.test_set)]
    assert sizes == [1797 - 180 - 359, 180, 359]
    # the three splits share no image (compare raw bytes)
    keys = [{im.tobytes() for im in s.images} for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def test_digits_class_subset_is_relabelled():
    dm = DigitsDataModule(classes=[5, 7])
    dm.setup()
    assert dm.num_classes == 2 and dm.class_names == ["5", "7"]
    assert set(dm.train_set.targets.tolist()) == {0, 1}


def test_cifar10_reads_the_official_pickle_layout(tmp_path):
    folder = write_cifar10(tmp_path, n_per_batch=12, n_test=7)
    images, labels = read_batches(folder, ["data_batch_1"])
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8 and labels.shape == (12,)
    # pixel (0, 0) of image 0: the first R, G, B bytes of each colour plane of its row
    import pickle

    raw = pickle.load(open(folder / "data_batch_1", "rb"), encoding="latin1")
    assert images[0, 0, 0].tolist() == [raw["data"][0][0], raw["data"][0][1024], raw["data"][0][2048]]
    assert labels.tolist() == raw["labels"]

    transform = Pipeline(mean=[0.5] * 3, std=[0.25] * 3)
    dm = CIFAR10DataModule(
        root=str(tmp_path), val_size=10, batch_size=4, train_transform=transform, eval_transform=transform
    )
    dm.check()
    dm.setup()
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [50, 10, 7]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input"].shape == (4, 3, 32, 32) and batch["input"].dtype == torch.float32
    assert batch["target"].dtype == torch.int64
    sample = dm.test_set[3]
    assert sample["target"] == raw_test_labels(folder)[3]
    expected = (torch.from_numpy(dm.test_set.images[3]).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(sample["input"], expected)


def raw_test_labels(folder):
    import pickle

    return pickle.load(open(folder / "test_batch", "rb"), encoding="latin1")["labels"]


def test_cifar10_missing_files_name_the_path_and_the_fix(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as e:
        dm.check()
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg and "data.download=true" in msg


def test_image_folder_with_all_splits(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog"), per_class=3)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=16, batch_size=4, num_classes=2)
    dm.check()
    dm.check_num_classes()
    dm.setup()
    assert dm.class_names == ["cat", "dog"] and not dm.test_is_val
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [6, 6, 6]
    sample = dm.train_set[4]
    assert sample["input"].shape == (3, 16, 16) and sample["target"] == 1
    assert sample["path"] == "train/dog/1.jpg"
    batch = next(iter(dm.val_dataloader()))
    assert batch["input"].shape == (4, 3, 16, 16) and len(batch["path"]) == 4


def test_image_folder_without_val_and_test_splits_train_and_reuses_val(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=10, splits=("train",))
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=16, val_size=0.25)
    dm.setup()
    assert len(dm.train_set) == 15 and len(dm.val_set) == 5 and dm.test_is_val
    assert dm.test_set.samples == dm.val_set.samples
    assert not {p for p, _ in dm.train_set.samples} & {p for p, _ in dm.val_set.samples}


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/<class>/<image>"):
        ImageFolderDataModule(root=str(tmp_path / "missing")).check()
    write_image_folder(tmp_path, classes=("a", "b", "c"), per_class=1, splits=("train",))
    dm = ImageFolderDataModule(root=str(tmp_path), num_classes=5)
    with pytest.raises(ValueError, match=r"data.num_classes=5 but the data has 3 classes"):
        dm.check_num_classes()


def test_image_folder_num_classes_comes_from_the_class_folders_before_the_net_is_built(make_cfg, tmp_path):
    from nets.build import build_net
    from trainer.run import build_datamodule

    write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=1, splits=("train",))
    cfg = make_cfg("data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=16")
    assert cfg.data.num_classes is None and cfg.model.num_classes is None  # null: not given
    build_datamodule(cfg.data, cfg.augment)
    assert cfg.data.num_classes == 3 and cfg.model.num_classes == 3  # the model's head reads it
    assert build_net(cfg.model).classify(torch.zeros(2, 84)).shape == (2, 3)


def test_image_folder_num_classes_given_is_checked_naming_both_numbers(make_cfg, tmp_path):
    from trainer.run import build_datamodule

    write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=1, splits=("train",))
    given = make_cfg("data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.num_classes=3")
    build_datamodule(given.data, given.augment)
    assert given.data.num_classes == 3
    wrong = make_cfg("data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.num_classes=5")
    with pytest.raises(ValueError, match=r"data.num_classes=5 but the data has 3 classes .*set data.num_classes=3"):
        build_datamodule(wrong.data, wrong.augment)
