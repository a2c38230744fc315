"""extract.py: rows and labels of each input kind, named layers, ROI boxes, resuming, unreadable files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import roi_align

from data.base import seeded_split
from data.digits import digits_as_images
from data.transforms import Pipeline
from data.video.decode import read_all
from data.video.sampling import ClipSampler
from features.extract import extract
from features.knn import knn_accuracy, load_feature_set
from features.store import FeatureStore
from nets.build import build_net
from tests.conftest import run_script
from tests.video_utils import make_video_folder
from trainer.run import train

DIGIT_STATS = ["data.mean=[0.2,0.2,0.2]", "data.std=[0.35,0.35,0.35]", "data.image_size=32"]


def write_digits(root: Path, indices: np.ndarray, *, suffix: str = ".png") -> np.ndarray:
    """``root/<digit>/<index>.png`` class folders of sklearn digits (32x32 RGB); returns pixels (N, 3072)."""
    images, targets = digits_as_images(32)
    for i in indices:
        path = root / str(targets[i]) / f"{i:04d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(path)
    return images[indices].reshape(len(indices), -1).astype(np.float32)


def read_index(folder: Path) -> list[dict[str, str]]:
    with (folder / "index.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def lenet_digits(make_cfg, tmp_path, *overrides: str, out: str = "out") -> dict:
    """tmp_path/in -> tmp_path/<out> with an untrained LeNet (seeded) and the digits' statistics."""
    cfg = make_cfg(
        "model=lenet",
        f"input={tmp_path / 'in'}",
        f"output={tmp_path / out}",
        "num_workers=0",
        "progress=false",
        *DIGIT_STATS,
        *overrides,
        config_name="extract",
        output_dir=tmp_path / "hydra",
    )
    torch.manual_seed(0)  # the untrained net's weights
    return extract(cfg)


def test_trained_digits_features_beat_raw_pixels(make_cfg, tmp_path):
    """The held-out test digits: k-NN on the features of a briefly trained LeNet beats k-NN on raw pixels."""
    cfg = make_cfg(
        "trainer.max_epochs=8",
        "optimizer.lr=1e-2",
        "trainer.limit_train_batches=null",
        "trainer.limit_val_batches=1",
        "test=false",
        output_dir=tmp_path / "run",
    )
    train(cfg)
    n = len(digits_as_images(32)[1])
    test_idx, _, _ = seeded_split(n, (round(0.2 * n), round(0.1 * n), n - round(0.2 * n) - round(0.1 * n)), 0)
    pixels = write_digits(tmp_path / "digits", test_idx)
    out = tmp_path / "features"
    cfg = make_cfg(
        f"ckpt_path={tmp_path / 'run/checkpoints/last.ckpt'}",
        f"input={tmp_path / 'digits'}",
        f"output={out}",
        "num_workers=0",
        "progress=false",
        config_name="extract",
        output_dir=tmp_path / "hydra",
    )
    meta = extract(cfg)
    assert meta["rows"] == len(test_idx) and meta["dim"] == 84 and meta["preprocessing"]["image_size"] == 32

    features, labels, paths, left_out = load_feature_set(out)
    assert left_out == 0 and features.shape == (len(test_idx), 84)
    assert labels == [Path(p).parent.name for p in paths]  # the class folder
    feat_acc = knn_accuracy(features, labels)["knn/acc"]
    pixel_labels = [str(t) for t in digits_as_images(32)[1][test_idx]]
    pixel_acc = knn_accuracy(pixels, pixel_labels)["knn/acc"]
    assert feat_acc > 0.9 and feat_acc > pixel_acc + 0.01, (feat_acc, pixel_acc)


