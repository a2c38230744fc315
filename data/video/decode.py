"""Reading frames by index from any file FFmpeg reads, decoding only the stretch a clip needs.

Flow of ``VideoReader.read(indices)``: seek to the keyframe at or before the first wanted frame, decode
(video packets only; audio is demuxed past, never decoded) until the last wanted frame, and convert just the
wanted frames to RGB, resized on the fly by swscale. A frame's index is its presentation time times the
stream's frame rate, so seeking never has to count frames. Frames a file lacks (a header that overstates the
frame count, dropped frames in variable-frame-rate files) are filled with the nearest earlier decoded frame.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter


class VideoReadError(RuntimeError):
    """A file that cannot be opened or decoded, or that holds no video frames."""


@dataclass(frozen=True)
class VideoMeta:
    num_frames: int
    fps: float
    width: int
    height: int


class VideoReader:
    """An open video file: ``with VideoReader(path) as video: video.read(indices)``.

    Args:
        path: the file.
        short_side: resize decoded frames so that their shorter side has this many pixels (None: keep).
        threads: decoder threads; 1 suits data-loader workers, which already run in parallel.
    """

    def __init__(self, path: str | Path, *, short_side: int | None = None, threads: int = 1) -> None:
        self.path = Path(path)
        try:
            self.container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as err:
            raise VideoReadError(f"cannot open video {self.path}: {err}") from err
        if not self.container.streams.video:
            self.container.close()
            raise VideoReadError(f"{self.path} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_count = threads
        self.short_side = short_side
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        if not rate:
            self.close()
            raise VideoReadError(f"{self.path}: the video stream has no frame rate")
        self.fps = float(rate)
        self.start_pts = self.stream.start_time or 0
        self.meta = VideoMeta(self._count_frames(), self.fps, self.stream.width, self.stream.height)
        if self.meta.num_frames == 0:
            self.close()
            raise VideoReadError(f"{self.path} has no video frames")
        # One swscale context for the whole file: frame.to_ndarray(width=..., format=...) builds a new one for every
        # frame, which costs about as much as the conversion itself at small sizes (bench.loading --video).
        self._reformatter = VideoReformatter()
        self._at_start = True  # nothing decoded yet: reading from the first frame needs no seek
        self.decoded = 0  # frames decoded so far (what seeking saves; read by tests and the benchmark)

    def _count_frames(self) -> int:
        if self.stream.frames > 0:  # from the container header (MP4, AVI)
            return int(self.stream.frames)
        # Matroska/WebM headers carry no count: count packets, which demuxes without decoding.
        try:
            count = sum(1 for packet in self.container.demux(self.stream) if packet.size)
            self.container.seek(self.start_pts, stream=self.stream, backward=True)
        except av.error.FFmpegError as err:
            raise VideoReadError(f"cannot read video {self.path}: {err}") from err
        return count

    def _index(self, frame: av.VideoFrame) -> int:
        return round(float((frame.pts - self.start_pts) * self.stream.time_base) * self.fps)

    def _size(self) -> tuple[int | None, int | None]:
        if self.short_side is None:
            return None, None
        w, h = self.meta.width, self.meta.height
        scale = self.short_side / min(w, h)
        return max(1, round(w * scale)), max(1, round(h * scale))

    def rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """``frame`` as ``(H, W, 3)`` uint8 RGB, resized to ``short_side``."""
        width, height = self._size()
        return self._reformatter.reformat(frame, width=width, height=height, format="rgb24").to_ndarray()

    def read(self, indices: Sequence[int], *, seek: bool = True) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as ``(T, H, W, 3)`` uint8 RGB.

        ``seek=False`` decodes from the start of the file instead of jumping near the first index (the
        baseline of ``bench/video_decode.py``; also what happens when seeking lands past the target).
        """
        wanted = sorted(set(int(i) for i in indices))
        if not wanted or wanted[0] < 0:
            raise ValueError(f"frame indices must be non-negative and non-empty; got {list(indices)}")
        try:
            frames = self._decode(wanted, seek=seek)
            if frames is None:  # the seek landed after the first wanted frame: decode from the start
                frames = self._decode(wanted, seek=False)
        except av.error.FFmpegError as err:
            raise VideoReadError(f"cannot decode video {self.path}: {err}") from err
        if not frames:
            raise VideoReadError(f"{self.path}: no frame decoded for indices {wanted[0]}..{wanted[-1]}")
        have = sorted(frames)
        # A missing index takes the nearest earlier decoded frame (the first one if none is earlier).
        pick = [frames[have[max(bisect.bisect_right(have, i) - 1, 0)]] for i in indices]
        return np.stack(pick)  # (T, H, W, 3)

    def _decode(self, wanted: list[int], *, seek: bool) -> dict[int, np.ndarray] | None:
        first, last = wanted[0], wanted[-1]
        wanted_set = set(wanted)
        if seek and first > 0:
            target = self.start_pts + int(first / self.fps / self.stream.time_base)
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        elif not self._at_start:
            self.container.seek(self.start_pts, stream=self.stream, backward=True, any_frame=False)
        self._at_start = False
        out: dict[int, np.ndarray] = {}
        counted = -1
        for n, frame in enumerate(self.container.decode(self.stream)):
            self.decoded += 1
            if frame.pts is None:  # no timestamps (rare raw streams): count frames from the start
                if seek and first > 0:
                    return None
                counted += 1
                index = counted
            else:
                index = self._index(frame)
            if n == 0 and index > first and seek and first > 0:
                return None
            if index > last:
                break
            if index in wanted_set and index not in out:
                out[index] = self.rgb(frame)
        return out

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_all(path: str | Path, *, short_side: int | None = None) -> np.ndarray:
    """Every frame of ``path`` as ``(N, H, W, 3)`` uint8: the decode-everything baseline and a test oracle."""
    return read_all_with_fps(path, short_side=short_side)[0]


def read_all_with_fps(path: str | Path, *, short_side: int | None = None) -> tuple[np.ndarray, float]:
    """``read_all`` and the stream's frame rate, from one opening of the file (the decoded-clip cache)."""
    with VideoReader(path, short_side=short_side) as video:
        try:
            frames = [video.rgb(f) for f in video.container.decode(video.stream)]
        except av.error.FFmpegError as err:
            raise VideoReadError(f"cannot decode video {path}: {err}") from err
        fps = video.meta.fps
    if not frames:
        raise VideoReadError(f"{path} has no video frames")
    return np.stack(frames), fps
