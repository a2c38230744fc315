"""Video datasets whose classes and splits come from annotation files instead of class folders.

Formats (``data=kinetics``, ``data=ssv2``, ``data=video_list``):

    Kinetics CSV     a header naming at least ``label,youtube_id,time_start,time_end`` (the official
                     kinetics-400/600/700 CSVs: ``label,youtube_id,time_start,time_end,split[,is_cc]``; also the
                     ``youtube_id,time_start,time_end,label`` variant). A row's file is the trimmed clip
                     ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>`` or else the untrimmed
                     ``<youtube_id>.<ext>``, found anywhere under ``root``; clips of an untrimmed file are
                     sampled inside ``[time_start, time_end]`` seconds.
    SSv2 JSON        ``something-something-v2-labels.json`` ``{template: "index"}`` and per split a list of
                     ``{"id", "label", "template", "placeholders"}``; the class is the template with its
                     brackets removed (``"Putting [something] on [something]"`` -> ``"Putting something on
                     something"``, as in the official loader); the file is ``<root>/<id>.webm``.
    labelled list    ``<path> <label>`` per line (``data.video.lists.read_labelled_list``), paths relative to
                     ``root`` (a flat folder, or any layout), labels class names or integer indices.

Annotation files are relative to ``root`` unless absolute. A split without annotations: validation is held
out of training (seeded, ``val_size``); test is the validation split (``data/test_is_val`` in results.json),
as the Kinetics and SSv2 test labels are not public.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from data.base import resolve_size, seeded_split
from data.video.datamodule import VideoDataModule
from data.video.dataset import VideoClipDataset
from data.video.lists import label_indices, read_class_index, read_labelled_list

log = logging.getLogger(__name__)

SPLITS = {"train": "train", "val": "val", "validate": "val", "validation": "val", "test": "test"}
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


@dataclass(frozen=True)
class Clip:
    path: str  # relative to the DataModule's root (or absolute)
    label: int
    window: tuple[float, float] | None = None  # seconds of an untrimmed file to sample clips in


# --- readers ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KineticsRow:
    label: str
    youtube_id: str
    start: float
    end: float
    split: str | None  # train | val | test, from the ``split`` column when there is one


def read_kinetics_csv(path: Path) -> list[KineticsRow]:
    """The rows of a Kinetics-style CSV (columns found by header name, in any order)."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in KINETICS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: the header {reader.fieldnames} lacks {missing}; a Kinetics CSV needs the columns "
                f"{','.join(KINETICS_COLUMNS)} (optionally split)"
            )
        rows = []
        for lineno, row in enumerate(reader, start=2):
            split = row.get("split")
            if split is not None and split.strip() not in SPLITS:
                raise ValueError(f"{path}:{lineno}: split {split!r} is not one of {sorted(SPLITS)}")
            try:
                start, end = float(row["time_start"]), float(row["time_end"])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: time_start/time_end must be seconds: {row}") from e
            if not 0 <= start < end:
                raise ValueError(f"{path}:{lineno}: time_start {start} must be >= 0 and before time_end {end}")
            label, youtube_id = (row["label"] or "").strip(), (row["youtube_id"] or "").strip()
            if not label or not youtube_id:
                raise ValueError(f"{path}:{lineno}: empty label or youtube_id: {row}")
            rows.append(KineticsRow(label, youtube_id, start, end, SPLITS[split.strip()] if split else None))
    if not rows:
        raise ValueError(f"annotation file {path} lists no clips")
    return rows


def kinetics_clip_name(youtube_id: str, start: float, end: float) -> str:
    """The stem of a trimmed Kinetics clip as the official downloaders name it."""
    return f"{youtube_id}_{int(start):06d}_{int(end):06d}"


def index_videos(root: Path, extensions: Sequence[str]) -> dict[str, str]:
    """File stem -> path relative to ``root`` of every video under it (the first in sorted order per stem)."""
    exts = {e.lower() for e in extensions}
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in exts and path.is_file():
            found.setdefault(path.stem, str(path.relative_to(root)))
    return found