def test_video_folder_rows_are_videos_times_clips_in_order(make_cfg, tmp_path):
    make_video_folder(tmp_path / "in", {"a": 2, "b": 1}, num_frames=20)
    meta = lenet_digits(make_cfg, tmp_path, "data.num_frames=4", "data.frame_stride=2", "data.test_clips=3")
    out = tmp_path / "out"
    index = read_index(out)
    assert meta["kind"] == "videos" and meta["rows"] == 9
    assert [(r["path"], r["label"], r["clip"]) for r in index] == [
        (f"{v}", v.split("/")[0], str(c)) for v in ("a/a_00.mp4", "a/a_01.mp4", "b/b_00.mp4") for c in range(3)
    ]
    # Clips of 4 frames 2 apart span 7 frames; 3 starts evenly spaced over 0..13.
    assert [(int(r["start_frame"]), int(r["end_frame"])) for r in index[:3]] == [(0, 6), (6, 12), (13, 19)]
    assert float(index[2]["start_s"]) == pytest.approx(13 / 30, abs=1e-6)
    assert float(index[2]["end_s"]) == pytest.approx(20 / 30, abs=1e-6)

    # Each row equals the net's features of that clip decoded independently (every frame, then picked).
    torch.manual_seed(0)
    net = build_net(make_cfg("model=lenet", "input=x", "output=y", config_name="extract").model).eval()
    transform = Pipeline(mean=[0.2] * 3, std=[0.35] * 3)
    features = np.load(out / "features.npy")
    for row in (0, 4, 8):
        frames = read_all(tmp_path / "in" / index[row]["path"], short_side=32)  # (20, 32, 48, 3)
        clip = ClipSampler(num_frames=4, frame_stride=2).uniform_clips(20, 30.0, 3)[int(index[row]["clip"])]
        x = transform(np.ascontiguousarray(frames[clip, :, 8:40]))[None]  # (1, 3, 4, 32, 32)
        with torch.no_grad():
            expected = net.embed(x)[0].numpy()
        np.testing.assert_allclose(features[row], expected, rtol=1e-4, atol=1e-5)
    means = np.load(out / "video_mean" / "features.npy")
    np.testing.assert_allclose(means, features.reshape(3, 3, -1).mean(1), rtol=1e-6)
    assert [r["path"] for r in read_index(out / "video_mean")] == ["a/a_00.mp4", "a/a_01.mp4", "b/b_00.mp4"]


def test_named_layer_pooling_and_flattened_maps(make_cfg, tmp_path):
    write_digits(tmp_path / "in", np.arange(6))
    torch.manual_seed(0)
    net = build_net(make_cfg("model=lenet", "input=x", "output=y", config_name="extract").model).eval()
    x = torch.stack(
        [
            Pipeline(mean=[0.2] * 3, std=[0.35] * 3)(np.asarray(Image.open(p).convert("RGB")))
            for p in sorted((tmp_path / "in").rglob("*.png"))
        ]
    )
    with torch.no_grad():
        fmap = net.backbone.forward_stages(x, ["conv2"])["conv2"]  # (6, 16, 6, 6)
    for pool, expected in (("avg", fmap.mean((2, 3))), ("max", fmap.amax((2, 3))), ("none", fmap.flatten(1))):
        meta = lenet_digits(make_cfg, tmp_path, "layer=conv2", f"pool={pool}", "resume=false")
        features = np.load(tmp_path / "out" / "features.npy")
        assert features.shape == tuple(expected.shape)
        np.testing.assert_allclose(features, expected.numpy(), rtol=1e-4, atol=1e-6)
        assert meta["map_shape"] == ([16, 6, 6] if pool == "none" else None)


def test_roi_features_one_row_per_box(make_cfg, tmp_path):
    write_digits(tmp_path / "in", np.arange(3))
    files = sorted(p.relative_to(tmp_path / "in").as_posix() for p in (tmp_path / "in").rglob("*.png"))
    boxes = {files[0]: [[0, 0, 16, 16], [8, 4, 32, 30]], files[2]: [[2, 2, 20, 12]]}  # files[1] has none
    with (tmp_path / "boxes.csv").open("w") as f:
        f.write("file,x1,y1,x2,y2\n" + "".join(f"{k},{','.join(map(str, b))}\n" for k, bs in boxes.items() for b in bs))
    meta = lenet_digits(make_cfg, tmp_path, f"boxes={tmp_path / 'boxes.csv'}", "layer=conv1")
    index = read_index(tmp_path / "out")
    assert meta["rows"] == 3 and meta["dim"] == 6
    assert [(r["path"], r["box"], r["x2"]) for r in index] == [
        (files[0], "0", "16.0"),
        (files[0], "1", "32.0"),
        (files[2], "0", "20.0"),
    ]
    torch.manual_seed(0)
    net = build_net(make_cfg("model=lenet", "input=x", "output=y", config_name="extract").model).eval()
    transform = Pipeline(mean=[0.2] * 3, std=[0.35] * 3)
    x = torch.stack([transform(np.asarray(Image.open(tmp_path / "in" / k).convert("RGB"))) for k in boxes])
    with torch.no_grad():
        fmap = net.backbone.forward_stages(x, ["conv1"])["conv1"]  # (2, 6, 16, 16), stride 2
    cells = roi_align(
        fmap,
        [torch.tensor(b, dtype=torch.float32) for b in boxes.values()],
        7,
        spatial_scale=0.5,
        sampling_ratio=2,
        aligned=True,
    )  # (3, 6, 7, 7)
    np.testing.assert_allclose(
        np.load(tmp_path / "out" / "features.npy"), cells.mean((2, 3)).numpy(), rtol=1e-4, atol=1e-6
    )


