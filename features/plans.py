"""The rows feature extraction fills and the datasets that decode them.

A *plan* lays out the output before anything is decoded: the index.csv rows and, for every *item* the loader
decodes, the range of rows it fills:

    images        item = image              -> 1 row
    images+boxes  item = image with boxes   -> K rows (one per box; images without boxes are left out)
    videos        item = (video, clip)      -> 1 row; rows are video-major, clips in time order

Decoding errors never stop the job: ``Guarded`` turns them into ``{"item": i, "error": message}`` records,
whose rows stay NaN and are listed in failures.csv.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from data.boxes import BoxAnnotations, BoxError
from data.image_folder import load_image
from data.video.dataset import VideoClipDataset
from data.video.decode import VideoReader, VideoReadError
from data.video.sampling import ClipSampler
from features.inputs import Source

# What reading one file may raise (a missing, truncated or corrupt file, or boxes that do not fit the image).
READ_ERRORS = (
    OSError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
    SyntaxError,
    ValueError,
    VideoReadError,
    BoxError,
)


@dataclass(frozen=True)
class Preprocessing:
    """Eval-time preprocessing: images resized (short side) and centre-cropped to ``image_size``; clips of
    ``num_frames`` frames (``frame_stride`` apart, or at ``target_fps``) resized to ``short_side`` and
    centre-cropped to ``crop_size``, ``test_clips`` clips per video; then ``transform`` normalises."""

    image_size: int
    num_frames: int
    frame_stride: int
    target_fps: float | None
    short_side: int
    crop_size: int
    test_clips: int
    transform: Callable[[np.ndarray], torch.Tensor]
    # stride | segments (TSN: one frame from each segment of the video), as the checkpoint was trained
    clip_sampling: str = "stride"

    def clip_dataset(self, paths: list[str], *, crops: int = 1) -> VideoClipDataset:
        """``test_clips`` x ``crops`` evaluation views of each video of ``paths``, labelled 0."""
        return VideoClipDataset(
            [(p, 0) for p in paths],
            sampler=self.clip_sampler(),
            crop_size=self.crop_size,
            short_side=self.short_side,
            train=False,
            num_clips=self.test_clips,
            num_crops=crops,
            transform=self.transform,
        )

    def clip_sampler(self) -> ClipSampler:
        return ClipSampler(
            num_frames=self.num_frames,
            frame_stride=self.frame_stride,
            target_fps=self.target_fps,
            segments=self.clip_sampling == "segments",
        )


@dataclass
class Plan:
    columns: list[str]
    index: list[dict[str, Any]]  # one per row, without the row number
    offsets: np.ndarray  # (num_items + 1,): item i fills rows offsets[i]:offsets[i + 1]
    dataset: Dataset  # item i -> {"input": ...[, "boxes": (K, 4)]}
    sample_shape: tuple[int, ...]  # shape of one decoded input, e.g. (3, H, W) or (3, T, H, W)

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_items(self) -> int:
        return len(self.offsets) - 1


@dataclass(frozen=True)
class Reading:
    """What an extraction reads: ``kind`` (images | videos) and a name for the log; raw files (``sources`` and
    their ``prep``aration) and/or the ``plan`` of rows (mode=clips), ``clips`` rows per video."""

    kind: str
    name: str
    sources: list[Source] | None = None
    prep: Preprocessing | None = None
    plan: Plan | None = None
    clips: int = 1


# --- plans --------------------------------------------------------------------------------------------------


def image_plan(sources: list[Source], prep: Preprocessing) -> Plan:
    index = [{"path": s.rel, "label": s.label} for s in sources]
    dataset = ImageItems(sources, image_size=prep.image_size, transform=prep.transform)
    return Plan(
        ["row", "path", "label"],
        index,
        np.arange(len(sources) + 1),
        dataset,
        (3, prep.image_size, prep.image_size),
    )


def box_plan(sources: list[Source], prep: Preprocessing, boxes_file: str) -> Plan:
    """One row per box of the boxes file (keys: paths relative to the input, as in index.csv)."""
    annotations = BoxAnnotations(boxes_file)
    kept = _annotated(sources, annotations, boxes_file)
    index, counts = [], []
    for s in kept:
        boxes = annotations.boxes[s.rel]
        if boxes.ndim != 2:
            raise BoxError(
                f"{boxes_file} [{s.rel}]: images need (K, 4) boxes; got per-frame boxes {tuple(boxes.shape)}"
            )
        counts.append(len(boxes))
        for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            index.append({"path": s.rel, "label": s.label, "box": k, "x1": x1, "y1": y1, "x2": x2, "y2": y2})
    dataset = ImageItems(kept, image_size=prep.image_size, transform=prep.transform, boxes=annotations)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    columns = ["row", "path", "label", "box", "x1", "y1", "x2", "y2"]
    return Plan(columns, index, offsets, dataset, (3, prep.image_size, prep.image_size))


def video_plan(sources: list[Source], prep: Preprocessing, *, num_workers: int) -> Plan:
    """``test_clips`` rows per video with each clip's frame span; a video that cannot be probed keeps empty
    spans (its rows then fail in extraction and land in failures.csv)."""
    sampler = prep.clip_sampler()
    probes = probe_loader(ProbeItems(sources), num_workers=num_workers)
    index = []
    for probe in (p for batch in probes for p in batch):
        source = sources[probe["item"]]
        clips = (
            sampler.uniform_clips(probe["num_frames"], probe["fps"], prep.test_clips) if "error" not in probe else None
        )
        for c in range(prep.test_clips):
            row = {"path": source.rel, "label": source.label, "clip": c}
            if clips is not None:
                first, last, fps = int(clips[c][0]), int(clips[c][-1]), probe["fps"]
                # A video shorter than a clip is looped, so `last` may precede `first`.
                row.update(
                    start_frame=first,
                    end_frame=last,
                    start_s=round(first / fps, 6),
                    end_s=round((last + 1) / fps, 6),
                )
            index.append(row)
    dataset = prep.clip_dataset([s.path for s in sources])
    columns = ["row", "path", "label", "clip", "start_frame", "end_frame", "start_s", "end_s"]
    shape = (3, prep.num_frames, prep.crop_size, prep.crop_size)
    return Plan(columns, index, np.arange(len(index) + 1), _InputOnly(dataset), shape)


def video_box_plan(sources: list[Source], prep: Preprocessing, boxes_file: str, *, num_workers: int) -> Plan:
    """ROI tubes: ``test_clips`` clips per video named in the boxes file, one row per box per clip.

    A video's boxes are ``(K, 4)`` (the same boxes in every frame) or tracks ``(K, N, 4)`` with a box in each of
    its N frames; a clip takes the tracks' boxes at its own frames, so each box is followed through the clip.
    """
    annotations = BoxAnnotations(boxes_file)
    kept = _annotated(sources, annotations, boxes_file)
    sampler = prep.clip_sampler()
    probes = probe_loader(ProbeItems(kept), num_workers=num_workers)
    index, counts, clips = [], [], []
    for probe in (p for batch in probes for p in batch):
        source = kept[probe["item"]]
        boxes = annotations.boxes[source.rel]
        if "error" in probe:
            spans = [None] * prep.test_clips
        else:
            n, fps = probe["num_frames"], probe["fps"]
            if boxes.ndim == 3 and boxes.shape[1] != n:
                raise BoxError(
                    f"{boxes_file} [{source.rel}]: tracks have boxes for {boxes.shape[1]} frames but the video has "
                    f"{n}; give a box for every frame (K, {n}, 4), or (K, 4) boxes for all frames"
                )
            spans = sampler.uniform_clips(n, fps, prep.test_clips)
        for c, span in enumerate(spans):
            fields = {"path": source.rel, "label": source.label, "clip": c}
            if span is not None:
                first, last = int(span[0]), int(span[-1])
                fields.update(
                    start_frame=first, end_frame=last, start_s=round(first / fps, 6), end_s=round((last + 1) / fps, 6)
                )
            index += [{**fields, "box": k} for k in range(len(boxes))]
            counts.append(len(boxes))
            clips.append((source, span))
    dataset = VideoBoxItems(clips, annotations, crop_size=prep.crop_size, transform=prep.transform)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    columns = ["row", "path", "label", "clip", "box", "start_frame", "end_frame", "start_s", "end_s"]
    return Plan(columns, index, offsets, dataset, (3, prep.num_frames, prep.crop_size, prep.crop_size))


def _annotated(sources: list[Source], annotations: BoxAnnotations, boxes_file: str) -> list[Source]:
    """The sources the boxes file names (its keys: paths relative to the input, as in index.csv)."""
    listed = {s.rel for s in sources}
    unknown = sorted(set(annotations.boxes) - listed)
    if len(unknown) == len(annotations.boxes):
        raise ValueError(
            f"{boxes_file}: none of its keys ({unknown[:3]}...) is a path of the input listing (e.g. "
            f"{sorted(listed)[:3]}); keys must be paths relative to the input folder"
        )
    return [s for s in sources if s.rel in annotations.boxes]


PROBES_PER_WORKER = 64


def probe_loader(dataset: Dataset, *, num_workers: int) -> DataLoader:
    """Batches (lists) of guarded probes. Probing reads headers only (milliseconds a file), so starting
    worker processes pays only for long listings: fewer than ``PROBES_PER_WORKER`` files per worker are
    probed in this process; otherwise each worker takes batches of about a sixteenth of its share."""
    workers = num_workers if len(dataset) >= PROBES_PER_WORKER * max(num_workers, 1) else 0
    batch = max(1, min(256, len(dataset) // (16 * max(workers, 1))))
    return DataLoader(Guarded(dataset), batch_size=batch, num_workers=workers, collate_fn=list)


# --- datasets -----------------------------------------------------------------------------------------------


class ImageItems(Dataset):
    """Images of ``sources``, short side resized and centre-cropped to ``image_size`` (as in evaluation).

    With box annotations the whole image is resized to ``image_size`` x ``image_size`` instead (no crop, so
    that no box is cut off) and its boxes, checked against the original size, are scaled with it.
    """

    def __init__(
        self,
        sources: list[Source],
        *,
        image_size: int,
        transform: Callable,
        boxes: BoxAnnotations | None = None,
    ) -> None:
        self.sources, self.image_size, self.transform, self.boxes = sources, image_size, transform, boxes

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict[str, Any]:
        source = self.sources[i]
        if self.boxes is None:
            return {"input": self.transform(load_image(source.path, self.image_size))}
        image = load_image(source.path, None)
        h, w = image.shape[:2]
        boxes = self.boxes.get(source.rel, width=w, height=h)  # (K, 4) in original pixels
        size = self.image_size
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        scale = torch.tensor([size / w, size / h, size / w, size / h])
        return {"input": self.transform(image), "boxes": boxes * scale}


class VideoBoxItems(Dataset):
    """Clips ``(source, frame numbers)`` with their boxes: the frames resized to ``crop_size`` squared (no crop,
    so no box is cut off, as for images) and the boxes, checked against the frame size, scaled with them:
    ``(K, 4)`` for all frames, or ``(K, T, 4)`` taken from the tracks at the clip's frames."""

    def __init__(
        self,
        clips: list[tuple[Source, np.ndarray | None]],
        annotations: BoxAnnotations,
        *,
        crop_size: int,
        transform: Callable,
    ) -> None:
        self.clips, self.annotations, self.size, self.transform = clips, annotations, crop_size, transform

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        source, frames = self.clips[i]
        if frames is None:
            raise VideoReadError(f"{source.path}: the video could not be probed")
        with VideoReader(source.path) as video:
            clip = video.read(frames)  # (T, H, W, 3) at the file's size
            w, h = video.meta.width, video.meta.height
        boxes = self.annotations.get(source.rel, width=w, height=h)  # (K, 4) or (K, N, 4), frame pixels
        if boxes.ndim == 3:
            boxes = boxes[:, torch.from_numpy(np.asarray(frames))]  # (K, T, 4)
        size = self.size
        resized = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in clip])
        scale = torch.tensor([size / w, size / h, size / w, size / h])
        return {"input": self.transform(resized), "boxes": boxes * scale}


