"""Box annotations: reading JSON / CSV files, validating boxes, and mapping them through a resize and crop.

Boxes are x1, y1, x2, y2 in pixels of the original image (or video frame); a sample has one or several:
``(K, 4)`` for an image or for all frames of a clip, ``(K, T, 4)`` for a box per frame.

Accepted files (keys are the sample's path relative to the dataset root, e.g. ``train/cat/001.jpg``):

    JSON  {"train/cat/001.jpg": [[x1, y1, x2, y2], ...],
           "clips/a.mp4": [[[x1, y1, x2, y2], ...per frame], ...per box]}
          or [{"file": "train/cat/001.jpg", "boxes": [[x1, y1, x2, y2], ...]}, ...]
    CSV   header ``file,x1,y1,x2,y2`` (one row per box), plus optional ``box`` and ``frame`` columns for
          per-frame clip boxes (rows of one box id across frames 0..T-1; every box of a file has all frames).

Every error names the file and the offending key and box.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor

CSV_COLUMNS = ("file", "x1", "y1", "x2", "y2")


class BoxError(ValueError):
    """A box annotation that cannot be used; the message names the file, the sample and the box."""


def check_boxes(boxes: Tensor, *, source: str, width: float | None = None, height: float | None = None) -> Tensor:
    """Raise ``BoxError`` unless every box is finite, non-negative, has x2 > x1 and y2 > y1 and (when the
    image size is given) lies inside the image. ``source`` names the file and sample in the message."""
    if boxes.ndim not in (2, 3) or boxes.shape[-1] != 4:
        raise BoxError(f"{source}: boxes must be (K, 4) or (K, T, 4) as x1,y1,x2,y2; got shape {tuple(boxes.shape)}")
    flat = boxes.reshape(-1, 4)
    x1, y1, x2, y2 = flat.unbind(-1)
    bad = ~torch.isfinite(flat).all(-1)
    why = "is not finite"
    for cond, reason in (
        (x2 <= x1, "has x2 <= x1"),
        (y2 <= y1, "has y2 <= y1"),
        ((x1 < 0) | (y1 < 0), "starts outside the image (negative x1 or y1)"),
        *(() if width is None else (((x2 > width) | (y2 > height), f"ends outside the {width}x{height} image"),)),
    ):
        if bad.any():
            break
        bad, why = cond, reason
    if bad.any():
        i = int(bad.nonzero()[0])
        where = f"box {i // boxes.shape[1]}, frame {i % boxes.shape[1]}" if boxes.ndim == 3 else f"box {i}"
        raise BoxError(f"{source}: {where} {[round(v, 2) for v in flat[i].tolist()]} {why}")
    return boxes


def _as_boxes(value: object, *, source: str) -> Tensor:
    try:
        boxes = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError) as e:
        raise BoxError(f"{source}: boxes must be nested lists of numbers x1,y1,x2,y2; got {value!r} ({e})") from e
    if boxes.ndim == 1 and boxes.numel() == 4:  # a single box written flat
        boxes = boxes[None]
    return check_boxes(boxes, source=source)


def _read_json(path: Path) -> dict[str, Tensor]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BoxError(f"{path}: not valid JSON ({e})") from e
    if isinstance(data, list):
        try:
            data = {str(r["file"]): r["boxes"] for r in data}
        except (TypeError, KeyError) as e:
            raise BoxError(f"{path}: a list must hold records {{'file': ..., 'boxes': [...]}}; bad record ({e})") from e
    if not isinstance(data, dict):
        raise BoxError(f"{path}: expected an object {{file: boxes}} or a list of records; got {type(data).__name__}")
    return {str(k): _as_boxes(v, source=f"{path} [{k}]") for k, v in data.items()}


def _read_csv(path: Path) -> dict[str, Tensor]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BoxError(
                f"{path}: missing columns {missing}; the header must have {','.join(CSV_COLUMNS)} "
                f"(optionally box,frame); found {reader.fieldnames}"
            )
        per_frame = "frame" in reader.fieldnames
        rows: dict[str, dict[int, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(dict))
        for line, row in enumerate(reader, start=2):
            source = f"{path}:{line} [{row['file']}]"
            try:
                coords = [float(row[c]) for c in CSV_COLUMNS[1:]]
                frame = int(row["frame"]) if per_frame else 0
                # Without frames each row is a new box; with frames, rows join boxes by id (no ids: one box).
                box = (int(row["box"] or 0) if "box" in row else 0) if per_frame else len(rows[row["file"]])
            except ValueError as e:
                raise BoxError(f"{source}: not a number ({e})") from e
            if frame in rows[row["file"]][box]:
                raise BoxError(f"{source}: box {box} has frame {frame} twice")
            rows[row["file"]][box][frame] = coords
    out = {}
    for key, boxes in rows.items():
        source = f"{path} [{key}]"
        if not per_frame:
            out[key] = _as_boxes([b[0] for _, b in sorted(boxes.items())], source=source)
            continue
        frames = [sorted(b) for _, b in sorted(boxes.items())]
        t = len(frames[0])
        if any(f != list(range(t)) for f in frames):
            raise BoxError(f"{source}: every box needs frames 0..T-1 exactly once; got frames {frames}")
        out[key] = _as_boxes([[b[f] for f in range(t)] for _, b in sorted(boxes.items())], source=source)
    return out


def read_box_file(path: str | Path) -> dict[str, Tensor]:
    """``{sample key: boxes}`` from a JSON or CSV file, each checked (not yet against the image size)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"box annotation file {path} not found; set data.boxes_file to a .json or .csv file")
    if path.suffix.lower() == ".json":
        return _read_json(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    raise BoxError(f"{path}: box files must be .json or .csv")


class BoxAnnotations:
    """Boxes of a dataset's samples, looked up by key and checked against each image's size on access.

    ``missing="error"`` makes a sample without boxes an error; ``"empty"`` gives it ``(0, 4)``, which the ROI
    head replaces by its preset boxes (full frame, grid or R-MAC).
    """

    def __init__(self, path: str | Path, *, missing: str = "error") -> None:
        if missing not in ("error", "empty"):
            raise ValueError(f"missing={missing!r} must be 'error' or 'empty'")
        self.path, self.missing = Path(path), missing
        self.boxes = read_box_file(self.path)

    def __len__(self) -> int:
        return len(self.boxes)

    def get(self, key: str, *, width: float, height: float) -> Tensor:
        if key not in self.boxes:
            if self.missing == "empty":
                return torch.zeros(0, 4)
            raise BoxError(f"{self.path}: no boxes for {key!r} (set missing='empty' to use the ROI preset instead)")
        return check_boxes(self.boxes[key], source=f"{self.path} [{key}]", width=width, height=height)


def resize_crop_boxes(
    boxes: Tensor, *, scale: float | tuple[float, float], left: float, top: float, size: tuple[float, float]
) -> Tensor:
    """Map boxes through ``resize by scale (one, or (sx, sy)), then crop (left, top, width, height=size)``;
    boxes are clipped to the crop and those left empty are dropped (an empty result means "use the ROI
    preset")."""
    sx, sy = (scale, scale) if isinstance(scale, int | float) else scale
    out = boxes * torch.tensor([sx, sy, sx, sy]) - torch.tensor([left, top, left, top])
    w, h = size
    out = torch.stack(
        [out[..., 0].clamp(0, w), out[..., 1].clamp(0, h), out[..., 2].clamp(0, w), out[..., 3].clamp(0, h)],
        -1,
    )
    keep = ((out[..., 2] > out[..., 0]) & (out[..., 3] > out[..., 1])).reshape(len(out), -1).all(-1)
    return out[keep]
