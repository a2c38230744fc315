"""What real small video needs, as general options: the decoded-clip cache (data.in_memory for videos), TSN
segment sampling, frame differences as input (model/input_stream), per-clip normalisation and the low-light
and video augmentation presets."""

import logging

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from data.base import collate
from data.transforms import Pipeline
from data.video import cache
from data.video.datamodule import VideoDataModule
from data.video.decode import VideoReadError, read_all
from data.video.sampling import ClipSampler
from models.motion import FrameDifference
from models.net import Net
from models.x3d import X3D
from nets.build import build_net
from tests.video_utils import frame_ids, make_video_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_video_folder(root, {"jump": 3, "run": 3}, num_frames=20, height=32, width=40)
    (root / "run" / "broken.mp4").write_bytes(b"\x00" * 100)
    return root


def datamodule(root, **kw):
    args = dict(
        root=str(root),
        num_frames=4,
        frame_stride=3,
        crop_size=32,
        test_size=2,
        val_size=1,
        batch_size=2,
        test_clips=3,
        test_crops=3,
        skip_unreadable_eval=True,
    )
    return VideoDataModule(**{**args, **kw})


def ids(x: torch.Tensor) -> list[int]:
    return frame_ids(x.permute(1, 2, 3, 0).numpy() * 255).tolist()  # (C, T, H, W) in [0, 1]


@pytest.mark.parametrize("sampling", ["stride", "segments"])
def test_cached_clips_equal_decoded_clips(folder, sampling):
    """Every evaluation view (3 clips x 3 crops) is the same tensor from memory as from the file."""
    per_clip, held = (
        datamodule(folder, clip_sampling=sampling),
        datamodule(folder, clip_sampling=sampling, in_memory=True),
    )
    per_clip.setup(), held.setup()
    assert held.test_set.decoded is not None and per_clip.test_set.decoded is None
    for a, b in [(per_clip.test_set, held.test_set), (per_clip.val_set, held.val_set)]:
        assert len(a) == len(b)
        for i in range(len(a)):
            x, y = a[i], b[i]
            if x is None:  # the broken file: skipped both ways
                assert y is None
                continue
            assert torch.equal(x["input"], y["input"]) and x["target"] == y["target"] and x["path"] == y["path"]


def test_cache_decodes_each_video_once_and_trains_from_memory(folder, monkeypatch):
    calls = []
    real = cache.read_all_with_fps

    def spy(path, **kw):
        out = real(path, **kw)  # raises for the broken file: only decoded videos are counted
        calls.append(path)
        return out

    monkeypatch.setattr(cache, "read_all_with_fps", spy)
    dm = datamodule(folder, in_memory=True, num_workers=0)
    dm.setup()
    assert len(calls) == len(set(calls)) == 6  # each readable video decoded once over all splits
    held = {
        p: v
        for split in (dm.train_set, dm.val_set, dm.test_set)
        for (p, _), v in zip(split.videos, split.decoded, strict=True)
    }
    assert len(held) == 7 and sum(v.frames is None for v in held.values()) == 1  # the broken file: its error
    import data.video.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "VideoReader", None)  # any file access now fails
    batch = collate([dm.train_set[i] for i in range(len(dm.train_set))])
    assert batch["input"].shape[1:] == (3, 4, 32, 32)
    assert batch["num_skipped"] == sum(1 for p, _ in dm.train_set.videos if p.endswith("broken.mp4"))


def test_cached_unreadable_video_follows_the_skip_rules(folder, caplog):
    videos = [(str(p), 0) for p in sorted(folder.rglob("*.mp4"))]
    decoded = cache.decode_videos([p for p, _ in videos], short_side=32)
    bad = next(i for i, (p, _) in enumerate(videos) if p.endswith("broken.mp4"))
    assert decoded[bad].frames is None and "broken.mp4" in decoded[bad].error
    strict = datamodule(folder, skip_unreadable_eval=False)
    strict.check()
    ds = strict._dataset([(p, 0) for p, _ in videos], train=False).with_decoded(
        dict(zip([p for p, _ in videos], decoded, strict=True))
    )
    with pytest.raises(VideoReadError, match=r"broken\.mp4.*skip_unreadable_eval"):
        ds[bad * ds.views_per_video]
    lenient = strict._dataset([(p, 0) for p, _ in videos], train=True).with_decoded(
        dict(zip([p for p, _ in videos], decoded, strict=True))
    )
    lenient.skip_unreadable = True
    with caplog.at_level(logging.WARNING):
        assert lenient[bad] is None
    assert "broken.mp4" in caplog.text


