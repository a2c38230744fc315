"""``mode=clips``: one row per image, clip or box, in one ``features.npy`` per layer store (features/store.py).

The mode's four parts (features/modes.py): the plan is features/plans.py's (index.csv rows laid out before
anything is decoded), ``extract_rows`` fills the stores batch by batch, ``merge_rows`` concatenates the shards'
rows, ``read_rows`` reads a finished store.
"""

from __future__ import annotations

import csv
import logging
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm import tqdm

from features.embed import Embedder, embed_numpy
from features.plans import Guarded, Plan, Reading, collate_items
from features.shards import batch_items, shard_desc, shard_dir
from features.store import FeatureStore, write_atomic, write_video_means

log = logging.getLogger(__name__)


def extract_rows(
    cfg: DictConfig,
    reading: Reading,
    embedder: Embedder,
    settings: dict[str, dict[str, Any]],
    dirs: dict[str, Path],
    *,
    shard: tuple[int, int] | None,
    device: torch.device,
    half: bool,
) -> dict[str, dict[str, Any]]:
    """One row per image, clip or box of ``reading.plan``: one FeatureStore per layer; per-video means of its
    ``reading.clips`` rows per video."""
    kind, plan = reading.kind, reading.plan
    shapes = embedder.probe(plan.sample_shape, boxes=cfg.boxes is not None)
    items = batch_items(plan.num_items, cfg.batch_size, shard)
    stores = {
        layer: FeatureStore.open(
            shard_dir(dirs[layer], shard),
            plan,
            dim=shapes[layer][0],
            dtype=cfg.dtype,
            settings=settings[layer],
            resume=cfg.resume,
            items=items,
            shard=shard,
        )
        for layer in embedder.layers
    }
    first = stores[embedder.layers[0]]
    log.info(
        "%s: %d %s -> %d rows (items %d..%d) x %s (%s) in %s; %d items done",
        reading.name,
        plan.num_items,
        kind,
        plan.num_rows,
        items.start,
        items.stop,
        {layer: shape[0] for layer, shape in shapes.items()},
        cfg.dtype,
        cfg.output,
        first.done_items - items.start,
    )
    fill(
        stores,
        embedder,
        plan,
        items,
        device=device,
        half=half,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        progress=cfg.progress,
        unit="clip" if kind == "videos" else "img",
        desc=shard_desc(shard),
    )
    metas = {}
    for layer, store in stores.items():
        store.write_failures()
        if kind == "videos" and cfg.video_mean and cfg.boxes is None and shard is None:
            write_video_means(store.out, plan.index, store.features, clips=reading.clips)
        metas[layer] = {
            **settings[layer],
            "rows": len(store.features),
            "dim": shapes[layer][0],
            "map_shape": shapes[layer][1],
            "failures": len(store.state["failures"]),
        }
    return metas


def fill(
    stores: dict[str, FeatureStore],
    embedder: Embedder,
    plan: Plan,
    items: range,
    *,
    device: torch.device,
    half: bool,
    batch_size: int,
    num_workers: int,
    progress: bool,
    unit: str,
    desc: str | None = None,
) -> None:
    """Decode, embed and write the ``items`` not done yet, saving progress after every batch.

    Batches start at ``items.start`` plus multiples of ``batch_size`` whether or not a run was resumed (and
    shards start on batch boundaries), so a resumed or sharded run computes exactly the batches an
    uninterrupted single run would (same batch size: byte-identical features). Layer stores resume from
    the one that lags; the others skip the batches they hold.
    """
    start = min(store.done_items for store in stores.values())
    if start >= items.stop:
        log.info("%s is complete; nothing to do", ", ".join(str(s.out) for s in stores.values()))
        return
    loader = DataLoader(
        Guarded(plan.dataset, start=start, stop=items.stop),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_items,
        pin_memory=device.type == "cuda",
    )
    with tqdm(
        total=len(items),
        initial=start - items.start,
        unit=unit,
        disable=not progress,
        dynamic_ncols=True,
        desc=desc,
    ) as bar:
        try:
            for batch in loader:
                feats = {}
                if batch["input"] is not None:
                    feats = embed_numpy(embedder, batch["input"], batch.get("boxes"), device=device, half=half)
                for layer, store in stores.items():
                    empty = np.zeros((0, store.features.shape[1]), np.float32)
                    store.write(batch["items"], feats.get(layer, empty), batch["errors"], batch["end"])
                bar.update(len(batch["items"]) + len(batch["errors"]))
        except KeyboardInterrupt:
            log.warning(
                "interrupted after %d of %d items; rerun the same command to resume",
                min(store.done_items for store in stores.values()) - items.start,
                len(items),
            )
            raise


def merge_rows(store: Path, shards: list[dict[str, Any]], index: str, state: dict[str, Any]) -> dict[str, Any]:
    """The shards' rows concatenated into ``store/features.npy``, their failures into failures.csv."""
    total = sum(s["state"]["shard"]["items"][1] - s["state"]["shard"]["items"][0] for s in shards)
    merge_features(
        store / "features.npy", [s["folder"] / "features.npy" for s in shards], dim=shards[0]["state"]["shard"]["dim"]
    )
    state = {
        "fingerprint": state["fingerprint"],
        "settings": state["settings"],
        "done_items": total,
        "failures": state["failures"],
    }
    buf = StringIO()
    writer = csv.DictWriter(buf, fieldnames=["row", "path", "error"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(state["failures"])
    write_atomic(store / "failures.csv", buf.getvalue())
    return state


def merge_features(target: Path, parts: list[Path], *, dim: int, chunk: int = 65536) -> None:
    """Concatenates the shards' features.npy into ``target`` (the same header np.lib.format writes for a
    single run), streaming ``chunk`` rows at a time."""
    arrays = [np.load(p, mmap_mode="r") for p in parts]
    out = np.lib.format.open_memmap(target, mode="w+", dtype=arrays[0].dtype, shape=(sum(len(a) for a in arrays), dim))
    row = 0
    for a in arrays:
        for lo in range(0, len(a), chunk):
            block = a[lo : lo + chunk]
            out[row : row + len(block)] = block
            row += len(block)
    out.flush()
    del out


def read_rows(folder: Path, index: list[dict[str, str]]) -> np.ndarray:
    """A finished store's rows, ``(rows, D)``, memory-mapped."""
    if not (folder / "features.npy").is_file():
        raise FileNotFoundError(f"{folder / 'features.npy'} not found; features= must be an extract.py output folder")
    return np.load(folder / "features.npy", mmap_mode="r")