def test_corrupt_file_lands_in_failures_with_nan_row(make_cfg, tmp_path):
    write_digits(tmp_path / "in", np.arange(8))
    bad = tmp_path / "in" / "3" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    lenet_digits(make_cfg, tmp_path)
    out = tmp_path / "out"
    index = read_index(out)
    bad_row = next(int(r["row"]) for r in index if r["path"] == "3/broken.jpg")
    with (out / "failures.csv").open(newline="") as f:
        failures = list(csv.DictReader(f))
    assert [(int(r["row"]), r["path"]) for r in failures] == [(bad_row, "3/broken.jpg")]
    assert failures[0]["error"].startswith("OSError")  # what PIL says of a truncated JPEG
    features = np.load(out / "features.npy")
    assert len(features) == 9 and np.isnan(features[bad_row]).all()
    assert np.isfinite(np.delete(features, bad_row, axis=0)).all()
    assert load_feature_set(out)[3] == 1  # k-NN leaves the failed row out


def test_resumed_extraction_equals_uninterrupted(make_cfg, tmp_path, monkeypatch):
    write_digits(tmp_path / "in", np.arange(40))
    (tmp_path / "in" / "5" / "empty.png").write_bytes(b"")
    common = ["batch_size=8", "dtype=float16"]
    lenet_digits(make_cfg, tmp_path, *common, out="whole")

    write = FeatureStore.write
    calls = []

    def interrupted(self, *args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the job were stopped after three batches
        calls.append(1)
        return write(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lenet_digits(make_cfg, tmp_path, *common)
    assert json.loads((tmp_path / "out" / "progress.json").read_text())["done_items"] == 24
    monkeypatch.setattr(FeatureStore, "write", write)
    lenet_digits(make_cfg, tmp_path, *common)

    for name in ("features.npy", "index.csv", "failures.csv"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert np.load(tmp_path / "out" / "features.npy").dtype == np.float16
    with pytest.raises(ValueError, match="other settings"):
        lenet_digits(make_cfg, tmp_path, *common, "layer=conv1")


@pytest.mark.slow  # a fresh interpreter plus a loader worker: ~30 s on two busy cores
def test_extract_script_from_a_file_list(tmp_path):
    write_digits(tmp_path / "in", np.arange(4))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "in").rglob("*.png"))
    (tmp_path / "list.txt").write_text("".join(f"{f} {i % 2}\n" for i, f in enumerate(files)))
    run_script(
        "extract.py",
        "model=lenet",
        f"input={tmp_path / 'list.txt'}",
        f"output={tmp_path / 'out'}",
        "num_workers=1",
        *DIGIT_STATS,
        f"hydra.run.dir={tmp_path / 'hydra'}",
    )
    index = read_index(tmp_path / "out")
    assert [(r["path"], r["label"]) for r in index] == [(f, str(i % 2)) for i, f in enumerate(files)]
    assert np.load(tmp_path / "out" / "features.npy", mmap_mode="r").shape == (4, 84)


def test_several_layers_in_one_pass_equal_single_layer_runs(make_cfg, tmp_path):
    write_digits(tmp_path / "in", np.arange(10))
    common = ["batch_size=4"]
    lenet_digits(make_cfg, tmp_path, *common, "layers=[conv1,conv2,pooled]", "pool={conv1: max, conv2: none}")
    singles = {"conv1": ["layer=conv1", "pool=max"], "conv2": ["layer=conv2", "pool=none"], "pooled": []}
    for layer, overrides in singles.items():
        meta = lenet_digits(make_cfg, tmp_path, *common, *overrides, out=f"single_{layer}")
        for name in ("features.npy", "index.csv", "progress.json"):
            together = (tmp_path / "out" / layer / name).read_bytes()
            assert together == (tmp_path / f"single_{layer}" / name).read_bytes(), (layer, name)
        saved = json.loads((tmp_path / "out" / layer / "meta.json").read_text())
        assert saved["dim"] == meta["dim"] and saved["map_shape"] == meta["map_shape"]
    assert np.load(tmp_path / "out" / "conv2" / "features.npy").shape == (10, 16 * 6 * 6)


def test_one_forward_pass_serves_every_layer(make_cfg):
    from features.embed import Embedder

    net = build_net(make_cfg("model=lenet", "input=x", "output=y", config_name="extract").model).eval()
    calls = []
    net.backbone.conv1[0].register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape))
    embedder = Embedder(net, layers=["conv1", "conv2", "pooled"], pools={})
    with torch.no_grad():
        feats = embedder(torch.randn(2, 3, 32, 32))
    assert len(calls) == 1 and {k: tuple(v.shape) for k, v in feats.items()} == {
        "conv1": (2, 6),
        "conv2": (2, 16),
        "pooled": (2, 84),
    }


