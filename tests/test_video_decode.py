"""Decoding: right frames in the right order from every container, with and without audio, seeking or not."""

import av
import numpy as np
import pytest

from data.video.decode import VideoReader, VideoReadError, read_all
from tests.video_utils import frame_ids, make_video, numbered_frames


def test_numbered_frames_round_trip_without_codec():
    assert frame_ids(numbered_frames(40)).tolist() == list(range(40))


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".webm", ".mkv"])
@pytest.mark.parametrize("audio", [False, True])
def test_reader_frame_count_and_order(tmp_path, suffix, audio):
    path = make_video(tmp_path / f"v{suffix}", 45, audio=audio, gop=8)
    assert frame_ids(read_all(path)).tolist() == list(range(45))
    with VideoReader(path) as video:
        assert (video.meta.num_frames, video.meta.fps, video.meta.width, video.meta.height) == (
            45,
            30.0,
            48,
            32,
        )
        # Out of order, repeated, near the end, back to the start: each read seeks on its own.
        assert frame_ids(video.read([40, 35, 35, 44])).tolist() == [40, 35, 35, 44]
        assert frame_ids(video.read([0, 1, 2])).tolist() == [0, 1, 2]
        assert frame_ids(video.read([20, 22, 24], seek=False)).tolist() == [20, 22, 24]


def test_seeking_decodes_only_from_the_keyframe_before_the_clip(tmp_path):
    path = make_video(tmp_path / "v.mp4", 120, audio=True, gop=10)
    with VideoReader(path) as video:
        frames = video.read([100, 103, 106])
        seeking = video.decoded
    with VideoReader(path) as video:
        video.read([100, 103, 106], seek=False)
        linear = video.decoded
    assert frame_ids(frames).tolist() == [100, 103, 106]
    # Keyframes every 10 frames: from frame 100 to 106 (+ decoder look-ahead), never the 100 frames before.
    assert seeking <= 7 + 4 < linear
    assert linear >= 107


def test_resize_on_decode_keeps_aspect_and_order(tmp_path):
    path = make_video(tmp_path / "v.mp4", 10, height=32, width=48)
    with VideoReader(path, short_side=16) as video:
        frames = video.read([9, 3])
    assert frames.shape == (2, 16, 24, 3) and frames.dtype == np.uint8
    assert frame_ids(frames).tolist() == [9, 3]


def test_one_scaler_per_file_gives_pyavs_per_frame_conversion_exactly(tmp_path):
    # The reader keeps one swscale context for a file (data/video/decode.py): each frame must still come out
    # as its own array, equal to what frame.to_ndarray makes with a fresh context.
    path = make_video(tmp_path / "v.mp4", 12, height=32, width=48, audio=True)
    with av.open(str(path)) as container:
        expected = np.stack(
            [f.to_ndarray(format="rgb24", width=36, height=24) for f in container.decode(container.streams.video[0])]
        )
    frames = read_all(path, short_side=24)
    assert frames.shape == (12, 24, 36, 3)
    np.testing.assert_array_equal(frames, expected)
    with VideoReader(path, short_side=24) as video:
        np.testing.assert_array_equal(video.read([7, 2, 11]), expected[[7, 2, 11]])


def test_indices_past_the_end_repeat_the_last_frame(tmp_path):
    # A header may promise more frames than a file holds; the clip is still full-length.
    path = make_video(tmp_path / "v.mp4", 10)
    with VideoReader(path) as video:
        assert frame_ids(video.read([8, 9, 12])).tolist() == [8, 9, 9]


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 50])
def test_unreadable_files_raise_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoReadError, match="broken.mp4"):
        with VideoReader(path) as video:
            video.read([0])


def test_truncated_file_raises_or_reads_what_is_there(tmp_path):
    path = make_video(tmp_path / "v.mp4", 30)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])  # moov atom at the end: nothing usable remains
    with pytest.raises(VideoReadError, match="cut.mp4"):
        with VideoReader(cut) as video:
            video.read([0, 1])
