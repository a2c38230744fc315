"""extract.py mode=dense: windows and timestamps of real mp4 files, per-video files, resuming, 3D nets."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from data.transforms import Pipeline
from data.video.decode import read_all
from features.dense import DenseStore, WindowSpec, probe_frames
from features.extract import extract
from nets.build import build_net
from tests.video_utils import make_video, numbered_frames

STATS = ["data.mean=[0.2,0.2,0.2]", "data.std=[0.35,0.35,0.35]", "data.image_size=32", "data.num_frames=4"]
TRANSFORM = Pipeline(mean=[0.2] * 3, std=[0.35] * 3)


def dense(make_cfg, tmp_path, *overrides: str, out: str = "out", model: str = "lenet") -> dict:
    cfg = make_cfg(
        f"model={model}",
        f"input={tmp_path / 'in'}",
        f"output={tmp_path / out}",
        "mode=dense",
        "num_workers=0",
        "progress=false",
        "batch_size=3",
        *STATS,
        *overrides,
        config_name="extract",
        output_dir=tmp_path / "hydra",
    )
    torch.manual_seed(0)  # the untrained net's weights
    return extract(cfg)


def read_index(folder: Path) -> list[dict[str, str]]:
    with (folder / "index.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def lenet(make_cfg, model: str = "lenet") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_net(make_cfg(f"model={model}", "input=x", "output=y", config_name="extract").model).eval()


def write_vfr_mp4(path: Path, times_ms: list[int]) -> Path:
    """A numbered H.264 mp4 whose frames are shown at ``times_ms`` (a variable frame rate)."""
    frames = numbered_frames(len(times_ms))
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for t, image in zip(times_ms, frames, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_window_counts_timestamps_and_values(make_cfg, tmp_path):
    make_video(tmp_path / "in" / "a" / "long.mp4", 20, fps=30)
    make_video(tmp_path / "in" / "b" / "short.mp4", 3, fps=30)
    meta = dense(make_cfg, tmp_path, "stack=8", "step=4", "keep_partial=true")
    out = tmp_path / "out"
    index = read_index(out)
    # 20 frames: (20 - 8) // 4 + 1 = 4 full windows at 0, 4, 8, 12, then the partial one at 16 (4 real frames);
    # 3 frames: one window, padded.
    spans = [(r["path"], int(r["window"]), int(r["frames"]), int(r["start_frame"]), int(r["end_frame"])) for r in index]
    assert spans == [
        ("a/long.mp4", 0, 8, 0, 7),
        ("a/long.mp4", 1, 8, 4, 11),
        ("a/long.mp4", 2, 8, 8, 15),
        ("a/long.mp4", 3, 8, 12, 19),
        ("a/long.mp4", 4, 4, 16, 19),
        ("b/short.mp4", 0, 3, 0, 2),
    ]
    assert [(float(r["start_s"]), float(r["end_s"])) for r in index] == [
        (round(s / 30, 6), round((e + 1) / 30, 6)) for _, _, _, s, e in spans
    ]
    assert meta["rows"] == 6 and meta["videos"] == 2 and [r["label"] for r in index] == ["a"] * 5 + ["b"]
    long, short = np.load(out / "a" / "long.npy"), np.load(out / "b" / "short.npy")
    assert long.shape == (5, 84) and short.shape == (1, 84)

    net = lenet(make_cfg)
    for path, feats, windows in (("a/long.mp4", long, [range(8), range(12, 20), [16, 17, 18, 19, 19, 19, 19, 19]]),):
        frames = read_all(tmp_path / "in" / path, short_side=32)[:, :, 8:40]  # (20, 32, 32, 3) centre crop
        for row, frame_ids in zip((0, 3, 4), windows, strict=True):
            with torch.no_grad():
                expected = net.embed(TRANSFORM(np.ascontiguousarray(frames[list(frame_ids)]))[None])[0]
            np.testing.assert_allclose(feats[row], expected.numpy(), rtol=1e-4, atol=1e-5)
    frames = read_all(tmp_path / "in" / "b/short.mp4", short_side=32)[:, :, 8:40]
    with torch.no_grad():
        expected = net.embed(TRANSFORM(np.ascontiguousarray(frames[[0, 1, 2, 2, 2, 2, 2, 2]]))[None])[0]
    np.testing.assert_allclose(short[0], expected.numpy(), rtol=1e-4, atol=1e-5)

    # Without keep_partial the last 4 frames of the long video get no window of their own.
    dense(make_cfg, tmp_path, "stack=8", "step=4", out="no_partial")
    assert len(np.load(tmp_path / "no_partial" / "a" / "long.npy")) == 4


def test_per_frame_rows_of_an_image_net(make_cfg, tmp_path):
    make_video(tmp_path / "in" / "clip.mp4", 7, fps=25)
    dense(make_cfg, tmp_path, "stack=1", "step=1")
    feats = np.load(tmp_path / "out" / "clip.npy")
    index = read_index(tmp_path / "out")
    assert feats.shape == (7, 84) and [int(r["start_frame"]) for r in index] == list(range(7))
    assert [float(r["start_s"]) for r in index] == [round(i / 25, 6) for i in range(7)]
    frames = read_all(tmp_path / "in" / "clip.mp4", short_side=32)[:, :, 8:40]
    images = torch.stack([TRANSFORM(np.ascontiguousarray(f)) for f in frames])  # (7, 3, 32, 32)
    with torch.no_grad():
        expected = lenet(make_cfg).embed(images)  # one image at a time, as a 2D net sees photos
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_variable_frame_rate_times_come_from_timestamps(tmp_path):
    times_ms = [0, 40, 80, 200, 240, 400, 410, 500]
    path = write_vfr_mp4(tmp_path / "vfr.mp4", times_ms)
    times = probe_frames(path)
    np.testing.assert_allclose(times.seconds, np.array(times_ms) / 1000, atol=1e-9)
    assert times.end == pytest.approx(0.54)  # the last frame lasts its packet's 40 ms
    windows = WindowSpec(stack=2, step=2).windows(times)
    assert [(w.frames.tolist(), w.start_s, w.end_s) for w in windows] == [
        ([0, 1], 0.0, 0.08),
        ([2, 3], 0.08, 0.24),
        ([4, 5], 0.24, 0.41),
        ([6, 7], 0.41, pytest.approx(0.54)),
    ]
    # Resampled to 10 fps: instants 0, 0.1, ..., 0.5 show frames 0, 2, 3, 4, 5, 7.
    resampled = WindowSpec(stack=3, step=3, fps=10).windows(times)
    assert [w.frames.tolist() for w in resampled] == [[0, 2, 3], [4, 5, 7]]
    assert [(w.start_s, w.end_s) for w in resampled] == [(0.0, pytest.approx(0.3)), (pytest.approx(0.3), 0.54)]


def test_resampled_windows_of_a_constant_rate_file(make_cfg, tmp_path):
    make_video(tmp_path / "in" / "v.mp4", 30, fps=30)  # one second
    dense(make_cfg, tmp_path, "stack=4", "step=4", "fps=10")
    index = read_index(tmp_path / "out")
    # 10 instants (every third frame); (10 - 4) // 4 + 1 = 2 windows.
    assert [(int(r["start_frame"]), int(r["end_frame"]), float(r["start_s"]), float(r["end_s"])) for r in index] == [
        (0, 9, 0.0, 0.4),
        (12, 21, 0.4, 0.8),
    ]


def test_resumed_dense_extraction_equals_uninterrupted(make_cfg, tmp_path, monkeypatch):
    for i, n in enumerate((9, 5, 12)):
        make_video(tmp_path / "in" / f"v{i}.mp4", n)
    (tmp_path / "in" / "broken.mp4").write_bytes(b"not a video")
    common = ["stack=4", "step=2", "keep_partial=true", "dtype=float16"]
    dense(make_cfg, tmp_path, *common, out="whole")

    write, calls = DenseStore.write, []

    def interrupted(self, *args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt  # stopped after the first video's file
        calls.append(1)
        return write(self, *args, **kwargs)

    monkeypatch.setattr(DenseStore, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dense(make_cfg, tmp_path, *common)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npy")) == ["v0.npy"]
    monkeypatch.setattr(DenseStore, "write", write)
    dense(make_cfg, tmp_path, *common)
    names = ["index.csv", "failures.csv", "progress.json", "v0.npy", "v1.npy", "v2.npy"]
    for name in names:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    with (tmp_path / "out" / "failures.csv").open() as f:
        assert [r["path"] for r in csv.DictReader(f)] == ["broken.mp4"]
    assert np.load(tmp_path / "out" / "v2.npy").dtype == np.float16
    with pytest.raises(ValueError, match="other settings"):
        dense(make_cfg, tmp_path, "stack=4", "step=3")


def test_dense_with_a_3d_net(make_cfg, tmp_path):
    make_video(tmp_path / "in" / "v.mp4", 10)
    meta = dense(make_cfg, tmp_path, "stack=4", "step=3", "layers=[layer1,pooled]", model="r3d")
    assert meta["dim"] == 64
    pooled = np.load(tmp_path / "out" / "pooled" / "v.npy")
    assert pooled.shape == (3, 512) and np.load(tmp_path / "out" / "layer1" / "v.npy").shape == (3, 64)
    frames = read_all(tmp_path / "in" / "v.mp4", short_side=32)[:, :, 8:40]
    with torch.no_grad():
        expected = lenet(make_cfg, "r3d").embed(TRANSFORM(np.ascontiguousarray(frames[6:10]))[None])[0]
    np.testing.assert_allclose(pooled[2], expected.numpy(), rtol=1e-3, atol=1e-4)
