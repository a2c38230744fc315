"""data.in_memory for image folders: the files decoded once into one uint8 tensor hold the per-sample path's
pixels, unreadable files are skipped and counted per batch, ``auto`` falls back where it must, a run learns;
and the whole-batch pad + crop + flip gather against padding and slicing by hand."""

from __future__ import annotations

import json
import logging
import os
import re
import runpy
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

import data.in_memory
from data.image_folder import ImageFileDataset, ImageFolderDataModule
from data.in_memory import BatchAugment, InMemoryDataset, augment_batch
from data.transforms import Pipeline
from tests.conftest import ROOT
from tests.data_utils import class_image, write_image_folder
from trainer.run import train

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.3, 0.4]


def datamodule(root: Path, **kwargs) -> ImageFolderDataModule:
    pipeline = Pipeline(mean=MEAN, std=STD)
    args = dict(root=str(root), image_size=16, batch_size=4, train_transform=pipeline, eval_transform=pipeline)
    dm = ImageFolderDataModule(**{**args, **kwargs})
    dm.setup()
    return dm


def test_in_memory_image_folder_holds_the_per_sample_pixels(tmp_path):
    # JPEGs of 24..31 pixels: resized and centre-cropped to data.image_size before stacking, as per sample.
    write_image_folder(tmp_path, classes=("a", "b", "c"), per_class=4, splits=("train", "val"))
    held = datamodule(tmp_path, in_memory=True, num_workers=1)  # decoded in a worker process
    per_sample = datamodule(tmp_path, in_memory=False)
    assert isinstance(held.train_set, InMemoryDataset) and isinstance(per_sample.train_set, ImageFileDataset)
    assert held.test_set is held.val_set  # no test/: the val images, decoded once
    for split in ("train_set", "val_set"):
        files, tensor = getattr(per_sample, split), getattr(held, split)
        assert tensor.images.shape == (12, 3, 16, 16) and tensor.images.dtype == torch.uint8
        for i in range(len(files)):
            assert torch.equal(tensor.images[i], torch.from_numpy(files.read(i)).permute(2, 0, 1)), (split, i)
        assert tensor.targets.tolist() == [label for _, label in files.samples]
    # An eval batch after the whole-batch transform equals the per-sample pipeline's batch.
    batch = augment_batch(next(iter(held.val_dataloader())), held.batch_transforms, train=False)
    expected = next(iter(per_sample.val_dataloader()))
    torch.testing.assert_close(batch["input"], expected["input"], atol=1e-5, rtol=0)
    assert torch.equal(batch["target"], expected["target"]) and batch["num_skipped"] == 0


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def test_unreadable_files_in_memory_are_skipped_and_counted_per_batch(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=4, splits=("train", "val"))
    truncate(tmp_path / "train" / "b" / "1.jpg")
    dm = datamodule(tmp_path, in_memory=True, batch_size=2)
    assert dm.train_set.readable.tolist() == [True] * 5 + [False] + [True] * 2  # sorted: a/0..3, b/0..3
    for _ in range(2):  # each epoch draws the unreadable image once, as the per-sample path does
        batches = list(dm.train_dataloader())
        assert sum(b["num_skipped"] for b in batches) == 1
        assert sum(len(b["input"]) for b in batches if "input" in b) == 7
    truncate(tmp_path / "val" / "a" / "0.jpg")
    with pytest.raises(RuntimeError, match=r"cannot decode image .*val/a/0\.jpg"):
        datamodule(tmp_path, in_memory=True)


def test_auto_falls_back_to_per_sample_loading_and_true_says_why(tmp_path, monkeypatch, caplog):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=2, splits=("train",))
    with caplog.at_level(logging.INFO, logger="data.in_memory"):
        assert isinstance(datamodule(tmp_path, in_memory="auto", image_size=None).train_set, ImageFileDataset)
    assert "set data.image_size" in caplog.text
    with pytest.raises(ValueError, match=r"stacks images of one size: set data.image_size"):
        datamodule(tmp_path, in_memory=True, image_size=None)
    # Too large for the memory available: auto reads per sample, true holds them anyway.
    monkeypatch.setattr(data.in_memory, "available_memory", lambda: 1000)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data.in_memory"):
        assert isinstance(datamodule(tmp_path, in_memory="auto", val_size=1).train_set, ImageFileDataset)
    assert re.search(r"4 decoded images of \(16, 16, 3\) need .* GiB, more than 50% of the 0.0 GiB", caplog.text)
    assert isinstance(datamodule(tmp_path, in_memory=True).train_set, InMemoryDataset)