def test_auto_holds_what_fits_and_decodes_per_clip_otherwise(folder, monkeypatch, caplog):
    dm = datamodule(folder, in_memory="auto")
    dm.setup()
    assert dm.train_set.decoded is not None
    need = cache.decoded_size([p for p, _ in dm.train_set.videos], 32)
    assert need == sum(read_all(p, short_side=32).nbytes for p, _ in dm.train_set.videos if "broken" not in p)
    monkeypatch.setattr(cache, "available_memory", lambda: need)  # half of it is less than the frames need
    small = datamodule(folder, in_memory="auto")
    with caplog.at_level(logging.INFO):
        small.setup()
    assert small.train_set.decoded is None and "per-clip decoding" in caplog.text
    with pytest.raises(ValueError, match=r"data.in_memory='yes' must be true, false or auto"):
        datamodule(folder, in_memory="yes").setup()


def test_segment_sampling_covers_the_whole_video():
    s = ClipSampler(num_frames=4, segments=True)
    assert [c.tolist() for c in s.uniform_clips(20, 30.0, 1)] == [[2, 7, 12, 17]]
    assert [c.tolist() for c in s.uniform_clips(20, 30.0, 2)] == [[1, 6, 11, 16], [3, 8, 13, 18]]
    rng = np.random.default_rng(0)
    draws = np.stack([s.random_clip(20, 30.0, rng) for _ in range(400)])  # (400, 4)
    for k in range(4):  # each frame from its own segment, every frame of it drawn
        assert set(draws[:, k]) == set(range(5 * k, 5 * k + 5))
    short = ClipSampler(num_frames=8, segments=True).uniform_clips(3, 30.0, 1)[0]
    assert short.min() >= 0 and short.max() <= 2 and len(short) == 8
    with pytest.raises(ValueError, match="data.clip_sampling='tsn' is unknown"):
        VideoDataModule(root="x", clip_sampling="tsn")


def test_segment_sampling_reads_the_right_frames(folder):
    dm = datamodule(folder, clip_sampling="segments", num_frames=5, test_clips=1, test_crops=1)
    dm.setup()
    sample = next(s for s in (dm.test_set[i] for i in range(len(dm.test_set))) if s is not None)
    assert ids(sample["input"]) == [2, 6, 10, 14, 18]  # 20 frames, 5 segments of 4: the middle of each


def test_frame_differences_as_input_of_any_video_model():
    clip = torch.rand(2, 3, 5, 32, 32)  # (B, C, T, H, W)
    diff = FrameDifference(mode="diff")(clip)
    assert diff.shape == (2, 3, 4, 32, 32) and torch.allclose(diff[:, :, 1], clip[:, :, 2] - clip[:, :, 1])
    both = FrameDifference(mode="rgb_diff")(clip)
    assert both.shape == (2, 6, 4, 32, 32) and torch.equal(both[:, :3], clip[:, :, 1:])
    static = clip[:, :, :1].expand_as(clip)  # a still scene: nothing but zeros reaches the backbone
    assert FrameDifference(mode="diff")(static).abs().max() == 0
    net = Net(backbone=X3D(variant="xs", in_chans=6), num_classes=4, input_stream=FrameDifference(mode="rgb_diff"))
    assert net(clip).shape == (2, 4)
    with pytest.raises(ValueError, match="at least 2 frames"):
        FrameDifference()(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="mode='flow' is unknown"):
        FrameDifference(mode="flow")


