"""Video annotation formats people have, each on generated files in that format: Kinetics CSVs (trimmed and
untrimmed files, both column orders), Something-Something v2 JSON with numbered .webm files, and a flat folder
named by a ``<path> <label>`` list."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from data.video.annotations import KineticsDataModule, SSv2DataModule, VideoListDataModule, ssv2_class
from tests.video_utils import frame_ids, make_video
from trainer.run import build_datamodule, train

CLIP = {"num_frames": 4, "frame_stride": 1, "crop_size": 32, "short_side": 32, "batch_size": 2}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def kinetics_root(tmp_path: Path) -> Path:
    """Official-style CSVs; train clips trimmed (``train/``), validation videos untrimmed (``val/``, 40 frames at
    10 fps, the action in [1 s, 3 s] or [2 s, 4 s])."""
    root = tmp_path / "kinetics"
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i, label in enumerate(["abseiling", "air drumming", "abseiling", "air drumming"]):
        yid = f"yt{i:02d}-_aB"  # YouTube ids hold '-' and '_'
        make_video(root / "train" / f"{yid}_{10 * i:06d}_{10 * i + 10:06d}.mp4", 8, fps=10)
        rows.append(f"{label},{yid},{10 * i},{10 * i + 10},train")
    write(root / "annotations" / "train.csv", "\n".join(rows) + "\n")
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i, (label, start) in enumerate([("abseiling", 1), ('"air drumming"', 2)]):
        make_video(root / "val" / f"v{i}.mp4", 40, fps=10, width=32)  # square: the crop keeps the frame ids
        rows.append(f"{label},v{i},{start},{start + 2},validate")
    write(root / "annotations" / "validate.csv", "\n".join(rows) + "\n")
    return root


def test_kinetics_csv_trimmed_and_untrimmed_clips_within_the_window(tmp_path):
    root = kinetics_root(tmp_path)
    dm = KineticsDataModule(
        root=str(root), annotations=["annotations/train.csv", "annotations/validate.csv"], test_clips=2, **CLIP
    )
    dm.check()
    dm.setup()
    assert dm.class_names == ["abseiling", "air drumming"] and dm.test_is_val
    assert len(dm.train_set) == 4 and dm.train_set.targets == [0, 1, 0, 1]
    assert dm.train_set.windows == [None] * 4  # trimmed files: the whole file
    assert [v for v, _ in dm.test_set.videos] == [str(root / "val" / "v0.mp4"), str(root / "val" / "v1.mp4")]
    assert dm.test_set.windows == [(1.0, 3.0), (2.0, 4.0)]
    # The two test clips of each untrimmed video are the first and last 4 frames of its window, not of the file.
    ids = [frame_ids(dm.test_set[i]["input"].permute(1, 2, 3, 0).numpy() * 255).tolist() for i in range(4)]
    assert ids == [[10, 11, 12, 13], [26, 27, 28, 29], [20, 21, 22, 23], [36, 37, 38, 39]]
    rng_ids = frame_ids(dm.val_set[0]["input"].permute(1, 2, 3, 0).numpy() * 255)
    assert 10 <= rng_ids.min() and rng_ids.max() < 30


def test_kinetics_variant_without_split_column_and_missing_videos(tmp_path):
    root = kinetics_root(tmp_path)
    variant = write(root / "mine" / "train.csv", "youtube_id,time_start,time_end,label\nyt00-_aB,0,10,abseiling\n")
    write(
        variant.parent / "val.csv", "youtube_id,time_start,time_end,label\nv1,2,4,air drumming\ngone,0,10,abseiling\n"
    )
    given = {"train": "mine/train.csv", "val": "mine/val.csv"}
    with pytest.raises(FileNotFoundError, match=r"1 of 2 val clips have no video .* gone_000000_000010\.mp4"):
        KineticsDataModule(root=str(root), annotations=given, **CLIP).check()
    dm = KineticsDataModule(root=str(root), annotations=given, skip_missing=True, **CLIP)
    dm.check()
    assert [(c.path, c.label, c.window) for c in dm._splits["val"]] == [("val/v1.mp4", 1, (2.0, 4.0))]
    with pytest.raises(ValueError, match="has no split column"):
        KineticsDataModule(root=str(root), annotations="mine/train.csv", **CLIP).check()
    bad = write(root / "bad.csv", "label,youtube_id,start\nabseiling,x,0\n")
    with pytest.raises(ValueError, match=r"lacks \['time_start', 'time_end'\]"):
        KineticsDataModule(root=str(root), annotations=str(bad), **CLIP).check()


def test_ssv2_json_labels_and_numbered_webm_files(tmp_path):
    root = tmp_path / "ssv2"
    labels = {"Pushing something from left to right": "1", "Putting something on a surface": "0"}
    write(root / "labels" / "something-something-v2-labels.json", json.dumps(labels))
    entries = [
        (101, "Putting [something] on a surface", ["a cup"]),
        (102, "Pushing [something] from left to right", ["a pen"]),
        (103, "Putting [something] on a surface", ["keys"]),
    ]
    for split, part in (("train", entries), ("validation", entries[1:])):
        anns = [
            {"id": str(i), "label": t.replace("[something]", p[0]), "template": t, "placeholders": p}
            for i, t, p in part
        ]
        write(root / "labels" / f"something-something-v2-{split}.json", json.dumps(anns))
    for i, _, _ in entries:
        make_video(root / "videos" / f"{i}.webm", 6, fps=12)
    assert ssv2_class("Putting [something] on [something]") == "Putting something on something"
    dm = SSv2DataModule(
        root=str(root / "videos"),
        labels="../labels/something-something-v2-labels.json",
        train_annotations="../labels/something-something-v2-train.json",
        val_annotations="../labels/something-something-v2-validation.json",
        **CLIP,
    )
    dm.check()
    dm.setup()
    assert dm.class_names == ["Putting something on a surface", "Pushing something from left to right"]
    assert dm.train_set.videos == [(str(root / "videos" / f"{i}.webm"), y) for i, y in ((101, 0), (102, 1), (103, 0))]
    assert dm.test_is_val and dm.test_set.targets == [1, 0]
    assert dm.train_set[0]["input"].shape == (3, 4, 32, 32)
    test_json = write(root / "labels" / "test.json", json.dumps([{"id": "101"}]))
    with pytest.raises(ValueError, match="has no id and template; test.json lists no labels"):
        SSv2DataModule(root=str(root / "videos"), labels=str(root / "labels" / "something-something-v2-labels.json"),
                       train_annotations=str(test_json), **CLIP).check()  # fmt: skip


def flat_folder(tmp_path: Path) -> Path:
    root = tmp_path / "flat"
    for i in range(6):
        make_video(root / f"clip {i}.mp4", 6, fps=12)  # a space in the name: the label is the last word
    write(root / "train.txt", "".join(f"clip {i}.mp4 {['run', 'jump'][i % 2]}\n" for i in range(4)))
    write(root / "test.txt", "clip 4.mp4 run\nclip 5.mp4 jump\n")
    return root


def test_flat_folder_with_path_label_lists(tmp_path):
    root = flat_folder(tmp_path)
    dm = VideoListDataModule(root=str(root), train_list="train.txt", test_list="test.txt", val_size=1, **CLIP)
    dm.check()
    dm.setup()
    assert dm.class_names == ["jump", "run"] and not dm.test_is_val
    assert len(dm.train_set) == 3 and len(dm.val_set) == 1 and dm.test_set.targets == [1, 0]
    assert sorted(dm.train_set.targets + dm.val_set.targets) == [0, 0, 1, 1]
    # Integer labels, named by a class index counting from 1.
    write(root / "classInd.txt", "1 run\n2 jump\n")
    write(root / "train_ids.txt", "clip 0.mp4 1\nclip 1.mp4 2\nclip 2.mp4 1\n")
    dm = VideoListDataModule(root=str(root), train_list="train_ids.txt", class_index="classInd.txt", val_size=1, **CLIP)
    dm.check()
    assert dm.class_names == ["run", "jump"] and dm.test_is_val
    mixed = write(root / "mixed.txt", "clip 0.mp4 run\nclip 1.mp4 1\n")
    with pytest.raises(ValueError, match="labels mix class names and integers"):
        VideoListDataModule(root=str(root), train_list=str(mixed), **CLIP).check()
    write(root / "missing.txt", "clip 0.mp4 run\nclip 9.mp4 jump\n")
    with pytest.raises(FileNotFoundError, match=r"missing under .*\['clip 9.mp4'\]"):
        VideoListDataModule(root=str(root), train_list="missing.txt", val_size=0, **CLIP).check()


@pytest.mark.parametrize("data", ["kinetics", "ssv2", "video_list"])
def test_video_annotation_configs_fail_early_without_the_data(make_cfg, tmp_path, data):
    cfg = make_cfg(f"data={data}", f"paths.data_dir={tmp_path}", "data.num_classes=2")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        instantiate(cfg.data).check()


def test_kinetics_config_trains_on_untrimmed_videos(make_cfg, tmp_path):
    root = kinetics_root(tmp_path)
    overrides = [f"data.{k}={v}" for k, v in CLIP.items()]
    cfg = make_cfg("data=kinetics", f"data.root={root}", "data.num_classes=2", "model=cnn_lstm", "debug=fast",
                   *overrides, "data.test_clips=2", "data.test_crops=1", "data.num_workers=0")  # fmt: skip
    assert list(cfg.data.annotations) == ["annotations/train.csv", "annotations/validate.csv"]
    dm = build_datamodule(cfg.data, cfg.augment)
    assert dm.num_classes == 2 and np.array_equal(dm.train_targets(), [0, 1, 0, 1])
    train(cfg)
