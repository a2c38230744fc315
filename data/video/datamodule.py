"""DataModules of videos (``data=video_folder``, ``ucf101``, ``hmdb51``, ``synthetic_video``).

Splits come from split lists (``train_list``/``test_list``, optional ``val_list``), from HMDB51's split
files, or, without any, from a seeded split of all videos. A validation split that is not listed is held
out of the training videos; ``group_pattern`` (a regex, e.g. UCF101's ``_g\\d+_``) holds out whole groups
so that clips cut from one long video never sit on both sides.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from data.base import ClassificationDataModule, resolve_size, seeded_split
from data.in_memory import IN_MEMORY_MODES
from data.video.cache import check_fits, decode_videos
from data.video.dataset import VideoClipDataset
from data.video.lists import (
    VIDEO_EXTENSIONS,
    Video,
    class_folders,
    read_class_index,
    read_hmdb_splits,
    read_split_list,
    scan_folder,
)
from data.video.sampling import ClipSampler
from data.video.synthetic import generate

log = logging.getLogger(__name__)
CLIP_SAMPLINGS = ("stride", "segments")


class VideoDataModule(ClassificationDataModule):
    """Videos under ``root/<class>/...``; every FFmpeg-readable container and codec.

    Args:
        root: the folder holding one subfolder per class.
        class_index: ``classInd.txt``-style file fixing class order and label base; default: sorted folders.
        train_list / val_list / test_list: split lists (paths relative to ``root`` unless absolute).
        val_size / test_size: fractions or counts for the seeded splits made where lists are missing; val_size=0
            (and no val_list): no validation split (every training video trains).
        split_seed: seeds those splits (kept apart from ``seed`` so that seeds vary training, not data).
        group_pattern: regex whose match in a file name names its group; seeded splits keep groups whole.
        extensions: file suffixes taken as videos when scanning folders.
        num_frames / frame_stride / target_fps: clip sampling (``target_fps`` overrides the stride).
        clip_sampling: ``stride`` (``num_frames`` frames ``frame_stride`` apart) or ``segments`` (one frame from
            each of ``num_frames`` equal segments of the whole video, TSN's sampling: data/video/sampling.py).
        crop_size / short_side: frames are resized to ``short_side`` (default ``crop_size``) and cropped.
        test_clips / test_crops: views per test video (uniformly spaced clips x 1 or 3 crops).
        skip_unreadable_train / skip_unreadable_eval: skip (warn, count) or fail on unreadable files.
        obtain: where a published dataset is downloaded and how its files are laid out (data=ucf101,
            hmdb51): said when ``root`` is missing.
    """

    def __init__(
        self,
        *,
        root: str,
        class_index: str | None = None,
        train_list: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        val_size: float | int = 0.1,
        test_size: float | int = 0.2,
        split_seed: int = 0,
        group_pattern: str | None = None,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        num_frames: int = 8,
        frame_stride: int = 1,
        target_fps: float | None = None,
        clip_sampling: str = "stride",
        crop_size: int = 112,
        short_side: int | None = None,
        test_clips: int = 1,
        test_crops: int = 1,
        skip_unreadable_train: bool = True,
        skip_unreadable_eval: bool = False,
        obtain: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.obtain = obtain
        self.class_index = class_index
        self.lists = {"train": train_list, "val": val_list, "test": test_list}
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed
        self.group_pattern = re.compile(group_pattern) if group_pattern else None
        self.extensions = tuple(extensions)
        if clip_sampling not in CLIP_SAMPLINGS:
            raise ValueError(f"data.clip_sampling={clip_sampling!r} is unknown; choose one of {CLIP_SAMPLINGS}")
        self.sampler = ClipSampler(
            num_frames=num_frames,
            frame_stride=frame_stride,
            target_fps=target_fps,
            segments=clip_sampling == "segments",
        )
        self.crop_size, self.short_side = int(crop_size), short_side
        self.test_clips, self.test_crops = int(test_clips), int(test_crops)
        self.skip_unreadable_train, self.skip_unreadable_eval = skip_unreadable_train, skip_unreadable_eval
        self.test_is_val = False
        self._splits: dict[str, list[Video]] | None = None

    # --- finding the videos -----------------------------------------------------------------------------
    def check(self) -> None:
        """Reads the class list and every split now, so a missing root, list or file fails before training."""
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"no video dataset: {self.root} is not a folder. "
                + (f"{self.obtain.strip()}. " if self.obtain else f"Expected {self.root}/<class>/<video>. ")
                + "Then set data.root (or $VISFEAT_DATA) to the folder holding the class folders."
            )
        base = None
        if self.class_index is not None:
            names, base = read_class_index(self._resolve(self.class_index))
        else:
            names = class_folders(self.root, self.extensions)
        if not names:
            raise FileNotFoundError(
                f"{self.root} has no class folders with videos ({', '.join(self.extensions)}); "
                f"expected {self.root}/<class>/<video>"
            )
        self._class_names = names
        splits = self.split_videos(names, base)
        for split, videos in splits.items():
            if not videos and not (split == "val" and self.holds_out_no_validation):
                raise ValueError(
                    f"the {split} split of {self.root} is empty; check data.val_size/test_size and the lists"
                )
            missing = [rel for rel, _ in videos if not (self.root / rel).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} {split} videos are missing under {self.root}, e.g. {missing[:3]}"
                )
        self._splits = splits

    @property
    def holds_out_no_validation(self) -> bool:
        """``data.val_size=0`` without a ``val_list``: every training video trains and no validation runs
        (trainer.run.no_validation_without_split), for datasets too small to spare a held-out scene."""
        return self.lists["val"] is None and self.val_size == 0

    def split_videos(self, names: list[str], base: int | None) -> dict[str, list[Video]]:
        """``{"train", "val", "test"}`` -> videos, from the lists or seeded splits."""
        given = {k: self._resolve(v) for k, v in self.lists.items() if v is not None}
        if given and not {"train", "test"} <= set(given):
            raise ValueError(
                f"data.train_list and data.test_list go together (val_list is optional); got only {sorted(given)}"
            )
        if given:
            train = read_split_list(given["train"], names, base)
            test = read_split_list(given["test"], names, base)
            val = read_split_list(given["val"], names, base) if "val" in given else None
            return self._with_val(train, test, val)
        found = scan_folder(self.root, self.extensions)
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise ValueError(f"class folders {unknown} of {self.root} are not in data.class_index {self.class_index}")
        videos = [(rel, names.index(name)) for name, rels in found.items() for rel in rels]
        if not videos:
            raise FileNotFoundError(f"no videos ({', '.join(self.extensions)}) under {self.root}/<class>/")
        test, rest = self._holdout(videos, self.test_size, "data.test_size")
        return self._with_val(rest, test, None)

    def _with_val(self, train: list[Video], test: list[Video], val: list[Video] | None) -> dict[str, list[Video]]:
        if val is None:
            val, train = self._holdout(train, self.val_size, "data.val_size")
        return {"train": train, "val": val, "test": test}

    def _holdout(self, videos: list[Video], size: float | int, name: str) -> tuple[list[Video], list[Video]]:
        """A seeded part of ``videos`` of ``size`` (whole groups with ``group_pattern``) and the rest."""
        units = [self._group(rel) for rel, _ in videos]
        keys = sorted(set(units))
        n_out = resolve_size(size, len(keys), name)
        out_idx, _ = seeded_split(len(keys), (n_out, len(keys) - n_out), self.split_seed)
        held = {keys[i] for i in out_idx}
        out = [v for v, u in zip(videos, units, strict=True) if u in held]
        rest = [v for v, u in zip(videos, units, strict=True) if u not in held]
        return out, rest

    def _group(self, rel: str) -> str:
        if self.group_pattern is None:
            return rel
        match = self.group_pattern.search(Path(rel).name)
        return f"{Path(rel).parts[0]}/{match.group(0)}" if match else rel

    def _resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    # --- datasets ------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.hold_decoded(self.list_splits())

    def hold_decoded(self, splits: tuple[VideoClipDataset, ...]) -> tuple[VideoClipDataset, ...]:
        """``data.in_memory``: the splits taking their clips from videos decoded once (data/video/cache.py);
        unchanged when false, or ``auto`` and the decoded frames would not fit in memory."""
        if self.in_memory not in IN_MEMORY_MODES:
            raise ValueError(f"data.in_memory={self.in_memory!r} must be true, false or auto")
        if self.in_memory is False:
            return splits
        paths = list(dict.fromkeys(path for split in splits for path, _ in split.videos))
        short_side = self.short_side or self.crop_size
        if self.in_memory == "auto":
            try:
                check_fits(paths, short_side)
            except ValueError as err:
                log.info("data.in_memory=auto: per-clip decoding (%s)", err)
                return splits
        decoded = dict(
            zip(paths, decode_videos(paths, short_side=short_side, num_workers=self.num_workers), strict=True)
        )
        return tuple(split.with_decoded(decoded) for split in splits)

    def make_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        if self._splits is None:
            self.check()
        return (
            self._dataset(self._splits["train"], train=True),
            self._dataset(self._splits["val"], train=False),
            self._dataset(self._splits["test"], train=False, clips=self.test_clips, crops=self.test_crops),
        )

    def _dataset(
        self,
        videos: list[Video],
        *,
        train: bool,
        clips: int = 1,
        crops: int = 1,
        windows: list[tuple[float, float] | None] | None = None,
    ) -> VideoClipDataset:
        return VideoClipDataset(
            [(self.root / rel, label) for rel, label in videos],
            windows=windows,
            sampler=self.sampler,
            crop_size=self.crop_size,
            short_side=self.short_side,
            train=train,
            num_clips=clips,
            num_crops=crops,
            transform=self.train_transform if train else self.eval_transform,
            skip_unreadable=self.skip_unreadable_train if train else self.skip_unreadable_eval,
        )


class HMDB51DataModule(VideoDataModule):
    """HMDB51: ``root/<class>/<clip>.avi``; official ``<class>_test_split<k>.txt`` files in ``split_dir``."""

    def __init__(self, *, split_dir: str, split: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if split not in (1, 2, 3):
            raise ValueError(f"data.split={split} must be 1, 2 or 3 (HMDB51 has three official splits)")
        self.split_dir, self.split = split_dir, split

    def split_videos(self, names: list[str], base: int | None) -> dict[str, list[Video]]:
        train, test = read_hmdb_splits(self._resolve(self.split_dir), names, self.split)
        return self._with_val(train, test, None)


class SyntheticVideoDataModule(VideoDataModule):
    """The motion-order dataset of ``data.video.synthetic``, generated under ``root`` on first use."""

    # A config stored in a checkpoint may have it generated (a checkpoint of the video demo is evaluated on its
    # own data), but only at a bounded size (nets/stored.py): 4 classes x 500 short, small videos a split at most.
    STORED_CONFIG_LIMITS = {
        "train_per_class": range(501),
        "val_per_class": range(501),
        "test_per_class": range(501),
        "video_frames": range(1, 65),
        "frame_size": range(8, 129),
    }

    def __init__(
        self,
        *,
        root: str,
        train_per_class: int = 100,
        val_per_class: int = 25,
        test_per_class: int = 50,
        video_frames: int = 16,
        frame_size: int = 32,
        fps: int = 15,
        dataset_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(
            root=root,
            class_index="classInd.txt",
            train_list="trainlist.txt",
            val_list="vallist.txt",
            test_list="testlist.txt",
            **kwargs,
        )
        self.generator_args = {
            "per_class": {"train": train_per_class, "val": val_per_class, "test": test_per_class},
            "num_frames": video_frames,
            "size": frame_size,
            "fps": fps,
            "seed": dataset_seed,
        }
        self.generated = False

    def prepare_data(self) -> None:
        if not self.generated:
            self.root = generate(self.root, **self.generator_args)
            self.generated = True

    def check(self) -> None:
        self.prepare_data()
        super().check()