def test_input_stream_configs_compose_for_cnn_lstm_and_3d(make_cfg):
    for model, stream, chans in [("cnn_gru", "rgb_diff", 6), ("x3d", "diff", 3)]:
        cfg = make_cfg("data=synthetic_video", f"model={model}", f"model/input_stream={stream}")
        net = build_net(cfg.model)
        assert isinstance(net.input_stream, FrameDifference) and net.input_stream.mode == stream
        assert cfg.model.backbone.get("in_chans", 3) == chans
        assert net(torch.rand(2, 3, 4, 32, 32)).shape == (2, 4)


def test_per_clip_normalisation_standardises_each_clip():
    clip = np.random.default_rng(0).integers(0, 40, (4, 16, 16, 3), dtype=np.uint8)  # a dark clip
    x = Pipeline(mean=[0.5] * 3, std=[0.2] * 3, per_sample_norm=True)(clip)  # (C, T, H, W)
    assert x.shape == (3, 4, 16, 16)
    assert torch.allclose(x.mean((1, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((1, 2, 3), unbiased=False), torch.ones(3), atol=0.02)
    flat = Pipeline(mean=[0.5] * 3, std=[0.2] * 3, per_sample_norm=True)(np.zeros((2, 8, 8, 3), np.uint8))
    assert torch.isfinite(flat).all() and flat.abs().max() == 0


@pytest.mark.parametrize("lowlight", ["gamma", "equalize", "clahe", "clip_norm"])
def test_lowlight_presets_brighten_or_standardise_train_and_eval(make_cfg, lowlight):
    cfg = make_cfg("data=synthetic_video", "augment=video_strong", f"augment/lowlight={lowlight}")
    dark = np.random.default_rng(1).integers(0, 30, (4, 32, 32, 3), dtype=np.uint8)
    plain = Pipeline(mean=cfg.data.mean, std=cfg.data.std)(dark)
    for split in ("train", "eval"):
        pipe = instantiate(cfg.augment[split])
        out = pipe(dark)
        assert out.shape == (3, 4, 32, 32)
        # every option lifts the dark clip's mean above what plain normalisation gives it
        assert out.mean() > plain.mean() + 0.5, (lowlight, split, float(out.mean()), float(plain.mean()))


def test_video_augment_presets_draw_once_per_clip(make_cfg):
    cfg = make_cfg("data=synthetic_video", "augment=video_strong")
    pipe = instantiate(cfg.augment.train)
    assert {"flip", "brightness_contrast", "resized_crop", "gamma_jitter"} <= set(pipe.names)
    clip = np.repeat(np.random.default_rng(2).integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), 4, axis=0)
    for _ in range(5):  # four equal frames stay equal: crop, flip and colour are one draw for the clip
        out = pipe(clip)
        assert out.shape == (3, 4, 32, 32)
        assert all(torch.equal(out[:, 0], out[:, t]) for t in range(1, 4))


def test_extraction_and_prediction_sample_clips_as_the_checkpoint_was_trained():
    """A net trained on TSN segments is fed segments by extract.py and predict.py too (its data config says so)."""
    from omegaconf import OmegaConf

    from features.extract import resolve_preprocessing

    stored = {"data": {"num_frames": 4, "frame_stride": 2, "crop_size": 32, "clip_sampling": "segments"}}
    stored["data"].update(mean=[0.5] * 3, std=[0.2] * 3)
    fallback = OmegaConf.create({"num_frames": 8, "frame_stride": 2, "crop_size": None, "test_clips": 1})
    prep = resolve_preprocessing(OmegaConf.create({}), stored, fallback)
    assert prep.clip_sampling == "segments"
    assert prep.clip_sampler().uniform_clips(20, 30.0, 1)[0].tolist() == [2, 7, 12, 17]
    stored["data"].pop("clip_sampling")  # older checkpoints: the stride sampling they were trained with
    assert resolve_preprocessing(OmegaConf.create({}), stored, fallback).clip_sampler().segments is False
