"""Every model-part preset (model/nonlocal, model/roi, model/fusion), alone and together, on images and on
videos, composes from the real config and trains a fast_dev_run step through trainer.run.train."""

from __future__ import annotations

import pytest

from trainer.run import train

# Tiny data: 16 px canvases with 2 digits (boxes in the batch), 4-frame 16 px synthetic clips.
IMAGES = [
    "model=resnet",
    "data=multi_digits",
    "data.canvas_size=16",
    "data.digit_size=8",
    "data.objects=2",
    "data.train_canvases=4",
    "data.val_canvases=2",
    "data.test_canvases=2",
    "data.batch_size=4",
]
CLIP_DATA = [
    "data=synthetic_video",
    "data.train_per_class=1",
    "data.val_per_class=1",
    "data.test_per_class=1",
    "data.video_frames=8",
    "data.frame_size=16",
    "data.crop_size=16",
    "data.num_frames=4",
    "data.frame_stride=1",
    "data.test_clips=1",
    "data.batch_size=2",
]
VIDEO_2D = [
    "model=resnet",
    "model/temporal=lstm",
    "model.temporal.hidden_size=8",
]  # y = LSTM(ROIPool(CNN(x_t)))
VIDEO_3D = ["model=r3d"]

ALONE = [
    ("nonlocal", "res3"),
    ("nonlocal", "res4"),
    ("nonlocal", "res34"),
    ("roi", "align"),
    ("roi", "pool"),
    ("fusion", "fpn"),
    ("fusion", "concat"),
    ("fusion", "weighted"),
]
TOGETHER = [
    [("nonlocal", "res34"), ("roi", "align"), ("fusion", "fpn")],
    [("nonlocal", "res4"), ("roi", "pool"), ("fusion", "concat")],
    [("nonlocal", "res3"), ("roi", "align"), ("fusion", "weighted")],
]


def part_overrides(make_cfg, base: list[str], parts: list[tuple[str, str]]):
    """Compose ``base`` plus the parts as ``model/<group>=<option>``."""
    return make_cfg(*base, *(f"model/{g}={o}" for g, o in parts), "debug=fast")


def run_parts(make_cfg, tmp_path, kind: str, parts: list[tuple[str, str]]) -> None:
    base = {"image": IMAGES, "video2d": [*VIDEO_2D, *CLIP_DATA], "video3d": [*VIDEO_3D, *CLIP_DATA]}[kind]
    if kind != "image":
        base = [*base, f"data.root={tmp_path / 'clips'}"]
    cfg = part_overrides(make_cfg, base, parts)
    for group, _ in parts:
        key = "non_local" if group == "nonlocal" else group
        assert cfg.model[key]["_partial_"] is True
    train(cfg)


@pytest.mark.parametrize("kind", ["image", "video2d", "video3d"])
def test_all_parts_together(make_cfg, tmp_path, kind):
    run_parts(make_cfg, tmp_path, kind, TOGETHER[0])


@pytest.mark.slow
@pytest.mark.parametrize("parts", [[p] for p in ALONE] + TOGETHER[1:], ids=lambda p: "+".join(o for _, o in p))
@pytest.mark.parametrize("kind", ["image", "video2d", "video3d"])
def test_each_preset(make_cfg, tmp_path, kind, parts):
    run_parts(make_cfg, tmp_path, kind, parts)
