"""Extraction modes behind one small interface, chosen by name (``mode=<name>``) from one table, ``MODES``.

Every mode has four parts, and extract.py, merge, knn and report reach a mode only through them:

    plan + store   ``extract(cfg, reading, embedder, settings, dirs, *, shard, device, half) -> {layer: meta}``:
                   lays out the rows of the input (``reading``: features/plans.py), opens one store per layer
                   (resumable, one shard of it with ``shard``), fills it
    merge          ``merge(store, shards, index, state) -> state``: joins the finished shards' features in
                   ``store`` (features/merge.py writes the index, progress.json and meta.json around it)
    read           ``read(folder, index) -> (rows, D)``: a finished store's features in index.csv order

``clip_rows``: the rows are clips of videos, ``test_clips`` per video (per-video means apply).
Adding a mode: a module with its three functions, and its row here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from features import clips, dense


@dataclass(frozen=True)
class Mode:
    extract: Callable
    merge: Callable
    read: Callable
    clip_rows: bool


MODES = {
    "clips": Mode(extract=clips.extract_rows, merge=clips.merge_rows, read=clips.read_rows, clip_rows=True),
    "dense": Mode(extract=dense.extract_dense, merge=dense.merge_dense, read=dense.dense_features, clip_rows=False),
}


def stored_mode(folder: Path) -> Mode:
    """The mode an extraction folder was written by (its progress.json or meta.json; ``clips`` for a plain
    feature set such as ``video_mean/``)."""
    for name in ("progress.json", "meta.json"):
        path = folder / name
        if path.is_file():
            record = json.loads(path.read_text())
            mode = record.get("settings", record).get("mode")
            if mode in MODES:
                return MODES[mode]
    return MODES["clips"]
