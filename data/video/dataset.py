"""``VideoClipDataset``: clips of videos; one random clip per video in training, every view at test.

Flow of ``__getitem__``: the sample index names a video and, at test, a view (clip x crop) -> decode the
clip's frames, resized so the short side is ``short_side`` -> crop ``crop_size`` (random position in
training; centre, or the start/centre/end of the long side for 3 crops, at test) -> ``transform``
``(T, H, W, C) uint8 -> (C, T, H, W) float``.

Views of one video come in a row (clip-major, crops inner), and the last decoded clip is kept, so the
crops of a clip are decoded once. An unreadable file is skipped (``None`` plus a warning naming it) or
raises ``VideoReadError`` naming it, as ``skip_unreadable`` says.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.video.cache import DecodedVideo
from data.video.decode import VideoReader, VideoReadError
from data.video.sampling import ClipSampler

log = logging.getLogger(__name__)


def crop_offsets(length: int, size: int, num_crops: int) -> list[int]:
    """Offsets of ``num_crops`` windows of ``size`` on an axis of ``length``: centre, or start/centre/end."""
    if num_crops == 1:
        return [(length - size) // 2]
    if num_crops == 3:
        return [0, (length - size) // 2, length - size]
    raise ValueError(f"data.test_crops={num_crops} must be 1 or 3")


def to_tensor(clip: np.ndarray) -> torch.Tensor:
    """``(T, H, W, C) uint8 -> (C, T, H, W)`` float in [0, 1], when no transform is given."""
    return torch.from_numpy(clip).permute(3, 0, 1, 2).float().div_(255.0)


def frame_window(window: tuple[float, float] | None, num_frames: int, fps: float, path: str) -> tuple[int, int]:
    """``(first frame, frame count)`` of the time window ``(start, end)`` seconds of a video; all of it for None."""
    if window is None:
        return 0, num_frames
    start, end = window
    first = int(np.floor(start * fps))
    if first >= num_frames:
        raise VideoReadError(
            f"{path}: the annotated window [{start}, {end}] s starts after the video ends ({num_frames / fps:.2f} s)"
        )
    last = min(num_frames, max(first + 1, int(np.ceil(end * fps))))
    return max(first, 0), last - max(first, 0)


class VideoClipDataset(Dataset):
    """Clips of ``videos`` (``(path, label)`` pairs).

    Args:
        videos: absolute paths and integer labels.
        sampler: which frames make a clip.
        crop_size: side of the square crop.
        short_side: decoded frames are resized so their shorter side is this (>= crop_size).
        train: one random clip and crop per video; otherwise ``num_clips`` x ``num_crops`` views per video.
        num_clips / num_crops: views per video when not training (``num_crops`` 1 or 3).
        transform: ``(T, H, W, C) uint8 -> (C, T, H, W) float``; None scales to [0, 1].
        skip_unreadable: return None (and warn) for a file that cannot be read instead of raising.
        windows: per video, ``(start, end)`` seconds of an untrimmed file that clips are sampled within (Kinetics'
            ``time_start``/``time_end``), or None for the whole file; None: whole files.
        decoded: per video, its frames decoded once at ``short_side`` (data/video/cache.py): clips are then
            taken from memory instead of the file; None: decode each clip from its file.
    """

    def __init__(
        self,
        videos: Sequence[tuple[str | Path, int]],
        *,
        sampler: ClipSampler,
        crop_size: int,
        short_side: int | None = None,
        train: bool,
        num_clips: int = 1,
        num_crops: int = 1,
        transform: Callable[[np.ndarray], torch.Tensor] | None = None,
        skip_unreadable: bool = False,
        windows: Sequence[tuple[float, float] | None] | None = None,
        decoded: Sequence[DecodedVideo] | None = None,
    ) -> None:
        short_side = crop_size if short_side is None else short_side
        if short_side < crop_size:
            raise ValueError(f"data.short_side={short_side} must be >= data.crop_size={crop_size}")
        if num_clips < 1:
            raise ValueError(f"data.test_clips={num_clips} must be >= 1")
        crop_offsets(short_side, crop_size, num_crops)  # validates num_crops
        self.videos = [(str(p), int(y)) for p, y in videos]
        if windows is not None and len(windows) != len(self.videos):
            raise ValueError(f"{len(windows)} time windows for {len(self.videos)} videos")
        self.windows = list(windows) if windows is not None else [None] * len(self.videos)
        self.sampler = sampler
        self.crop_size = crop_size
        self.short_side = short_side
        self.train = train
        self.views = (1, 1) if train else (num_clips, num_crops)
        self.transform = transform or to_tensor
        self.skip_unreadable = skip_unreadable
        if decoded is not None and len(decoded) != len(self.videos):
            raise ValueError(f"{len(decoded)} decoded videos for {len(self.videos)} videos")
        self.decoded = decoded
        self._last: tuple[tuple[int, int], list[np.ndarray]] | None = None  # (video, clip) -> frames

    def with_decoded(self, decoded: dict[str, DecodedVideo]) -> VideoClipDataset:
        """This dataset taking its clips from ``decoded`` (path -> frames) instead of the files."""
        held = copy.copy(self)
        held.decoded, held._last = [decoded[path] for path, _ in self.videos], None
        return held

    @property
    def views_per_video(self) -> int:
        return self.views[0] * self.views[1]

    def __len__(self) -> int:
        return len(self.videos) * self.views_per_video

    @property
    def targets(self) -> list[int]:
        """The label of each sample (view), without decoding."""
        return [label for _, label in self.videos for _ in range(self.views_per_video)]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        video, view = divmod(index, self.views_per_video)
        clip, crop = divmod(view, self.views[1])
        path, label = self.videos[video]
        try:
            frames = self._clip(video, clip)  # (T, h, w, 3) uint8, short side = self.short_side
        except VideoReadError as err:
            if self.skip_unreadable:
                log.warning("skipping unreadable video %s: %s", path, err)
                return None
            raise VideoReadError(
                f"{err} (set data.skip_unreadable_eval=true to skip such files in evaluation)"
            ) from err
        clip_array = self._crop(frames, crop)  # (T, crop, crop, 3)
        return {
            "input": self.transform(clip_array),
            "target": label,
            "index": index,
            "video": video,
            "path": path,
        }

    def _clip(self, video: int, clip: int) -> np.ndarray:
        if self._last is not None and self._last[0] == (video, clip):
            return self._last[1]
        path = self.videos[video][0]
        if self.decoded is not None:
            held = self.decoded[video]
            if held.frames is None:
                raise VideoReadError(held.error)
            first, n = frame_window(self.windows[video], len(held.frames), held.fps, path)
            frames = held.frames[first + self._indices(n, held.fps, clip)]  # (T, h, w, 3)
        else:
            with VideoReader(path, short_side=self.short_side) as reader:
                first, n = frame_window(self.windows[video], reader.meta.num_frames, reader.meta.fps, path)
                frames = reader.read(first + self._indices(n, reader.meta.fps, clip))
        self._last = ((video, clip), frames)
        return frames

    def _indices(self, num_video_frames: int, fps: float, clip: int) -> np.ndarray:
        if self.train:
            rng = np.random.default_rng(np.random.randint(2**31))
            return self.sampler.random_clip(num_video_frames, fps, rng)
        return self.sampler.uniform_clips(num_video_frames, fps, self.views[0])[clip]

    def _crop(self, frames: np.ndarray, crop: int) -> np.ndarray:
        _, h, w, _ = frames.shape
        size = self.crop_size
        if self.train:
            y = np.random.randint(0, h - size + 1)
            x = np.random.randint(0, w - size + 1)
        elif h > w:  # crops run along the long side
            y, x = crop_offsets(h, size, self.views[1])[crop], (w - size) // 2
        else:
            y, x = (h - size) // 2, crop_offsets(w, size, self.views[1])[crop]
        return np.ascontiguousarray(frames[:, y : y + size, x : x + size])
