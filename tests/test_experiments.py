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
    "video_synthetic": (
        lambda d: None,
        ["data.train_per_class=2", "data.val_per_class=1", "data.test_per_class=1", "data.batch_size=4"],
    ),
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
