"""Failures found before the work is spent, and messages that say what happened (issue 20, items 4 and 5):
a corrupt image and an unreadable video in the evaluation splits, an unwritable checkpoints/, a full disk,
class folders that are empty or hidden, a run that skips every update, eval.py without a checkpoint."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.image_folder import ImageFolderDataModule
from data.video.datamodule import VideoDataModule
from runs.checkpoint_io import AtomicCheckpointIO
from runs.nonfinite import NonFiniteError
from tests.conftest import run_script
from tests.data_utils import write_image_folder
from tests.video_utils import make_video_folder
from trainer.checks import ConfigError, UnreadableFileError, check_config, check_eval_files
from trainer.run import evaluate, train


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def image_folder_overrides(root: Path) -> list[str]:
    return [
        "data=image_folder",
        f"data.root={root}",
        "data.num_classes=3",
        "data.image_size=16",
        "data.batch_size=6",
        "data.pin_memory=false",
        "data.persistent_workers=false",
        "trainer.limit_val_batches=null",
        "trainer.limit_test_batches=null",
    ]


# --- before the first step -------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_an_unreadable_eval_image_is_found_before_training_naming_it(tmp_path, damage):
    root = write_image_folder(tmp_path / "images")
    bad = root / "test" / "b" / "2.jpg"
    {"truncate": truncate, "garbage": lambda p: p.write_bytes(os.urandom(500)), "empty": lambda p: p.write_bytes(b"")}[
        damage
    ](bad)
    dm = ImageFolderDataModule(root=str(root), image_size=16)
    with pytest.raises(
        UnreadableFileError, match=rf"evaluation splits \(test\).*{bad}.*data\.skip_unreadable_eval=true"
    ):
        check_eval_files(dm)
    dm = ImageFolderDataModule(root=str(root), image_size=16, skip_unreadable_eval=True)
    assert check_eval_files(dm) == 1
    assert len(dm.list_splits()[2]) == 3 * 6 - 1 and all(p != bad for p, _ in dm.list_splits()[2].samples)


def test_an_unreadable_video_in_the_test_list_is_found_before_training(tmp_path):
    root = make_video_folder(tmp_path / "videos", {"a": 3, "b": 3}, num_frames=4, height=16, width=16)
    (root / "b" / "b_01.mp4").write_bytes(os.urandom(2000))  # not a container FFmpeg can open
    (root / "trainlist.txt").write_text("a/a_00.mp4\nb/b_00.mp4\n")
    (root / "testlist.txt").write_text("a/a_01.mp4\nb/b_01.mp4\na/a_02.mp4\nb/b_02.mp4\n")
    lists = {"train_list": "trainlist.txt", "test_list": "testlist.txt", "val_size": 1}
    dm = VideoDataModule(root=str(root), num_frames=2, crop_size=16, **lists)
    with pytest.raises(UnreadableFileError, match=r"b/b_01\.mp4"):
        check_eval_files(dm)
    dm = VideoDataModule(root=str(root), num_frames=2, crop_size=16, skip_unreadable_eval=True, **lists)
    assert check_eval_files(dm) == 1
    assert [Path(p).name for p, _ in dm.list_splits()[2].videos] == ["a_01.mp4", "a_02.mp4", "b_02.mp4"]


def test_train_stops_before_the_first_step_on_a_corrupt_val_image_or_skips_and_counts_it(make_cfg, tmp_path):
    root = write_image_folder(tmp_path / "images")
    (root / "val" / "c" / "0.jpg").write_bytes(b"not an image")
    with pytest.raises(UnreadableFileError, match=r"val/c/0\.jpg"):
        train(make_cfg(*image_folder_overrides(root)))
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # no epoch was spent
    train(make_cfg(*image_folder_overrides(root), "data.skip_unreadable_eval=true", output_dir=tmp_path / "run2"))
    assert json.loads((tmp_path / "run2" / "results.json").read_text())["data/skipped_eval"] == 1


def test_an_unwritable_checkpoints_dir_fails_before_training(make_cfg, tmp_path):
    # A file where the folder should be: unwritable for every user, root included.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("in the way")
    with pytest.raises(ConfigError, match=r"cannot write to .*run/checkpoints .*hydra\.run\.dir=<dir>"):
        train(make_cfg())


def test_eval_skips_unreadable_test_files_when_asked(make_cfg, tmp_path):
    root = write_image_folder(tmp_path / "images")
    train(make_cfg(*image_folder_overrides(root), "test=false"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    truncate(root / "test" / "a" / "1.jpg")
    with pytest.raises(UnreadableFileError, match=r"test/a/1\.jpg"):
        evaluate(make_cfg(f"ckpt_path={ckpt}", config_name="eval", output_dir=tmp_path / "eval1"))
    out = evaluate(
        make_cfg(f"ckpt_path={ckpt}", "data.skip_unreadable_eval=true", config_name="eval", output_dir=tmp_path / "e2")
    )
    assert out["data/skipped_eval"] == 1


def test_eval_without_a_checkpoint_says_how_to_give_one(make_cfg):
    with pytest.raises(ConfigError, match=r"eval\.py tests a checkpoint: give it as ckpt_path=<file>"):
        evaluate(make_cfg(config_name="eval"))


# --- a full disk -------------------------------------------------------------------------------------------------


def test_a_full_disk_is_named_and_the_previous_checkpoint_kept(tmp_path, monkeypatch):
    """torch.save's own error for a file whose write fails with ENOSPC is 'unexpected pos ...'."""
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"net.w": torch.ones(3)}}, path)
    before = path.read_bytes()
    real_save = torch.save

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, b):
            if self.written + len(b) > 512:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, FullDisk(f)))
    with pytest.raises(
        OSError, match=rf"no space left on {tmp_path} while writing last\.ckpt.*previous last\.ckpt is kept"
    ):
        io.save_checkpoint({"state_dict": {"net.w": torch.zeros(10_000)}}, path)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 256 KiB file system, where this process may mount one (root, mount available)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk_is_named(tiny_tmpfs):
    io = AtomicCheckpointIO()
    with pytest.raises(OSError, match=rf"no space left on {tiny_tmpfs} while writing last\.ckpt.*nothing was written"):
        io.save_checkpoint({"state_dict": {"net.w": torch.zeros(200_000)}}, tiny_tmpfs / "last.ckpt")  # 800 kB
    assert list(tiny_tmpfs.iterdir()) == []


