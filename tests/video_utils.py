"""Fixture helpers: real video files whose frames carry their own index, so order survives lossy codecs.

Each frame is a 4x4 grid of black/white cells spelling the frame index in binary (16 bits, most
significant cell first), on top of which nothing else is drawn; ``frame_ids`` reads the indices back from
decoded frames, however they were resized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.video.encode import write_video

GRID = 4


def numbered_frames(num_frames: int, *, height: int = 32, width: int = 48) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames; frame ``i`` shows the bits of ``i`` as a 4x4 grid of cells."""
    if height % GRID or width % GRID:
        raise ValueError(f"frame size {width}x{height} must be divisible by {GRID}")
    bits = (np.arange(num_frames)[:, None] >> np.arange(GRID * GRID - 1, -1, -1)) & 1  # (T, 16)
    cells = bits.reshape(num_frames, GRID, GRID).astype(np.uint8) * 255  # (T, 4, 4)
    frames = cells.repeat(height // GRID, axis=1).repeat(width // GRID, axis=2)  # (T, H, W)
    return np.repeat(frames[..., None], 3, axis=-1)  # (T, H, W, 3)


def frame_ids(frames: np.ndarray) -> np.ndarray:
    """Indices spelled by ``frames`` ``(T, H, W, 3)`` (or ``(C, T, H, W)`` floats in [0, 1] scaled to 255)."""
    t, h, w = frames.shape[:3]
    gray = frames.astype(np.float32).mean(-1)  # (T, H, W)
    # The middle half of each cell: codecs blur the borders between cells.
    cells = gray.reshape(t, GRID, h // GRID, GRID, w // GRID)
    ch, cw = h // GRID, w // GRID
    core = cells[:, :, ch // 4 : ch - ch // 4 or None, :, cw // 4 : cw - cw // 4 or None].mean(axis=(2, 4))
    bits = (core > 127).reshape(t, GRID * GRID).astype(np.int64)
    return bits @ (1 << np.arange(GRID * GRID - 1, -1, -1))


def make_video(
    path: str | Path,
    num_frames: int,
    *,
    height: int = 32,
    width: int = 48,
    fps: int = 30,
    audio: bool = False,
    gop: int | None = None,
) -> Path:
    """Writes a numbered video to ``path`` (the suffix picks the container: .mp4, .avi, .webm, .mkv)."""
    return write_video(path, numbered_frames(num_frames, height=height, width=width), fps=fps, audio=audio, gop=gop)


def make_video_folder(root: str | Path, videos_per_class: dict[str, int], *, num_frames: int = 12, **kw) -> Path:
    """``root/<class>/<class>_<i>.mp4`` numbered videos; returns ``root``."""
    root = Path(root)
    for name, count in videos_per_class.items():
        for i in range(count):
            make_video(root / name / f"{name}_{i:02d}.mp4", num_frames, **kw)
    return root
