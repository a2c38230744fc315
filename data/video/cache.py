"""A decoded-clip cache for small video datasets (``data.in_memory`` of the video DataModules).

Per-clip decoding opens, seeks and decodes a file for every clip of every epoch; on a dataset of a few
hundred short videos that costs more than a small model's step. With ``data.in_memory=true`` (or ``auto``
when it fits) every video is decoded once, at ``data.short_side``, as uint8 ``(N, H, W, 3)`` frames, in
``num_workers`` processes with a progress bar; clips are then sampled and augmented from memory by the same
``VideoClipDataset`` code, so sampling, crops, augmentation and test views stay exactly those of per-clip
decoding. DataLoader workers are forked and share the decoded frames copy-on-write.

Unreadable files follow the same rules as per-clip decoding: the entry holds the ``VideoReadError`` and the
dataset skips (training, counted as ``data/skipped``) or raises (evaluation) when a clip of it is drawn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.in_memory import RAM_FRACTION, available_memory
from data.video.decode import VideoReader, VideoReadError, read_all_with_fps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedVideo:
    """Every frame of one video ``(N, H, W, 3)`` uint8 and its frame rate; ``error`` set when unreadable."""

    frames: np.ndarray | None
    fps: float
    error: str | None = None


def decoded_size(paths: Sequence[str | Path], short_side: int) -> int:
    """Bytes the decoded frames of ``paths`` take, from the headers (frame count, size): no decoding."""
    total = 0
    for path in paths:
        try:
            with VideoReader(path, short_side=short_side) as reader:
                w, h = reader._size()
                total += reader.meta.num_frames * w * h * 3
        except VideoReadError:
            continue  # counted as unreadable when decoded
    return total


def check_fits(paths: Sequence[str | Path], short_side: int) -> None:
    """ValueError (naming the sizes and the fix) when the decoded videos need more than ``RAM_FRACTION`` of the
    memory available now."""
    need, free = decoded_size(paths, short_side), available_memory()
    if need > RAM_FRACTION * free:
        raise ValueError(
            f"{len(paths)} videos decoded at data.short_side={short_side} need {need / 2**30:.1f} GiB, more than "
            f"{RAM_FRACTION:.0%} of the {free / 2**30:.1f} GiB available; lower data.short_side, or set "
            f"data.in_memory=false (per-clip decoding) or true (hold them anyway)"
        )


class _Decoding(Dataset):
    def __init__(self, paths: Sequence[str | Path], short_side: int) -> None:
        self.paths, self.short_side = [str(p) for p in paths], short_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> DecodedVideo:
        path = self.paths[i]
        try:
            return DecodedVideo(*read_all_with_fps(path, short_side=self.short_side))
        except VideoReadError as err:
            return DecodedVideo(None, 0.0, str(err))


def decode_videos(paths: Sequence[str | Path], *, short_side: int, num_workers: int = 0) -> list[DecodedVideo]:
    """Every video of ``paths`` decoded once at ``short_side`` (``num_workers`` processes; a progress bar on a
    terminal, a log line with the time taken and the unreadable count)."""
    start = time.perf_counter()
    loader = DataLoader(
        _Decoding(paths, short_side), batch_size=None, num_workers=num_workers, collate_fn=lambda item: item
    )
    out: list[DecodedVideo] = []
    with tqdm(total=len(paths), desc="decoding videos", unit="videos", mininterval=1.0, disable=None) as bar:
        for video in loader:
            out.append(video)
            bar.update(1)
    frames = sum(len(v.frames) for v in out if v.frames is not None)
    nbytes = sum(v.frames.nbytes for v in out if v.frames is not None)
    log.info(
        "decoded %d videos (%d frames, %.2f GiB at short side %d) into memory in %.1f s",
        len(out),
        frames,
        nbytes / 2**30,
        short_side,
        time.perf_counter() - start,
    )
    bad = [str(p) for p, v in zip(paths, out, strict=True) if v.error is not None]
    if bad:
        log.warning("%d of %d videos are unreadable (e.g. %s): clips of them are skipped", len(bad), len(out), bad[:3])
    return out
