"""``shard=<i>/<n>``: which part of an extraction process i of n does, and where it writes it.

Row stores (images, clips, boxes) split the batches, not the items: shard i takes a contiguous run of whole
batches of ``batch_size`` items, so every batch it computes is one a single-process run computes too, and
the merged features are byte-identical. Dense extraction splits the videos (its batches never span videos).
Shard i writes ``<store>/shard-<i>-of-<n>/`` (dense: the per-video files go straight to ``<store>``);
``python -m features.merge <output>`` joins them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

SHARD_DIR = re.compile(r"shard-(\d+)-of-(\d+)")


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with 0 <= i < n; None stays None (one process does everything)."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"shard={value!r} must be '<i>/<n>' with 0 <= i < n, e.g. shard=0/4 ... shard=3/4")
    return int(match[1]), int(match[2])


def shard_dir(store: Path, shard: tuple[int, int] | None) -> Path:
    return store if shard is None else store / f"shard-{shard[0]}-of-{shard[1]}"


def batch_items(num_items: int, batch_size: int, shard: tuple[int, int] | None) -> range:
    """The items of ``shard``: whole batches, as evenly spread over the shards as batches allow."""
    if shard is None:
        return range(num_items)
    i, n = shard
    batches = math.ceil(num_items / batch_size)
    lo, hi = (batches * i // n) * batch_size, (batches * (i + 1) // n) * batch_size
    return range(min(lo, num_items), min(hi, num_items))


def even_items(num_items: int, shard: tuple[int, int] | None) -> range:
    """The items of ``shard`` when any split gives the same result (dense: one video at a time)."""
    if shard is None:
        return range(num_items)
    i, n = shard
    return range(num_items * i // n, num_items * (i + 1) // n)


def shard_desc(shard: tuple[int, int] | None) -> str | None:
    return None if shard is None else f"shard {shard[0]}/{shard[1]}"
