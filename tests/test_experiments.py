"""Every reference recipe in conf/experiment runs a fast_dev_run step on tiny data in its real layout."""

from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.data_utils import write_cifar10
from tests.video_utils import make_video
from trainer.run import train

UCF_CLASSES = ["ApplyEyeMakeup", "Basketball"]


def write_ucf101(data_dir: Path) -> Path:
    """``ucf101/UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` and ``ucf101/ucfTrainTestlist`` as UCF101 ships them
    (1-based classInd, labelled train list, unlabelled test list, groups g01-g07 for test)."""
    root = data_dir / "ucf101"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    train, test = [], []
    for label, name in enumerate(UCF_CLASSES, start=1):
        for group in (1, 8, 9):
            clip = f"{name}/v_{name}_g{group:02d}_c01.avi"
            make_video(root / "UCF-101" / clip, 10)
            (test if group < 8 else train).append(clip)
            if group >= 8:
                train[-1] = f"{clip} {label}"
    (lists / "classInd.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(UCF_CLASSES, start=1)))
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    return root


ARID_CLASSES = ["Jump", "Run", "Sit", "Stand", "Turn", "Walk"]


def write_arid6(data_dir: Path) -> Path:
    """``arid6/train/<Class>/<Class>_<scene>_<n>.mp4``, ``classInd.txt`` (0-based, tab-separated) and the dev lists
    as ``../shared/data/arid6-train.tar`` ships them: two scenes a class, one for dev_train, one for dev_test."""
    root = data_dir / "arid6"
    lists = {"dev_train.txt": [], "dev_test.txt": []}
    for label, name in enumerate(ARID_CLASSES):
        for scene, split in ((2 * label + 1, "dev_train.txt"), (2 * label + 2, "dev_test.txt")):
            for n in (1, 2):
                clip = f"{name}/{name}_{scene}_{n}.mp4"
                make_video(root / "train" / clip, 12, height=24, width=32)
                lists[split].append(clip)
    (root / "classInd.txt").write_text("".join(f"{i}\t{n}\n" for i, n in enumerate(ARID_CLASSES)))
    for name, clips in lists.items():
        (root / name).write_text("\n".join(clips) + "\n")
    (root / "train_all.txt").write_text("\n".join(lists["dev_train.txt"] + lists["dev_test.txt"]) + "\n")
    return root


SHRINK_VIDEO = [
    "data.num_frames=4",
    "data.frame_stride=1",
    "data.crop_size=16",
    "data.short_side=16",
    "data.test_clips=2",
    "data.test_crops=1",
    "data.batch_size=2",
]
EXPERIMENTS = {
    "cifar10_airbench94": (
        lambda d: write_cifar10(d / "cifar10", n_per_batch=8, n_test=8),
        ["data.batch_size=8", "model.backbone.widths=[4,8,8]", "train_epochs=1.5", "callbacks.whitening.num_images=20"],
    ),
    "cifar10_resnet18": (
        lambda d: write_cifar10(d / "cifar10", n_per_batch=8, n_test=8),
        ["data.val_size=8", "data.batch_size=4", "trainer.accelerator=cpu"],
    ),
    "cifar10_lenet": (
        lambda d: write_cifar10(d / "cifar10", n_per_batch=8, n_test=8),
        ["data.val_size=8", "data.batch_size=4"],
    ),
    "video_synthetic": (
        lambda d: None,
        ["data.train_per_class=2", "data.val_per_class=1", "data.test_per_class=1", "data.batch_size=4"],
    ),
    "arid6_c3d": (write_arid6, [*SHRINK_VIDEO, "data.short_side=20"]),
    "arid6_cnn_gru": (write_arid6, [*SHRINK_VIDEO, "data.short_side=20"]),
    "arid6_r3d": (write_arid6, [*SHRINK_VIDEO, "data.short_side=20"]),
    "ucf101_cnn_lstm": (write_ucf101, ["data.num_classes=2", "data.val_size=0.5", *SHRINK_VIDEO]),
    "ucf101_r2plus1d": (write_ucf101, ["data.num_classes=2", "data.val_size=0.5", *SHRINK_VIDEO]),
}


def test_every_experiment_config_is_covered():
    assert sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")) == sorted(EXPERIMENTS)


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_runs_a_step(make_cfg, tmp_path, experiment):
    write_data, overrides = EXPERIMENTS[experiment]
    data_dir = tmp_path / "data"
    write_data(data_dir)
    cfg = make_cfg(
        f"experiment={experiment}",
        f"paths.data_dir={data_dir}",
        "trainer.fast_dev_run=true",
        "data.num_workers=0",
        "data.persistent_workers=false",
        *overrides,
    )
    assert cfg.task_name == experiment
    train(cfg)