def kinetics_clips(rows: list[KineticsRow], names: list[str], videos: dict[str, str]) -> tuple[list[Clip], list]:
    """Clips of ``rows`` (trimmed files first, else untrimmed ones with the window) and the rows with no file."""
    position = {name: i for i, name in enumerate(names)}
    clips, missing = [], []
    for row in rows:
        trimmed = videos.get(kinetics_clip_name(row.youtube_id, row.start, row.end))
        if trimmed is not None:
            clips.append(Clip(trimmed, position[row.label]))
        elif row.youtube_id in videos:
            clips.append(Clip(videos[row.youtube_id], position[row.label], (row.start, row.end)))
        else:
            missing.append(row)
    return clips, missing


def ssv2_class(template: str) -> str:
    """The SSv2 class of an annotation's template: its ``[something]`` placeholders without brackets."""
    return template.replace("[", "").replace("]", "")


def read_ssv2_labels(path: Path) -> list[str]:
    """Class names in index order from ``something-something-v2-labels.json`` (``{template: "index"}``)."""
    labels = _read_json(path)
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: expected a JSON object {{template: index}}")
    by_index = sorted((int(index), name) for name, index in labels.items())
    if [i for i, _ in by_index] != list(range(len(by_index))):
        raise ValueError(f"{path}: class indices must run from 0 to {len(by_index) - 1} without gaps")
    return [name for _, name in by_index]


def read_ssv2_split(path: Path, names: list[str], extension: str) -> list[Clip]:
    """Clips ``<id><extension>`` of an SSv2 split file, labelled by their template's class."""
    entries = _read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{id, label, template, placeholders}}")
    position = {name: i for i, name in enumerate(names)}
    clips = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise ValueError(
                f"{path}: entry {i} ({str(entry)[:80]}) has no id and template; test.json lists no labels, "
                f"so it cannot be a labelled split"
            )
        name = ssv2_class(entry["template"])
        if name not in position:
            raise ValueError(f"{path}: entry {entry['id']}: class {name!r} is not in the labels file")
        clips.append(Clip(f"{entry['id']}{extension}", position[name]))
    if not clips:
        raise ValueError(f"{path} lists no videos")
    return clips


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


# --- DataModules ----------------------------------------------------------------------------------------------


class AnnotatedVideoDataModule(VideoDataModule):
    """A ``VideoDataModule`` whose ``read_annotations`` gives the class names and per-split clips (None for a
    split the annotations do not give). Clip sampling, crops, views and skipping are those of the base class."""

    def read_annotations(self) -> tuple[list[str], dict[str, list[Clip] | None]]:
        raise NotImplementedError

    def check(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"no video dataset: data.root={self.root} is not a folder")
        names, given = self.read_annotations()
        if not given.get("train"):
            raise ValueError(f"the annotations of {type(self).__name__} give no training videos")
        train, val = given["train"], given.get("val")
        if val is None:
            n_val = resolve_size(self.val_size, len(train), "data.val_size")
            val_idx, train_idx = seeded_split(len(train), (n_val, len(train) - n_val), self.split_seed)
            train, val = [train[i] for i in train_idx], [train[i] for i in val_idx]
        self.test_is_val = given.get("test") is None
        splits = {"train": train, "val": val, "test": val if self.test_is_val else given["test"]}
        for split, clips in splits.items():
            if not clips:
                raise ValueError(f"the {split} split of {self.root} is empty; check data.val_size and the annotations")
            missing = [c.path for c in clips if not (self.root / c.path).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} {split} videos are missing under {self.root}, e.g. {missing[:3]}"
                )
        self._class_names, self._splits = names, splits

    def _dataset(self, videos: list[Clip], *, train: bool, clips: int = 1, crops: int = 1) -> VideoClipDataset:
        pairs = [(c.path, c.label) for c in videos]
        return super()._dataset(pairs, train=train, clips=clips, crops=crops, windows=[c.window for c in videos])