@pytest.mark.parametrize(("mode", "value"), [("reflect", 0.0), ("constant", 7.0)])
def test_pad_crop_flip_gather_equals_padding_then_slicing(mode, value):
    x = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    pad, crop = (1, 2, 3, 0), (10, 11)  # left, right, top, bottom: asymmetric, as PadIfNeeded gives
    augment = BatchAugment(mean=MEAN, std=STD, pad=pad, pad_mode=mode, pad_value=value, crop=crop, flip_p=0.5)
    out = augment(x, generator=torch.Generator().manual_seed(0))
    # The same draws, in the same order, applied by hand to the padded float images.
    g = torch.Generator().manual_seed(0)
    top, left = torch.randint(0, 15 - 10 + 1, (16,), generator=g), torch.randint(0, 15 - 11 + 1, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = F.pad(x.float(), pad, mode=mode, **({"value": value} if mode == "constant" else {}))  # (16, 3, 15, 15)
    shift = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    scale = 1 / (torch.tensor(STD).view(1, 3, 1, 1) * 255)
    expected = torch.stack(
        [padded[i, :, t : t + 10, s : s + 11] for i, (t, s) in enumerate(zip(top.tolist(), left.tolist(), strict=True))]
    )
    expected = torch.where(flip[:, None, None, None], expected.flip(3), expected)
    torch.testing.assert_close(out, (expected - shift) * scale, atol=1e-5, rtol=0)
    assert flip.any() and not flip.all()


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_in_memory_image_folder_run_learns_with_num_classes_from_the_folders(make_cfg, tmp_path, caplog):
    # A bright square in one of four corners: learnable in a few dozen steps (chance: 25 %).
    write_image_folder(tmp_path / "imgs", classes=("ne", "nw", "se", "sw"), per_class=24, size=16)
    cfg = make_cfg(
        "data=image_folder",
        f"data.root={tmp_path / 'imgs'}",
        "data.in_memory=true",
        "data.image_size=16",
        "data.batch_size=16",
        "model=lenet",
        "trainer.max_epochs=8",
        "trainer.limit_train_batches=null",
        "trainer.limit_val_batches=null",
        "trainer.limit_test_batches=null",
    )
    assert cfg.data.num_classes is None
    with caplog.at_level(logging.INFO, logger="data.image_folder"):
        train(cfg)
    assert "decoded 96 images" in caplog.text  # the in-memory path ran
    res = results(tmp_path / "run")
    assert res["data/num_classes"] == 4 and res["data/skipped"] == 0
    assert res["test/acc"] >= 0.7, res["test/acc"]


# --- on the real CIFAR-10 JPEGs (../shared/data) ------------------------------------------------------------


def shared_tar() -> Path:
    """The real CIFAR-10 training JPEGs: ``../shared/data`` beside the repository, or ``$VISFEAT_SHARED``
    (the shared folder or its data/ folder); skips the test, saying where it looked, when absent."""
    places = [ROOT.parent / "shared" / "data"]
    if os.environ.get("VISFEAT_SHARED"):
        places[:0] = [Path(os.environ["VISFEAT_SHARED"]) / "data", Path(os.environ["VISFEAT_SHARED"])]
    for place in places:
        if (place / "cifar10-train-jpeg.tar.xz").is_file():
            return place / "cifar10-train-jpeg.tar.xz"
    pytest.skip(f"real CIFAR-10 JPEGs not found (cifar10-train-jpeg.tar.xz in {', '.join(map(str, places))})")


def test_real_cifar10_jpegs_in_memory_are_the_decoded_files(tmp_path):
    # The tar lists the images class by class: its first 24 JPEGs, split into two folders, read in well under 1 s.
    files = []
    with tarfile.open(shared_tar()) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                target = tmp_path / "train" / "ab"[len(files) % 2] / Path(member.name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                files.append(target)
                if len(files) == 24:
                    break
    held = datamodule(tmp_path, in_memory=True, image_size=32, val_size=4)
    per_sample = datamodule(tmp_path, in_memory=False, image_size=32, val_size=4)
    for files, tensor in ((per_sample.train_set, held.train_set), (per_sample.val_set, held.val_set)):
        assert tensor.images.shape == (len(files), 3, 32, 32)
        for i, (path, _) in enumerate(files.samples):
            raw = np.asarray(Image.open(path).convert("RGB"))  # (32, 32, 3): 32x32 files are not resampled
            assert torch.equal(tensor.images[i], torch.from_numpy(raw).permute(2, 0, 1)), path


# --- bench.loading --image-folder ------------------------------------------------------------------------------


def test_loading_bench_times_our_run_and_a_plain_loop_on_an_image_folder(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    for label, name in enumerate("ab"):  # 32x32 files, as the plain loop reads them
        (tmp_path / "imgs" / "train" / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(class_image(label, rng, 32)).save(tmp_path / "imgs" / "train" / name / f"{i}.jpg")
    args = ["--image-folder", str(tmp_path / "imgs"), "--images", "12", "--val-images", "4", "--epochs", "1"]
    monkeypatch.setattr(sys, "argv", ["bench/loading.py", *args, "--batch-size", "4", "--repeats", "1"])
    try:
        runpy.run_module("bench.loading", run_name="__main__")
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr().out
    number = r"\d+(?:\.\d+)?"
    for side in ("ours", "plain"):
        assert re.search(rf"repeat 0 {side}\s+{number} s\s+cpu\s+{number} s\s+val/acc {number}", out), side
    assert "12 train + 4 val images, 2 classes" in out
    assert re.search(rf"^cpu_ratio={number}$", out, re.M) and re.search(rf"^ratio={number}$", out, re.M)
