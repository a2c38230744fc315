"""extract.py shard=<i>/<n> + features.merge: the merged store is byte-identical to a single-process run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from features.merge import main as merge_main
from features.shards import batch_items, parse_shard
from tests.test_extract import lenet_digits, write_digits
from tests.test_extract_dense import dense
from tests.video_utils import make_video

STORE_FILES = ("features.npy", "index.csv", "failures.csv", "progress.json")


def test_shards_cover_whole_batches():
    parts = [batch_items(23, 4, (i, 3)) for i in range(3)]
    assert parts == [range(0, 8), range(8, 16), range(16, 23)]  # 6 batches, 2 each
    assert [len(batch_items(3, 4, (i, 2))) for i in range(2)] == [0, 3]  # fewer batches than shards
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="shard="):
            parse_shard(bad)


def test_sharded_layers_merge_byte_identical_to_one_run(make_cfg, tmp_path):
    write_digits(tmp_path / "in", np.arange(22))
    (tmp_path / "in" / "3" / "broken.png").write_bytes(b"\x89PNG not really")
    common = ["batch_size=4", "layers=[conv1,pooled]", "pool=max"]
    lenet_digits(make_cfg, tmp_path, *common, out="single")
    for i in (2, 0, 1):  # any order
        lenet_digits(make_cfg, tmp_path, *common, f"shard={i}/3", out="sharded")
    assert (tmp_path / "sharded" / "conv1" / "shard-1-of-3" / "features.npy").is_file()
    metas = merge_main([str(tmp_path / "sharded")])
    assert len(metas) == 2 and {m["rows"] for m in metas} == {23} and {m["failures"] for m in metas} == {1}
    for layer in ("conv1", "pooled"):
        for name in STORE_FILES:
            merged = (tmp_path / "sharded" / layer / name).read_bytes()
            assert merged == (tmp_path / "single" / layer / name).read_bytes(), (layer, name)
        assert not list((tmp_path / "sharded" / layer).glob("shard-*"))  # the shard folders are gone


def test_merge_refuses_missing_or_unfinished_shards(make_cfg, tmp_path):
    write_digits(tmp_path / "in", np.arange(8))
    lenet_digits(make_cfg, tmp_path, "batch_size=4", "shard=0/2")
    with pytest.raises(ValueError, match=r"shards \[1\] of 2 are missing"):
        merge_main([str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="no shard"):
        merge_main([str(tmp_path / "in")])


def test_sharded_dense_merge_byte_identical(make_cfg, tmp_path):
    for i, n in enumerate((9, 5, 12, 6)):
        make_video(tmp_path / "in" / f"c{i % 2}" / f"v{i}.mp4", n)
    common = ["stack=4", "step=3", "keep_partial=true"]
    dense(make_cfg, tmp_path, *common, out="single")
    for i in range(3):
        dense(make_cfg, tmp_path, *common, f"shard={i}/3", out="sharded")
    dense(make_cfg, tmp_path, *common, "merge=true", out="sharded")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    for name in ("index.csv", "failures.csv", "progress.json"):
        assert (sharded / name).read_bytes() == (single / name).read_bytes(), name
    videos = sorted(p.relative_to(single).as_posix() for p in single.rglob("*.npy"))
    assert len(videos) == 4
    for v in videos:
        assert (sharded / v).read_bytes() == (single / v).read_bytes(), v
    assert json.loads((sharded / "meta.json").read_text())["videos"] == 4
