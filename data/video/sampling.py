"""Which frames make a clip: ``num_frames`` indices ``frame_stride`` apart (or at ``target_fps``).

A clip starting at ``s`` takes frames ``s + floor(k * step)`` for ``k < num_frames``, where ``step`` is
``frame_stride`` or ``video_fps / target_fps``; it spans ``floor((num_frames - 1) * step) + 1`` frames.
Training draws ``s`` uniformly from the valid starts; testing takes ``num_clips`` starts evenly spaced from
the first frame to the last valid start, so the last clip ends on the last frame. A video shorter than one
span is looped: indices wrap around modulo its length.

``segments=True`` samples as TSN does (Wang et al. 2016) instead: the whole video is cut into ``num_frames``
equal segments and a clip takes one frame from each, a random one in training (temporal jitter), the
segment's middle at test (``num_clips`` > 1: evenly spaced positions within each segment). Every clip then
covers the whole video whatever its length, which suits short trimmed clips.
"""

from __future__ import annotations

import numpy as np


class ClipSampler:
    def __init__(
        self, *, num_frames: int, frame_stride: int = 1, target_fps: float | None = None, segments: bool = False
    ) -> None:
        if int(num_frames) < 1:
            raise ValueError(f"data.num_frames={num_frames} must be a positive integer")
        if target_fps is None and int(frame_stride) < 1:
            raise ValueError(f"data.frame_stride={frame_stride} must be a positive integer")
        if target_fps is not None and not float(target_fps) > 0:
            raise ValueError(f"data.target_fps={target_fps} must be positive (or null to use data.frame_stride)")
        self.num_frames = int(num_frames)
        self.frame_stride = int(frame_stride)
        self.target_fps = None if target_fps is None else float(target_fps)
        self.segments = bool(segments)

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

    def _edges(self, num_video_frames: int) -> np.ndarray:
        return np.linspace(0, num_video_frames, self.num_frames + 1)  # segment k is [edges[k], edges[k + 1])

    def random_clip(self, num_video_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
        if self.segments:
            edges = self._edges(num_video_frames)
            low = np.floor(edges[:-1]).astype(np.int64)
            high = np.maximum(low + 1, np.floor(edges[1:]).astype(np.int64))
            return rng.integers(low, high)  # (T,): one frame from each segment
        start = int(rng.integers(0, self.last_start(num_video_frames, fps) + 1))
        return self.indices(start, num_video_frames, fps)

    def uniform_clips(self, num_video_frames: int, fps: float, num_clips: int) -> list[np.ndarray]:
        """``num_clips`` clips with evenly spaced starts; one clip is centred."""
        if self.segments:
            edges = self._edges(num_video_frames)
            within = (np.arange(num_clips) + 0.5) / num_clips  # positions inside each segment
            return [
                np.minimum(np.floor(edges[:-1] + w * np.diff(edges)).astype(np.int64), num_video_frames - 1)
                for w in within
            ]
        last = self.last_start(num_video_frames, fps)
        if num_clips == 1:
            starts = [last // 2]
        else:
            starts = [k * last // (num_clips - 1) for k in range(num_clips)]
        return [self.indices(s, num_video_frames, fps) for s in starts]
