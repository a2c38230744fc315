"""The output folder of an extraction, written so that an interrupted job can resume exactly.

    features.npy    (rows, D) float32|float16, preallocated (``np.lib.format.open_memmap``), filled in batches
    index.csv       the plan's rows, written before any feature
    failures.csv    row,path,error for every row whose file could not be read (its features are NaN)
    progress.json   the settings' fingerprint, the number of finished items and the failures so far; rewritten
                    atomically after each batch is flushed to features.npy, so it never claims unwritten rows

A rerun with the same settings reads progress.json and continues after the last finished item; other
settings are refused (or overwritten with ``resume=false``).

A shard (``shard=<i>/<n>``, features/shards.py) is a store of its own in ``<output>/shard-<i>-of-<n>/`` that
holds a contiguous part of the items: the rows of its items (index.csv keeps the rows' global numbers) and
its progress.json records the shard and the feature size, so that ``features.merge`` can rebuild the files
a single-process run writes.
"""

from __future__ import annotations

import csv
import hashlib
import json
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np

from features.plans import Plan
from runs.atomic import atomic_open

DTYPES = {"float32": np.float32, "float16": np.float16}


def write_atomic(path: Path, text: str) -> None:
    # Not fsynced: progress.json is rewritten after every batch, and a lost update only repeats that batch.
    with atomic_open(path, durable=False) as f:
        f.write(text)


def index_text(plan: Plan, rows: range | None = None) -> str:
    """index.csv of the plan's ``rows`` (all by default), each with its global row number."""
    rows = range(plan.num_rows) if rows is None else rows
    buf = StringIO()
    writer = csv.DictWriter(buf, fieldnames=plan.columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({"row": row, **plan.index[row]})
    return buf.getvalue()


def resumed_state(progress: Path, key: str) -> dict:
    """The saved progress of an extraction to resume; refused when it was made with other settings or inputs."""
    state = json.loads(progress.read_text())
    if state.get("fingerprint") != key:
        raise ValueError(
            f"{progress.parent} holds an extraction with other settings or inputs ({progress}); "
            "choose a new output=, or resume=false to overwrite it"
        )
    return state


def fingerprint(settings: dict[str, Any], index: str) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str) + "\n" + index
    return hashlib.sha256(blob.encode()).hexdigest()


class FeatureStore:
    """features.npy + progress of one output folder; ``open`` starts it or picks up an unfinished one."""

    def __init__(self, out: Path, plan: Plan, features: np.ndarray, state: dict[str, Any], items: range) -> None:
        self.out, self.plan, self.features, self.state, self.items = out, plan, features, state, items
        self.row0 = int(plan.offsets[items.start])

    @classmethod
    def open(
        cls,
        out: str | Path,
        plan: Plan,
        *,
        dim: int,
        dtype: str,
        settings: dict[str, Any],
        resume: bool = True,
        items: range | None = None,
        shard: tuple[int, int] | None = None,
    ) -> FeatureStore:
        """``items``: the part of the plan this store holds (a shard's; all by default)."""
        items = range(plan.num_items) if items is None else items
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(DTYPES)}")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        rows = range(int(plan.offsets[items.start]), int(plan.offsets[items.stop]))
        index = index_text(plan, rows)
        shard_info = (
            {"shard": list(shard), "items": [items.start, items.stop], "dim": dim, "dtype": dtype} if shard else {}
        )
        key = fingerprint({**settings, "dim": dim, "dtype": dtype, **shard_info}, index)
        progress = out / "progress.json"
        if resume and progress.is_file():
            state = resumed_state(progress, key)
            features = np.lib.format.open_memmap(out / "features.npy", mode="r+")
            return cls(out, plan, features, state, items)
        for stale in ("features.npy", "failures.csv", "progress.json"):
            (out / stale).unlink(missing_ok=True)
        write_atomic(out / "index.csv", index)
        features = np.lib.format.open_memmap(
            out / "features.npy", mode="w+", dtype=DTYPES[dtype], shape=(len(rows), dim)
        )
        state = {"fingerprint": key, "settings": settings, "done_items": items.start, "failures": []}
        if shard:
            state["shard"] = shard_info  # what features.merge needs (a single-process store has no such key)
        store = cls(out, plan, features, state, items)
        store._save()
        return store

    @property
    def done_items(self) -> int:
        return int(self.state["done_items"])

    @property
    def complete(self) -> bool:
        return self.done_items >= self.items.stop

    def write(self, items: list[int], feats: np.ndarray, errors: list[tuple[int, str]], end: int) -> None:
        """Store the features of ``items`` (rows in item order, ``feats`` (R, D)), NaN the rows of failed
        items, then mark every item before ``end`` done. A batch this store already holds (several layer
        stores resume from the one that lags) is skipped."""
        if end <= self.done_items:
            return
        offsets = self.plan.offsets
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in items]) if items else np.zeros(0, int)
        if len(rows) != len(feats):
            raise RuntimeError(f"{len(feats)} feature rows for {len(rows)} planned rows of items {items[:5]}...")
        self.features[rows - self.row0] = feats.astype(self.features.dtype, copy=False)
        for item, message in errors:
            start, stop = offsets[item], offsets[item + 1]
            self.features[start - self.row0 : stop - self.row0] = np.nan
            path = self.plan.index[start]["path"] if stop > start else ""
            self.state["failures"] += [{"row": int(r), "path": path, "error": message} for r in range(start, stop)]
        self.features.flush()  # the rows are on disk before progress.json says so
        self.state["done_items"] = int(end)
        if errors:
            self.write_failures()
        self._save()

    def write_failures(self) -> None:
        """failures.csv from the failures so far (a header only when every file was read)."""
        buf = StringIO()
        writer = csv.DictWriter(buf, fieldnames=["row", "path", "error"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.state["failures"])
        write_atomic(self.out / "failures.csv", buf.getvalue())

    def _save(self) -> None:
        write_atomic(self.out / "progress.json", json.dumps(self.state, indent=1))


def write_video_means(
    out: Path, index: list[dict[str, Any]], features: np.ndarray, *, clips: int, chunk: int = 1024
) -> Path:
    """``out/video_mean/``: one row per video, the mean of its ``clips`` rows (NaN for a video that failed);
    a feature set of its own (features.npy + index.csv) that ``features.knn`` scores like any other."""
    mean_dir = out / "video_mean"
    mean_dir.mkdir(exist_ok=True)
    num_videos = len(index) // clips
    means = np.lib.format.open_memmap(
        mean_dir / "features.npy", mode="w+", dtype=features.dtype, shape=(num_videos, features.shape[1])
    )
    for v in range(0, num_videos, chunk):
        block = np.asarray(features[v * clips : (v + chunk) * clips], dtype=np.float32)
        means[v : v + chunk] = block.reshape(-1, clips, features.shape[1]).mean(1).astype(features.dtype)
    means.flush()
    buf = StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "path", "label", "clips"])
    for v in range(num_videos):
        first = index[v * clips]
        writer.writerow([v, first["path"], first["label"], clips])
    write_atomic(mean_dir / "index.csv", buf.getvalue())
    return mean_dir
