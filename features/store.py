"""The output folder of an extraction, written so that an interrupted job can resume exactly.

    features.npy    (rows, D) float32|float16, preallocated (``np.lib.format.open_memmap``), filled in batches
    index.csv       the plan's rows, written before any feature
    failures.csv    row,path,error for every row whose file could not be read (its features are NaN)
    progress.json   the settings' fingerprint, the number of finished items and the failures so far; rewritten
                    atomically after each batch is flushed to features.npy, so it never claims unwritten rows

A rerun with the same settings reads progress.json and continues after the last finished item; other
settings are refused (or overwritten with ``resume=false``).
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


def index_text(plan: Plan) -> str:
    buf = StringIO()
    writer = csv.DictWriter(buf, fieldnames=plan.columns, lineterminator="\n")
    writer.writeheader()
    for row, fields in enumerate(plan.index):
        writer.writerow({"row": row, **fields})
    return buf.getvalue()


def fingerprint(settings: dict[str, Any], index: str) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str) + "\n" + index
    return hashlib.sha256(blob.encode()).hexdigest()


class FeatureStore:
    """features.npy + progress of one output folder; ``open`` starts it or picks up an unfinished one."""

    def __init__(self, out: Path, plan: Plan, features: np.ndarray, state: dict[str, Any]) -> None:
        self.out, self.plan, self.features, self.state = out, plan, features, state

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
    ) -> FeatureStore:
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(DTYPES)}")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        index = index_text(plan)
        key = fingerprint({**settings, "dim": dim, "dtype": dtype}, index)
        progress = out / "progress.json"
        if resume and progress.is_file():
            state = json.loads(progress.read_text())
            if state.get("fingerprint") != key:
                raise ValueError(
                    f"{out} holds an extraction with other settings or inputs ({progress}); "
                    "choose a new output=, "
                    f"or resume=false to overwrite it"
                )
            features = np.lib.format.open_memmap(out / "features.npy", mode="r+")
            return cls(out, plan, features, state)
        for stale in ("features.npy", "failures.csv", "progress.json"):
            (out / stale).unlink(missing_ok=True)
        write_atomic(out / "index.csv", index)
        features = np.lib.format.open_memmap(
            out / "features.npy", mode="w+", dtype=DTYPES[dtype], shape=(plan.num_rows, dim)
        )
        state = {"fingerprint": key, "settings": settings, "done_items": 0, "failures": []}
        store = cls(out, plan, features, state)
        store._save()
        return store

    @property
    def done_items(self) -> int:
        return int(self.state["done_items"])

    @property
    def complete(self) -> bool:
        return self.done_items >= self.plan.num_items

    def write(self, items: list[int], feats: np.ndarray, errors: list[tuple[int, str]], end: int) -> None:
        """Store the features of ``items`` (rows in item order, ``feats`` (R, D)), NaN the rows of failed
        items, then mark every item before ``end`` done."""
        offsets = self.plan.offsets
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in items]) if items else np.zeros(0, int)
        if len(rows) != len(feats):
            raise RuntimeError(f"{len(feats)} feature rows for {len(rows)} planned rows of items {items[:5]}...")
        self.features[rows] = feats.astype(self.features.dtype, copy=False)
        for item, message in errors:
            start, stop = offsets[item], offsets[item + 1]
            self.features[start:stop] = np.nan
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
