"""The video configs compose, build and run: experiments, model and temporal options, dataset checks."""

import pytest
import torch
from hydra.utils import instantiate

from nets.build import build_net
from trainer.run import train

TINY_SYNTHETIC = ["data.train_per_class=2", "data.val_per_class=1", "data.test_per_class=1"]


def test_video_synthetic_recipe_runs_end_to_end(make_cfg, tmp_path):
    data_dir = f"paths.data_dir={tmp_path / 'data'}"
    tiny = [*TINY_SYNTHETIC, "data.batch_size=4", "trainer.fast_dev_run=true"]
    cfg = make_cfg("experiment=video_synthetic", data_dir, *tiny)
    assert cfg.model.temporal._target_ == "models.temporal.LSTM" and not cfg.augment.train.transforms
    train(cfg)


@pytest.mark.parametrize(
    "overrides, temporal, features",
    [
        (["model=cnn_lstm"], "LSTM", 256),
        (["model=cnn_gru", "model.temporal.bidirectional=true"], "GRU", 512),
        (["model=cnn_lstm", "model/temporal=mean"], "MeanPool", 84),
        (["model=cnn_gru", "model/temporal=max"], "MaxPool", 84),
        (["model=r3d"], None, 512),
        (["model=r2plus1d"], None, 512),
        (["model=mc3"], None, 512),
    ],
)
def test_video_models_build_and_take_clips(make_cfg, overrides, temporal, features):
    cfg = make_cfg("data=synthetic_video", *overrides)
    net = build_net(cfg.model)
    assert type(net.temporal).__name__ == temporal if temporal else net.temporal is None
    assert net.num_features == features
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 4, 32, 32)).shape == (2, 4)  # (B, C, T, H, W) -> (B, num_classes)


@pytest.mark.parametrize("experiment", ["ucf101_cnn_lstm", "ucf101_r2plus1d"])
def test_ucf101_recipes_compose_and_fail_early_without_the_data(make_cfg, tmp_path, experiment):
    cfg = make_cfg(f"experiment={experiment}", f"paths.data_dir={tmp_path}")
    assert cfg.data.num_classes == 101 and cfg.model.num_classes == 101
    assert (cfg.data.test_clips, cfg.data.test_crops, cfg.data.crop_size) == (10, 3, 112)
    assert cfg.augment.train.transforms.flip._target_ == "albumentations.HorizontalFlip"
    with pytest.raises(FileNotFoundError, match="ucf101/UCF-101 is not a folder"):
        instantiate(cfg.data).check()


@pytest.mark.parametrize("data", ["video_folder", "hmdb51"])
def test_other_video_data_configs_fail_early_without_the_data(make_cfg, tmp_path, data):
    cfg = make_cfg(f"data={data}", f"paths.data_dir={tmp_path}", "data.num_classes=51")
    with pytest.raises(FileNotFoundError, match=f"{data}.*set data.root"):
        instantiate(cfg.data).check()
