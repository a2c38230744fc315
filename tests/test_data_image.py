"""Image datasets: digits, CIFAR-10 pickles, class folders of JPEGs."""

import numpy as np
import pytest
import torch
from PIL import Image

from data.cifar10 import CIFAR10DataModule, read_batches
from data.digits import DigitsDataModule, digits_as_images
from data.image_folder import ImageFolderDataModule, load_image
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


# --- high-bit-depth, float and rotated image files (issue 25 item 4), compared with torchvision's decoder ------


def test_a_16_bit_png_loads_scaled_as_torchvision_does(tmp_path):
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import to_dtype

    grey = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491
    Image.fromarray(grey).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = load_image(tmp_path / "deep.png", None)
    assert image.shape == (48, 64, 3) and 100 < image.mean() < 160  # all white (254.6) before
    theirs = to_dtype(decode_image(str(tmp_path / "deep.png"), mode=ImageReadMode.UNCHANGED), torch.uint8, scale=True)
    assert np.abs(image[..., 0].astype(int) - theirs[0].numpy().astype(int)).max() <= 1
    assert (image[..., 0] == image[..., 2]).all()


def test_a_float_tiff_in_0_1_loads_scaled_and_one_outside_is_refused_naming_it(tmp_path):
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(ramp, mode="F").save(tmp_path / "ramp.tif")
    image = load_image(tmp_path / "ramp.tif", None)
    assert abs(image.mean() - 127.5) < 1 and image.min() == 0 and image.max() == 255  # all black (0.0) before
    Image.fromarray(ramp * 1000, mode="F").save(tmp_path / "counts.tif")
    with pytest.raises(ValueError, match=r"counts\.tif is a float image \(PIL mode F\) with values in \[0, 1000\]"):
        load_image(tmp_path / "counts.tif", None)


def test_an_exif_rotated_jpeg_loads_upright_as_torchvision_does(tmp_path):
    from torchvision.io import ImageReadMode, decode_image

    stored = np.zeros((20, 40, 3), np.uint8)  # (H, W, 3) as stored: red left half, blue right half
    stored[:, :20, 0] = 255
    stored[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "phone.jpg", None)
    assert image.shape == (40, 20, 3)  # (20, 40, 3) before: unrotated
    assert image[:20, :, 0].mean() > 200 and image[20:, :, 2].mean() > 200  # the left half on top
    theirs = decode_image(str(tmp_path / "phone.jpg"), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    assert np.abs(image.astype(int) - theirs.permute(1, 2, 0).numpy().astype(int)).max() <= 8


def test_image_folder_training_and_eval_read_16_bit_images(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=2)
    deep = (np.full((16, 16), 40000)).astype(np.uint16)
    for split in ("train", "val", "test"):
        for cls in ("a", "b"):
            Image.fromarray(deep).save(root / split / cls / "deep.png")
    dm = ImageFolderDataModule(root=str(root), image_size=16, batch_size=4, num_workers=0, in_memory=False)
    dm.setup()
    for split in (dm.train_set, dm.test_set):
        sample = next(split[i] for i in range(len(split)) if split.samples[i][0].name == "deep.png")
        assert abs(float(sample["input"].mean()) - (40000 >> 8) / 255) < 1e-3  # 1.0 (all white) before
