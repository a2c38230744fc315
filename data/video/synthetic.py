"""A synthetic video dataset whose classes differ only in the order of their frames.

Every video shows a disk sweeping along a random segment (random centre, length, tilt within 60 degrees of
horizontal, disk size and colours) over a static textured background. The class says how it travels:

    right             left end -> right end
    left              right end -> left end
    right_then_left   left end -> right end -> left end (twice the speed)
    left_then_right   right end -> left end -> right end

Every class visits the same positions, so the set of frames of a video has the same distribution whatever
its class: a model that averages per-frame features cannot beat chance (1/4), one that models temporal
order can reach near 100%. Files are real H.264 mp4s written with PyAV, laid out like UCF101
(``<class>/<clip>.mp4`` plus ``classInd.txt`` and ``{train,val,test}list.txt``), deterministic from a
seed, and written once: ``generate`` returns the existing directory when the same parameters were used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from data.video.encode import write_video

CLASSES = ("right", "left", "right_then_left", "left_then_right")
SPLITS = ("train", "val", "test")


def position(name: str, t: np.ndarray) -> np.ndarray:
    """Where along the segment (0 = left end, 1 = right end) the disk is at times ``t`` in [0, 1]."""
    if name == "right":
        return t
    if name == "left":
        return 1 - t
    if name == "right_then_left":
        return 1 - np.abs(2 * t - 1)
    if name == "left_then_right":
        return np.abs(2 * t - 1)
    raise ValueError(f"unknown synthetic class {name!r}; classes are {CLASSES}")


def render(name: str, rng: np.random.Generator, *, num_frames: int, size: int) -> np.ndarray:
    """One video of class ``name``: ``(T, size, size, 3)`` uint8."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Background: a base colour plus a smooth random texture (sum of a few plane waves), static in time.
    base = rng.uniform(40, 215, 3)
    texture = np.zeros((size, size), np.float32)
    for _ in range(3):
        k = rng.normal(0, 2 * np.pi / size * 2, 2)
        texture += np.sin(k[0] * xx + k[1] * yy + rng.uniform(0, 2 * np.pi))
    background = base + 18 * texture[..., None]  # (H, W, 3)
    # Disk: a colour far from the background's, radius 0.1-0.16 of the frame.
    color = np.where(base > 127, rng.uniform(0, 50, 3), rng.uniform(205, 255, 3))
    radius = rng.uniform(0.10, 0.16) * size
    angle = rng.uniform(-np.pi / 3, np.pi / 3)
    length = rng.uniform(0.45, 0.7) * (size - 2 * radius)
    direction = np.array([np.cos(angle), np.sin(angle)])  # points to the right end (cos > 0)
    half = 0.5 * length * np.abs(direction)
    lo, hi = radius + half, size - radius - half
    centre = rng.uniform(lo, hi)  # keeps both ends of the segment inside the frame
    left_end = centre - 0.5 * length * direction
    s = position(name, np.linspace(0, 1, num_frames))  # (T,)
    xy = left_end + s[:, None] * length * direction  # (T, 2)
    dist = np.hypot(xx[None] - xy[:, 0, None, None], yy[None] - xy[:, 1, None, None])  # (T, H, W)
    alpha = np.clip(radius + 0.5 - dist, 0, 1)[..., None]  # anti-aliased edge, (T, H, W, 1)
    frames = (1 - alpha) * background + alpha * color
    return np.clip(frames, 0, 255).round().astype(np.uint8)


def generate(
    root: str | Path,
    *,
    per_class: dict[str, int],
    num_frames: int = 16,
    size: int = 32,
    fps: int = 15,
    seed: int = 0,
) -> Path:
    """Writes the dataset under ``root/<parameter digest>/`` unless it is there already; returns that folder.

    ``per_class`` gives videos per class for each split (``train``, ``val``, ``test``). Writing goes to a
    temporary folder renamed into place at the end, so an interrupted or concurrent run never leaves a
    half-written dataset behind.
    """
    params = {
        "per_class": {k: int(per_class[k]) for k in SPLITS},
        "num_frames": num_frames,
        "size": size,
        "fps": fps,
        "seed": seed,
        "classes": list(CLASSES),
        "version": 1,
    }
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    out = Path(root) / f"motion-order-{digest}"
    if (out / "params.json").is_file():
        return out
    tmp = Path(root) / f".tmp-{digest}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        lines = []
        for i in range(params["per_class"][split]):
            for label, name in enumerate(CLASSES):
                rel = f"{name}/{split}_{i:04d}.mp4"
                write_video(tmp / rel, render(name, rng, num_frames=num_frames, size=size), fps=fps)
                lines.append(f"{rel} {label + 1}\n")
        (tmp / f"{split}list.txt").write_text("".join(lines))
    (tmp / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(CLASSES)))
    (tmp / "params.json").write_text(json.dumps(params, indent=1))
    try:
        tmp.rename(out)
    except OSError:  # another process finished the same dataset first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "params.json").is_file():
            raise
    return out
