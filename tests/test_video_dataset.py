"""The clip dataset and the video DataModules: shapes, views, frame order, splits, unreadable files."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from data.base import collate
from data.transforms import Pipeline
from data.video.datamodule import HMDB51DataModule, SyntheticVideoDataModule, VideoDataModule
from data.video.dataset import VideoClipDataset
from data.video.decode import VideoReadError, read_all
from data.video.encode import write_video
from data.video.sampling import ClipSampler
from data.video.synthetic import CLASSES, generate, render
from tests.video_utils import frame_ids, make_video, make_video_folder


def ids(x: torch.Tensor) -> list[int]:
    """Frame indices spelled by a (C, T, H, W) clip in [0, 1]."""
    return frame_ids(x.permute(1, 2, 3, 0).numpy() * 255).tolist()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return make_video_folder(root, {"jump": 4, "run": 4, "swim": 2}, num_frames=12, height=32, width=32)


def datamodule(root, **kw):
    args = dict(root=str(root), num_frames=4, frame_stride=2, crop_size=32, test_size=3, val_size=2, batch_size=4)
    return VideoDataModule(**{**args, **kw})


def test_seeded_split_and_batches(folder):
    dm = datamodule(folder, test_clips=3, test_crops=3, num_classes=3)
    dm.check()
    dm.check_num_classes()
    dm.setup()
    assert dm.class_names == ["jump", "run", "swim"]
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (5, 2, 3 * 9)
    splits = [{p for p, _ in ds.videos} for ds in (dm.train_set, dm.val_set, dm.test_set)]
    assert set.union(*splits) == {str(p) for p in folder.rglob("*.mp4")} and sum(map(len, splits)) == 10
    batch = next(iter(dm.train_dataloader()))
    assert batch["input"].shape == (4, 3, 4, 32, 32) and batch["input"].dtype == torch.float32
    assert batch["target"].dtype == torch.int64 and batch["num_skipped"] == 0
    for clip, path, y in zip(batch["input"], batch["path"], batch["target"], strict=True):
        first = ids(clip)[0]
        assert ids(clip) == [first, first + 2, first + 4, first + 6] and 0 <= first <= 5  # 12 frames, span 7
        assert dm.class_names[y] in path


def test_test_views_share_a_video_key_and_cover_clips(folder):
    dm = datamodule(folder, test_clips=3, test_crops=3)
    dm.setup()
    samples = [dm.test_set[i] for i in range(9)]  # the views of the first test video
    assert [s["video"] for s in samples] == [0] * 9 and [s["index"] for s in samples] == list(range(9))
    starts = [ids(s["input"])[0] for s in samples]
    assert starts == [0, 0, 0, 2, 2, 2, 5, 5, 5]  # 3 clips over 12 frames (last start 5) x 3 crops
    assert dm.test_set[9]["video"] == 1


def test_crops_along_the_long_side(tmp_path):
    # Columns brighten left to right: the three crops of a wide frame have increasing brightness.
    ramp = np.tile(np.linspace(0, 255, 96, dtype=np.float32)[None, :, None], (32, 1, 3)).astype(np.uint8)
    path = write_video(tmp_path / "wide.mp4", np.stack([ramp] * 6))
    ds = VideoClipDataset([(path, 0)], sampler=ClipSampler(num_frames=2), crop_size=32, train=False, num_crops=3)
    means = [ds[i]["input"].mean().item() * 255 for i in range(3)]
    assert means == pytest.approx([42.5, 127.5, 212.5], abs=4)
    tall = VideoClipDataset(
        [(write_video(tmp_path / "tall.mp4", np.stack([ramp.transpose(1, 0, 2)] * 6)), 0)],
        sampler=ClipSampler(num_frames=2),
        crop_size=32,
        train=False,
        num_crops=3,
    )
    assert [tall[i]["input"].mean().item() * 255 for i in range(3)] == pytest.approx(means, abs=4)


def test_short_side_resize_then_crop_and_transform(folder):
    pipe = Pipeline(mean=[0.5] * 3, std=[0.5] * 3)
    dm = datamodule(folder, crop_size=12, short_side=16, eval_transform=pipe, train_transform=pipe)
    dm.setup()
    assert dm.train_set[0]["input"].shape == (3, 4, 12, 12)
    x = dm.val_set[0]["input"]
    assert x.shape == (3, 4, 12, 12) and x.min() >= -1.01 and x.max() <= 1.01 and x.min() < -0.9


def test_lists_class_index_and_groups(tmp_path):
    root = make_video_folder(tmp_path / "v", {"Run": 0, "Jump": 0}, num_frames=6)
    for c in ["Run", "Jump"]:
        for g in range(1, 5):
            for k in range(2):
                make_video(root / c / f"v_{c}_g{g:02d}_c{k}.avi", 6)
    (root / "classInd.txt").write_text("1 Run\n2 Jump\n")
    train = [
        f"{c}/v_{c}_g{g:02d}_c{k}.avi {i + 1}" for i, c in enumerate(["Run", "Jump"]) for g in (1, 2, 3) for k in (0, 1)
    ]
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("".join(f"{c}/v_{c}_g04_c{k}.avi\n" for c in ["Run", "Jump"] for k in (0, 1)))
    dm = datamodule(
        root,
        class_index="classInd.txt",
        train_list="train.txt",
        test_list="test.txt",
        group_pattern=r"_g\d+_",
        val_size=2,
    )
    dm.setup()
    assert dm.class_names == ["Run", "Jump"]
    groups = [{Path(p).name.split("_c")[0] for p, _ in ds.videos} for ds in (dm.train_set, dm.val_set)]
    assert len(groups[1]) == 2 and not groups[0] & groups[1]  # two whole groups held out
    assert len(dm.val_set) == 4 and len(dm.train_set) == 8 and len(dm.test_set) == 4
    assert sorted(y for _, y in dm.test_set.videos) == [0, 0, 1, 1]

    (root / "bad.txt").write_text("Run/v_Run_g01_c0.avi 1\nJump/v_Jump_g01_c0.avi 1\n")
    with pytest.raises(ValueError, match="bad.txt:2: 'Jump/v_Jump_g01_c0.avi 1': label 1 does not match"):
        datamodule(root, class_index="classInd.txt", train_list="bad.txt", test_list="test.txt").check()
    with pytest.raises(ValueError, match="go together"):
        datamodule(root, train_list="train.txt").check()
    (root / "ghost.txt").write_text("Run/missing.avi\n")
    with pytest.raises(FileNotFoundError, match="missing.avi"):
        datamodule(root, train_list="train.txt", test_list="ghost.txt").check()


def test_missing_root_and_wrong_num_classes_fail_early(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="nowhere.*set data.root"):
        datamodule(tmp_path / "nowhere").check()
    dm = datamodule(folder, num_classes=5)
    dm.check()
    with pytest.raises(ValueError, match="data.num_classes=5 but the data has 3 classes"):
        dm.check_num_classes()


@pytest.fixture
def with_broken(tmp_path, folder):
    root = tmp_path / "v"
    make_video_folder(root, {"a": 3, "b": 3}, num_frames=8, height=32, width=32)
    (root / "a" / "broken.mp4").write_bytes(b"\x00" * 100)
    (root / "b" / "empty.mp4").write_bytes(b"")
    return root


def test_unreadable_files_are_skipped_and_counted_in_training(with_broken, caplog):
    videos = [(p, 0) for p in sorted(with_broken.rglob("*.mp4"))]
    ds = VideoClipDataset(videos, sampler=ClipSampler(num_frames=4), crop_size=32, train=True, skip_unreadable=True)
    with caplog.at_level(logging.WARNING):
        batch = collate([ds[i] for i in range(len(ds))])
    assert batch["num_skipped"] == 2 and batch["input"].shape[0] == 6
    assert "broken.mp4" in caplog.text and "empty.mp4" in caplog.text


def test_unreadable_files_raise_in_evaluation_unless_configured(with_broken):
    dm = datamodule(with_broken, val_size=1, test_size=1, test_clips=2)
    dm.check()
    videos = [(p, 0) for p in sorted(with_broken.rglob("*.mp4"))]
    strict = dm._dataset([(str(p.relative_to(with_broken)), 0) for p, _ in videos], train=False)
    bad = next(i for i, (p, _) in enumerate(videos) if p.name == "broken.mp4")
    with pytest.raises(VideoReadError, match=r"broken\.mp4.*skip_unreadable_eval"):
        strict[bad]
    lenient = datamodule(with_broken, skip_unreadable_eval=True)
    lenient.check()
    assert lenient._dataset([("a/broken.mp4", 0)], train=False)[0] is None


def test_synthetic_classes_are_time_reversals_and_generation_is_cached(tmp_path):
    a = render("right", np.random.default_rng(3), num_frames=10, size=32)
    b = render("left", np.random.default_rng(3), num_frames=10, size=32)
    np.testing.assert_array_equal(a[::-1], b)
    c = render("right_then_left", np.random.default_rng(3), num_frames=9, size=32)
    d = render("left_then_right", np.random.default_rng(3), num_frames=9, size=32)
    np.testing.assert_array_equal(c[[4, 3, 2, 1, 0, 1, 2, 3, 4]], d)  # same frames, mirrored order

    per_class = {"train": 2, "val": 1, "test": 1}
    out = generate(tmp_path, per_class=per_class, num_frames=8, size=16, seed=1)
    files = sorted(out.rglob("*.mp4"))
    assert len(files) == 16 and (out / "classInd.txt").read_text().split("\n")[0] == "1 right"
    stamp = files[0].stat().st_mtime_ns
    assert generate(tmp_path, per_class=per_class, num_frames=8, size=16, seed=1) == out
    assert files[0].stat().st_mtime_ns == stamp  # reused, not rewritten
    again = generate(tmp_path / "other", per_class=per_class, num_frames=8, size=16, seed=1)
    np.testing.assert_array_equal(read_all(files[5]), read_all(again / files[5].relative_to(out)))
    assert read_all(files[0]).shape == (8, 16, 16, 3)


def test_synthetic_datamodule(tmp_path):
    dm = SyntheticVideoDataModule(
        root=str(tmp_path),
        train_per_class=2,
        val_per_class=1,
        test_per_class=1,
        video_frames=8,
        frame_size=16,
        num_frames=4,
        frame_stride=2,
        crop_size=16,
        test_clips=2,
        num_classes=4,
        batch_size=8,
    )
    dm.check()
    dm.check_num_classes()
    dm.setup()
    assert dm.class_names == list(CLASSES)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (8, 4, 8)
    batch = next(iter(dm.test_dataloader()))
    assert batch["input"].shape == (8, 3, 4, 16, 16) and batch["video"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_hmdb51_datamodule_reads_official_split_files(tmp_path):
    root = make_video_folder(tmp_path / "hmdb", {"jump": 3, "run": 3}, num_frames=6)
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir()
    for name in ("jump", "run"):
        lines = f"{name}_00.mp4 1 \n{name}_01.mp4 2 \n{name}_02.mp4 0 \n"
        (splits / f"{name}_test_split1.txt").write_text(lines)
    split_dir = "testTrainMulti_7030_splits"
    dm = HMDB51DataModule(root=str(root), split_dir=split_dir, val_size=1, num_frames=2, crop_size=32, num_classes=2)
    dm.check()
    dm.check_num_classes()
    dm.setup()
    fit = sorted(Path(p).name for ds in (dm.train_set, dm.val_set) for p, _ in ds.videos)
    assert fit == ["jump_00.mp4", "run_00.mp4"] and len(dm.val_set) == 1  # tag 0 (unused) is left out
    test = [(Path(p).name, y) for p, y in dm.test_set.videos]
    assert test == [("jump_01.mp4", 0), ("run_01.mp4", 1)]
    with pytest.raises(ValueError, match="data.split=4"):
        HMDB51DataModule(root=str(root), split_dir="x", split=4)