# --- class folders -------------------------------------------------------------------------------------------


def test_an_empty_class_folder_is_an_error(tmp_path):
    root = write_image_folder(tmp_path / "images")
    (root / "train" / "d").mkdir()
    with pytest.raises(FileNotFoundError, match=r"class folder\(s\) .*train/d hold no images"):
        ImageFolderDataModule(root=str(root)).check()


def test_hidden_folders_are_not_classes(tmp_path):
    root = write_image_folder(tmp_path / "images")
    for split in ("train", "val"):
        (root / split / ".ipynb_checkpoints").mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / split / ".ipynb_checkpoints" / "x.jpg")
    dm = ImageFolderDataModule(root=str(root))
    assert dm.class_names == ["a", "b", "c"]


# --- a run that skips every update -------------------------------------------------------------------------


def test_skip_stops_after_max_consecutive_skips(make_cfg):
    cfg = make_cfg(
        "+callbacks.fault._target_=tests.faults.NaNLossFrom",
        "+callbacks.fault.step=1",
        "module.nonfinite=skip",
        "module.max_consecutive_skips=2",
        "trainer.limit_train_batches=6",
    )
    with pytest.raises(
        NonFiniteError, match=r"2 updates in a row skipped .*global step 2; module\.max_consecutive_skips=2"
    ):
        train(cfg)


# --- messages that name the key or file and the fix (issue 25 item 10) ------------------------------------------


@pytest.mark.parametrize("override", ["optimizer.lr=nan", "optimizer.weight_decay=nan", "scheduler.warmup_epochs=inf"])
def test_a_nonfinite_optimizer_or_scheduler_number_is_refused_naming_the_key(make_cfg, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}=(nan|inf) is not a finite number"):
        check_config(make_cfg(override))


def test_a_one_class_image_folder_is_named(make_cfg, tmp_path):
    root = write_image_folder(tmp_path / "data", classes=("cat",), per_class=3)
    cfg = make_cfg(*image_folder_overrides(root))
    with pytest.raises(ValueError, match=rf"{root / 'train'} holds one class folder \(cat\): a classifier needs two"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_damaged_optuna_db_is_named_with_how_to_start_a_new_study(tmp_path):
    from sweeps.trial import load_study

    db = tmp_path / "optuna.db"
    db.write_bytes(os.urandom(4096))  # a file cut or overwritten: no SQLite database
    with pytest.raises(ValueError, match=rf"Optuna storage {db} cannot be read .*mv {db} {db}\.damaged"):
        load_study(f"sqlite:///{db}", "study")


@pytest.mark.parametrize("problem", ["read_only", "too_long"])
def test_a_run_dir_that_cannot_be_made_names_the_path_and_the_key(tmp_path, problem):
    """A real train.py: /sys refuses new folders even to root (a read-only place); a 300-byte task_name."""
    args = (
        ["paths.log_dir=/sys/visfeat"]
        if problem == "read_only"
        else [f"paths.log_dir={tmp_path}", "task_name=" + "t" * 300]
    )
    proc = run_script("train.py", *args, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    expected = (
        "paths.log_dir must be a folder this process can write"
        if problem == "read_only"
        else "is 300 bytes, over the file system's 255. Shorten task_name"
    )
    assert "cannot create the run dir" in out and expected in out


def test_a_video_checkpoint_given_images_says_it_takes_clips(make_cfg, tmp_path):
    from features.extract import extract
    from tests.test_export import make_checkpoint
    from tests.test_reliability_outputs import extract_cfg

    ckpt = make_checkpoint(tmp_path, "cnn_lstm")  # LeNet per frame + LSTM, on 4-frame clips
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "images" / "a.png")
    cfg = extract_cfg(make_cfg, tmp_path, ckpt)
    with pytest.raises(
        ValueError, match=r"holds a video model: it takes clips of 4 frames .* holds images\. Give it videos"
    ):
        extract(cfg)
