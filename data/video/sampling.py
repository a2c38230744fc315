"""Which frames make a clip: ``num_frames`` indices ``frame_stride`` apart (or at ``target_fps``).

A clip starting at ``s`` takes frames ``s + floor(k * step)`` for ``k < num_frames``, where ``step`` is
``frame_stride`` or ``video_fps / target_fps``; it spans ``floor((num_frames - 1) * step) + 1`` frames.
Training draws ``s`` uniformly from the valid starts; testing takes ``num_clips`` starts evenly spaced from
the first frame to the last valid start, so the last clip ends on the last frame. A video shorter than one
span is looped: indices wrap around modulo its length.
"""

from __future__ import annotations

import numpy as np


class ClipSampler:
    def __init__(self, *, num_frames: int, frame_stride: int = 1, target_fps: float | None = None) -> None:
        if int(num_frames) < 1:
            raise ValueError(f"data.num_frames={num_frames} must be a positive integer")
        if target_fps is None and int(frame_stride) < 1:
            raise ValueError(f"data.frame_stride={frame_stride} must be a positive integer")
        if target_fps is not None and not float(target_fps) > 0:
            raise ValueError(f"data.target_fps={target_fps} must be positive (or null to use data.frame_stride)")
        self.num_frames = int(num_frames)
        self.frame_stride = int(frame_stride)
        self.target_fps = None if target_fps is None else float(target_fps)

    def step(self, fps: float) -> float:
        """Source frames between two clip frames: the stride, or the ratio of the frame rates."""
        return self.frame_stride if self.target_fps is None else fps / self.target_fps

    def span(self, fps: float) -> int:
        return int(np.floor((self.num_frames - 1) * self.step(fps))) + 1

    def indices(self, start: int, num_video_frames: int, fps: float) -> np.ndarray:
        offsets = np.floor(np.arange(self.num_frames) * self.step(fps)).astype(np.int64)
        return (start + offsets) % num_video_frames  # (T,); wraps only for videos shorter than a span

    def last_start(self, num_video_frames: int, fps: float) -> int:
        return max(num_video_frames - self.span(fps), 0)

    def random_clip(self, num_video_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
        start = int(rng.integers(0, self.last_start(num_video_frames, fps) + 1))
        return self.indices(start, num_video_frames, fps)

    def uniform_clips(self, num_video_frames: int, fps: float, num_clips: int) -> list[np.ndarray]:
        """``num_clips`` clips with evenly spaced starts; one clip is centred."""
        last = self.last_start(num_video_frames, fps)
        if num_clips == 1:
            starts = [last // 2]
        else:
            starts = [k * last // (num_clips - 1) for k in range(num_clips)]
        return [self.indices(s, num_video_frames, fps) for s in starts]