class ProbeItems(Dataset):
    """Frame count and frame rate of each video (headers only; no frame is decoded)."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict[str, Any]:
        with VideoReader(self.sources[i].path) as video:
            return {"num_frames": video.meta.num_frames, "fps": video.meta.fps}


class _InputOnly(Dataset):
    """Keeps only ``input`` of a training-style sample (labels and paths come from the plan)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input": self.dataset[i]["input"]}


class Guarded(Dataset):
    """Items ``start``..``stop`` of ``dataset`` as ``{"item": i, **sample}``, or ``{"item": i, "error": message}``
    when the file cannot be read, so one bad file costs its rows, not the job."""

    def __init__(self, dataset: Dataset, *, start: int = 0, stop: int | None = None) -> None:
        self.dataset, self.start = dataset, start
        self.stop = len(dataset) if stop is None else stop

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = self.start + j
        try:
            sample = self.dataset[i]
        except READ_ERRORS as e:
            return {"item": i, "error": f"{type(e).__name__}: {e}".replace("\n", " ")}
        return {"item": i, **sample}


def collate_items(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks the decoded samples; failures travel as ``errors`` [(item, message)]."""
    ok = [s for s in samples if "error" not in s]
    batch: dict[str, Any] = {
        "items": [s["item"] for s in ok],
        "errors": [(s["item"], s["error"]) for s in samples if "error" in s],
        "end": samples[-1]["item"] + 1,  # items before this one are done once the batch is written
        "input": torch.stack([s["input"] for s in ok]) if ok else None,
    }
    if ok and "boxes" in ok[0]:
        batch["boxes"] = [s["boxes"] for s in ok]
    return batch
