"""Join the shards of an extraction: ``python -m features.merge <output>`` (or ``extract.py merge=true``).

Every folder under ``<output>`` holding ``shard-<i>-of-<n>/`` folders (the output itself, or each layer's
store) is merged once all n shards are finished: index.csv (rows renumbered in order), features.npy (row
stores: the shards' rows concatenated), failures.csv and progress.json come out byte-identical to a
single-process run with the same settings, and the shard folders are removed. meta.json sums the shards'
rows and failures; its ``seconds`` is the slowest shard's. An unfinished or missing shard is an error naming
the command that finishes it.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np

from features.modes import MODES
from features.shards import SHARD_DIR
from features.store import fingerprint, write_atomic, write_video_means


def merge_output(output: str | Path) -> list[dict[str, Any]]:
    """Merge every sharded store under ``output``; returns their meta.json records."""
    output = Path(output)
    groups: dict[Path, list[Path]] = {}
    for folder in sorted(output.rglob("shard-*-of-*")):
        if folder.is_dir() and SHARD_DIR.fullmatch(folder.name):
            groups.setdefault(folder.parent, []).append(folder)
    if not groups:
        raise FileNotFoundError(f"{output}: no shard-<i>-of-<n> folders to merge (run extract.py shard=<i>/<n> first)")
    return [merge_store(store, shards) for store, shards in groups.items()]


def _read_shards(store: Path, folders: list[Path]) -> list[dict[str, Any]]:
    shards = []
    for folder in folders:
        progress = folder / "progress.json"
        if not progress.is_file():
            raise FileNotFoundError(f"{progress} not found: shard {folder.name} never started")
        state = json.loads(progress.read_text())
        meta_file = folder / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
        shards.append({"folder": folder, "state": state, "meta": meta})
    counts = {tuple(s["state"]["shard"]["shard"])[1] for s in shards}
    if len(counts) != 1:
        raise ValueError(f"{store} mixes shards of different splits {sorted(counts)}; remove the stale ones")
    n = counts.pop()
    have = {s["state"]["shard"]["shard"][0] for s in shards}
    missing = sorted(set(range(n)) - have)
    if missing:
        raise ValueError(f"{store}: shards {missing} of {n} are missing; run extract.py shard=<i>/{n} for each")
    shards.sort(key=lambda s: s["state"]["shard"]["shard"][0])
    unfinished = [s["folder"].name for s in shards if s["meta"] is None or _behind(s["state"])]
    if unfinished:
        raise ValueError(f"{store}: {unfinished} are unfinished; rerun their extract.py shard=<i>/{n} command")
    first = shards[0]["state"]
    for s in shards[1:]:
        if s["state"]["settings"] != first["settings"] or s["state"]["shard"]["dim"] != first["shard"]["dim"]:
            raise ValueError(f"{s['folder']} was extracted with other settings than {shards[0]['folder']}")
    return shards


def _behind(state: dict[str, Any]) -> bool:
    items = state["shard"].get("items")  # row stores; a dense shard is finished once its meta.json is written
    return items is not None and state["done_items"] < items[1]


def merged_index(folders: list[Path]) -> str:
    """The shards' index.csv rows in order, renumbered from 0 (dense shards number their own rows)."""
    buf = StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    row = 0
    for k, folder in enumerate(folders):
        with (folder / "index.csv").open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            if k == 0:
                writer.writerow(header)
            for fields in reader:
                writer.writerow([row, *fields[1:]])
                row += 1
    return buf.getvalue()


def merge_store(store: Path, folders: list[Path]) -> dict[str, Any]:
    shards = _read_shards(store, folders)
    folders = [s["folder"] for s in shards]
    settings = shards[0]["state"]["settings"]
    info = shards[0]["state"]["shard"]
    dim, dtype = info["dim"], info["dtype"]
    index = merged_index(folders)
    failures = [f for s in shards for f in s["state"]["failures"]]
    key = fingerprint({**settings, "dim": dim, "dtype": dtype}, index)
    mode = MODES[settings.get("mode") or "clips"]
    state = mode.merge(store, shards, index, {"fingerprint": key, "settings": settings, "failures": failures})
    write_atomic(store / "index.csv", index)
    write_atomic(store / "progress.json", json.dumps(state, indent=1))
    metas = [s["meta"] for s in shards]
    meta = {
        **metas[0],
        "rows": sum(m["rows"] for m in metas),
        "failures": sum(m["failures"] for m in metas),
        "seconds": max(m["seconds"] for m in metas),
        "merged_shards": len(shards),
    }
    if "videos" in meta:
        meta["videos"] = sum(m["videos"] for m in metas)
    clip_rows = settings.get("kind") == "videos" and mode.clip_rows and settings.get("boxes") is None
    if clip_rows and meta.get("video_mean"):
        features = np.load(store / "features.npy", mmap_mode="r")
        rows = list(csv.DictReader(StringIO(index)))
        write_video_means(store, rows, features, clips=int(settings["preprocessing"]["test_clips"]))
    write_atomic(store / "meta.json", json.dumps(meta, indent=1, default=str))
    for folder in folders:
        shutil.rmtree(folder)
    return meta


def main(argv: list[str]) -> list[dict[str, Any]]:
    if len(argv) != 1:
        raise SystemExit("usage: python -m features.merge <output folder of extract.py shard=<i>/<n> runs>")
    metas = merge_output(argv[0])
    for meta in metas:
        print(f"merged {meta['merged_shards']} shards: {meta['rows']} rows, {meta['failures']} failures")
    return metas


if __name__ == "__main__":
    main(sys.argv[1:])
