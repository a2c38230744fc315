"""Clip sampling: indices at the boundaries (short videos, the last clip), target fps, random starts."""

import numpy as np
import pytest

from data.video.sampling import ClipSampler


def test_clip_indices_are_strided_from_the_start():
    s = ClipSampler(num_frames=4, frame_stride=3)
    assert s.span(30.0) == 10
    assert s.indices(5, 100, 30.0).tolist() == [5, 8, 11, 14]


def test_uniform_clips_run_from_first_to_last_frame():
    s = ClipSampler(num_frames=4, frame_stride=2)  # span 7
    clips = s.uniform_clips(20, 30.0, 3)
    assert [c.tolist() for c in clips] == [[0, 2, 4, 6], [6, 8, 10, 12], [13, 15, 17, 19]]
    assert clips[-1][-1] == 19  # the last clip ends on the last frame


def test_single_test_clip_is_centred():
    s = ClipSampler(num_frames=4, frame_stride=2)
    assert s.uniform_clips(21, 30.0, 1)[0].tolist() == [7, 9, 11, 13]


def test_exact_fit_has_one_start():
    s = ClipSampler(num_frames=8, frame_stride=2)  # span 15
    assert [c.tolist() for c in s.uniform_clips(15, 30.0, 2)] == [list(range(0, 15, 2))] * 2
    rng = np.random.default_rng(0)
    assert {tuple(s.random_clip(16, 30.0, rng)) for _ in range(50)} == {
        tuple(range(0, 16, 2)),
        tuple(range(1, 16, 2)),
    }


def test_short_video_loops():
    s = ClipSampler(num_frames=6, frame_stride=2)  # span 11 > 4 frames
    assert s.uniform_clips(4, 30.0, 2)[1].tolist() == [0, 2, 0, 2, 0, 2]
    assert ClipSampler(num_frames=5).indices(0, 3, 30.0).tolist() == [0, 1, 2, 0, 1]
    rng = np.random.default_rng(0)
    assert all(s.random_clip(4, 30.0, rng).tolist() == [0, 2, 0, 2, 0, 2] for _ in range(10))


def test_random_clips_stay_inside_and_cover_all_starts():
    s = ClipSampler(num_frames=3, frame_stride=4)  # span 9
    rng = np.random.default_rng(0)
    starts = {int(s.random_clip(12, 30.0, rng)[0]) for _ in range(200)}
    assert starts == {0, 1, 2, 3}


def test_target_fps_resamples_by_time():
    s = ClipSampler(num_frames=4, target_fps=10)
    assert s.indices(0, 100, 30.0).tolist() == [0, 3, 6, 9]  # 30 fps video: every 3rd frame
    assert s.indices(0, 100, 25.0).tolist() == [0, 2, 5, 7]  # 2.5 frames apart, floored
    assert s.indices(0, 100, 5.0).tolist() == [0, 0, 1, 1]  # slower video: frames repeat


@pytest.mark.parametrize(
    "kw", [{"num_frames": 0}, {"num_frames": 4, "frame_stride": 0}, {"num_frames": 4, "target_fps": 0}]
)
def test_bad_settings_are_rejected(kw):
    with pytest.raises(ValueError, match="data."):
        ClipSampler(**kw)