def test_roi_tubes_follow_tracks_through_each_clip(make_cfg, tmp_path):
    from tests.video_utils import make_video

    make_video(tmp_path / "in" / "v.mp4", 12)  # 48x32 frames
    tracks = [[[t, 0, 16 + t, 16] for t in range(12)], [[0, 8, 48, 32]] * 12]  # (K=2, T=12, 4): one moves
    (tmp_path / "boxes.json").write_text(json.dumps({"v.mp4": tracks}))
    meta = lenet_digits(
        make_cfg,
        tmp_path,
        f"boxes={tmp_path / 'boxes.json'}",
        "layer=conv1",
        "data.num_frames=4",
        "data.frame_stride=2",
        "data.test_clips=2",
    )
    index = read_index(tmp_path / "out")
    assert meta["rows"] == 4 and [(r["clip"], r["box"], r["start_frame"]) for r in index] == [
        ("0", "0", "0"),
        ("0", "1", "0"),
        ("1", "0", "5"),
        ("1", "1", "5"),
    ]
    torch.manual_seed(0)
    net = build_net(make_cfg("model=lenet", "input=x", "output=y", config_name="extract").model).eval()
    frames = read_all(tmp_path / "in" / "v.mp4")  # (12, 32, 48, 3)
    features = np.load(tmp_path / "out" / "features.npy")
    scale = torch.tensor([32 / 48, 1.0, 32 / 48, 1.0])
    for clip, start in ((0, 0), (1, 5)):
        ids = [start + 2 * k for k in range(4)]
        resized = np.stack([np.asarray(Image.fromarray(f).resize((32, 32), Image.BILINEAR)) for f in frames[ids]])
        x = Pipeline(mean=[0.2] * 3, std=[0.35] * 3)(resized).transpose(0, 1)  # (4, 3, 32, 32): the frames
        with torch.no_grad():
            fmap = net.backbone.forward_stages(x, ["conv1"])["conv1"]  # (4, 6, 16, 16)
        boxes = torch.tensor(tracks, dtype=torch.float32)[:, ids] * scale  # (2, 4, 4)
        cells = roi_align(fmap, list(boxes.transpose(0, 1)), 7, spatial_scale=0.5, sampling_ratio=2, aligned=True)
        expected = cells.reshape(4, 2, 6, 7, 7).mean(0).mean((2, 3))  # per box: frames averaged, then cells
        np.testing.assert_allclose(features[2 * clip : 2 * clip + 2], expected.numpy(), rtol=1e-4, atol=1e-6)


def test_extract_bench_prints_both_ratios(monkeypatch, capsys):
    import runpy
    import sys

    from hydra.core.global_hydra import GlobalHydra

    args = ["--images", "8", "--videos", "1", "--repeats", "1", "--workers", "0", "--image-size", "32"]
    monkeypatch.setattr(sys, "argv", ["bench/extract.py", *args])
    try:
        runpy.run_module("bench.extract", run_name="__main__")
    finally:
        GlobalHydra.instance().clear()
    lines = [line for line in capsys.readouterr().out.splitlines() if "ratio=" in line]
    assert [line.split(":")[0] for line in lines] == ["images", "videos"], lines
    assert "8 images" in lines[0] and "3 clips" in lines[1]
    assert all(float(line.rsplit("ratio=", 1)[1]) > 0 for line in lines)