class KineticsDataModule(AnnotatedVideoDataModule):
    """Kinetics-style CSVs; videos (trimmed or untrimmed) anywhere under ``root``.

    Args:
        annotations: one CSV or a list of CSVs whose ``split`` column assigns each row (the official
            ``train.csv``, ``validate.csv``), or a mapping ``{train: ..., val: ..., test: ...}`` of CSVs (any
            ``split`` column ignored), for files without one.
        class_index: a ``classInd.txt``-style file fixing the class order; default: sorted labels.
        skip_missing: leave out rows whose video is not under ``root`` (YouTube videos disappear), logging how
            many; false fails naming them.
    """

    def __init__(
        self,
        *,
        annotations: str | Sequence[str] | Mapping[str, str],
        skip_missing: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.annotations, self.skip_missing = annotations, skip_missing

    def read_annotations(self) -> tuple[list[str], dict[str, list[Clip] | None]]:
        rows: dict[str, list[KineticsRow]] = {}
        if isinstance(self.annotations, Mapping):
            for split, file in self.annotations.items():
                if split not in SPLITS:
                    raise ValueError(f"data.annotations.{split}: the split must be one of {sorted(SPLITS)}")
                rows.setdefault(SPLITS[split], []).extend(read_kinetics_csv(self._resolve(file)))
        else:
            files = [self.annotations] if isinstance(self.annotations, str) else list(self.annotations)
            for file in files:
                for row in read_kinetics_csv(self._resolve(file)):
                    if row.split is None:
                        raise ValueError(
                            f"{file} has no split column; give data.annotations as {{train: <csv>, val: <csv>}}"
                        )
                    rows.setdefault(row.split, []).append(row)
        labels = sorted({r.label for split_rows in rows.values() for r in split_rows})
        if self.class_index is not None:
            names, _ = read_class_index(self._resolve(self.class_index))
            unknown = sorted(set(labels) - set(names))
            if unknown:
                raise ValueError(f"labels {unknown[:5]} of data.annotations are not in data.class_index")
        else:
            names = labels
        videos = index_videos(self.root, self.extensions)
        splits: dict[str, list[Clip] | None] = {}
        for split in ("train", "val", "test"):
            if split not in rows:
                splits[split] = None
                continue
            clips, missing = kinetics_clips(rows[split], names, videos)
            if missing and not self.skip_missing:
                example = missing[0]
                raise FileNotFoundError(
                    f"{len(missing)} of {len(rows[split])} {split} clips have no video under {self.root}, e.g. "
                    f"{kinetics_clip_name(example.youtube_id, example.start, example.end)}.mp4 (trimmed) or "
                    f"{example.youtube_id}.mp4 (untrimmed); set data.skip_missing=true to leave them out"
                )
            if missing:
                total = len(rows[split])
                log.warning("%d of %d %s clips have no video under %s; left out", len(missing), total, split, self.root)
            splits[split] = clips
        return names, splits


class SSv2DataModule(AnnotatedVideoDataModule):
    """Something-Something v2: ``<root>/<id>.webm`` and the official JSON annotations.

    Args:
        labels: ``something-something-v2-labels.json``.
        train_annotations / val_annotations / test_annotations: split files (the official test file has no
            labels: leave ``test_annotations`` null to test on the validation split).
        extension: the video files' suffix.
    """

    def __init__(
        self,
        *,
        labels: str,
        train_annotations: str,
        val_annotations: str | None = None,
        test_annotations: str | None = None,
        extension: str = ".webm",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.labels = labels
        self.split_files = {"train": train_annotations, "val": val_annotations, "test": test_annotations}
        self.extension = extension

    def read_annotations(self) -> tuple[list[str], dict[str, list[Clip] | None]]:
        names = read_ssv2_labels(self._resolve(self.labels))
        splits = {
            split: read_ssv2_split(self._resolve(file), names, self.extension) if file else None
            for split, file in self.split_files.items()
        }
        return names, splits


class VideoListDataModule(AnnotatedVideoDataModule):
    """Videos in any layout (e.g. one flat folder) named by ``<path> <label>`` lists: ``train_list`` and
    optionally ``val_list`` and ``test_list``; labels class names or indices (``class_index`` names them)."""

    def read_annotations(self) -> tuple[list[str], dict[str, list[Clip] | None]]:
        if self.lists["train"] is None:
            raise ValueError("data=video_list needs data.train_list (a '<path> <label>' list)")
        entries = {split: read_labelled_list(self._resolve(f)) for split, f in self.lists.items() if f is not None}
        flat = [(split, path, label) for split, rows in entries.items() for path, label in rows]
        class_index = read_class_index(self._resolve(self.class_index)) if self.class_index is not None else None
        labels = [label for _, _, label in flat]
        names, indices = label_indices(labels, class_index, "data.train_list/val_list/test_list")
        splits: dict[str, list[Clip]] = {}
        for (split, path, _), index in zip(flat, indices, strict=True):
            splits.setdefault(split, []).append(Clip(path, index))
        return names, {split: splits.get(split) for split in ("train", "val", "test")}
