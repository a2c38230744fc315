"""Box annotation files (JSON / CSV), their validation errors, and the multi-digit dataset with boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data.base import collate
from data.boxes import BoxAnnotations, BoxError, check_boxes, read_box_file, resize_crop_boxes
from data.multi_digits import MultiDigitsDataModule


def test_json_mapping_and_records(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(
        json.dumps(
            {
                "train/a/1.jpg": [[1, 2, 5, 6], [0, 0, 3, 3]],
                "b.jpg": [2, 2, 4, 4],
                "clip.mp4": [[[0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 4, 4]]],
            }
        )
    )
    boxes = read_box_file(path)
    torch.testing.assert_close(boxes["train/a/1.jpg"], torch.tensor([[1.0, 2.0, 5.0, 6.0], [0.0, 0.0, 3.0, 3.0]]))
    assert boxes["b.jpg"].shape == (1, 4) and boxes["clip.mp4"].shape == (1, 3, 4)
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"file": "x.png", "boxes": [[1, 1, 2, 2]]}]))
    assert read_box_file(records)["x.png"].tolist() == [[1.0, 1.0, 2.0, 2.0]]


def test_csv_boxes_and_frames(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("file,x1,y1,x2,y2\na.jpg,1,2,5,6\na.jpg,0,0,3,3\nb.jpg,2,2,4,4\n")
    boxes = read_box_file(path)
    assert boxes["a.jpg"].tolist() == [[1.0, 2.0, 5.0, 6.0], [0.0, 0.0, 3.0, 3.0]] and boxes["b.jpg"].shape == (1, 4)
    frames = tmp_path / "frames.csv"
    frames.write_text(
        "file,box,frame,x1,y1,x2,y2\nc.mp4,0,1,1,1,3,3\nc.mp4,0,0,0,0,2,2\nc.mp4,1,0,4,4,6,6\nc.mp4,1,1,5,5,7,7\n"
    )
    clip = read_box_file(frames)["c.mp4"]
    assert clip.shape == (2, 2, 4)
    assert clip[0].tolist() == [[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]  # sorted by frame


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (
            "file,x1,y1,x2,y2\na.jpg,5,0,3,3\n",
            r"boxes\.csv \[a\.jpg\]: box 0 \[5\.0, 0\.0, 3\.0, 3\.0\] has x2 <= x1",
        ),
        ("file,x1,y1,x2,y2\na.jpg,0,0,3,3\na.jpg,0,4,3,2\n", r"\[a\.jpg\]: box 1 .* has y2 <= y1"),
        ("file,x1,y1,x2,y2\na.jpg,-1,0,3,3\n", r"box 0 .* starts outside the image"),
        ("file,x1,y1,x2,y2\na.jpg,0,0,3,nan\n", r"box 0 .* is not finite"),
        ("file,x1,y1,x2\na.jpg,0,0,3\n", r"missing columns \['y2'\]"),
        ("file,x1,y1,x2,y2\na.jpg,0,zero,3,3\n", r"boxes\.csv:2 \[a\.jpg\]: not a number"),
    ],
)
def test_csv_errors_name_file_and_box(tmp_path, content, match):
    path = tmp_path / "boxes.csv"
    path.write_text(content)
    with pytest.raises(BoxError, match=match):
        read_box_file(path)


def test_json_errors(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"a.jpg": [[0, 0, 3]]}))
    with pytest.raises(BoxError, match=r"boxes\.json \[a\.jpg\]: boxes must be \(K, 4\)"):
        read_box_file(path)
    path.write_text(json.dumps({"clip.mp4": [[[0, 0, 2, 2], [3, 1, 2, 3]]]}))
    with pytest.raises(BoxError, match=r"\[clip\.mp4\]: box 0, frame 1 .* has x2 <= x1"):
        read_box_file(path)
    with pytest.raises(BoxError, match="must be .json or .csv"):
        (tmp_path / "boxes.txt").write_text("")
        read_box_file(tmp_path / "boxes.txt")
    with pytest.raises(FileNotFoundError, match="set data.boxes_file"):
        read_box_file(tmp_path / "none.json")


def test_boxes_checked_against_image_size(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"a.jpg": [[0, 0, 10, 10], [5, 5, 33, 20]]}))
    ann = BoxAnnotations(path)
    assert ann.get("a.jpg", width=40, height=40).shape == (2, 4)
    with pytest.raises(
        BoxError, match=r"boxes\.json \[a\.jpg\]: box 1 \[5\.0, 5\.0, 33\.0, 20\.0\] ends outside the 32x32"
    ):
        ann.get("a.jpg", width=32, height=32)
    with pytest.raises(BoxError, match="no boxes for 'b.jpg'"):
        ann.get("b.jpg", width=32, height=32)
    assert BoxAnnotations(path, missing="empty").get("b.jpg", width=32, height=32).shape == (0, 4)
    check_boxes(torch.tensor([[0.0, 0.0, 32.0, 32.0]]), source="x", width=32, height=32)  # the full frame is inside


def test_resize_crop_boxes():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 4.0, 4.0], [60.0, 10.0, 80.0, 30.0]])
    # Resize by 0.5 then crop (left 5, top 0, 20 x 20): the first box is clipped at x = 0, the other two fall
    # outside the crop (x2 <= 5 and x1 >= 25) and are dropped.
    out = resize_crop_boxes(boxes, scale=0.5, left=5.0, top=0.0, size=(20.0, 20.0))
    torch.testing.assert_close(out, torch.tensor([[0.0, 10.0, 10.0, 20.0]]))
    inside = resize_crop_boxes(boxes[:1], scale=2.0, left=10.0, top=30.0, size=(64.0, 64.0))
    torch.testing.assert_close(inside, torch.tensor([[10.0, 10.0, 50.0, 50.0]]))


def test_multi_digits_samples():
    dm = MultiDigitsDataModule(batch_size=8, train_canvases=20, val_canvases=4, test_canvases=6, objects=3)
    dm.setup()
    train = dm.train_set
    assert (len(train), len(dm.val_set), len(dm.test_set)) == (60, 12, 18)
    assert (train.boxes[..., :2] >= 0).all() and (train.boxes[..., 2:] <= 32).all()
    assert all(len(set(row)) == 3 for row in train.labels.tolist())  # distinct digits per canvas
    samples = [train[i] for i in range(3)]  # the three digits of canvas 0
    assert all(torch.equal(s["input"], samples[0]["input"]) for s in samples)  # same image ...
    assert len({s["target"] for s in samples}) == 3  # ... three labels, told apart only by the box
    for k, s in enumerate(samples):
        assert s["boxes"].shape == (1, 4) and s["boxes"].dtype == torch.float32
        x1, y1, x2, y2 = s["boxes"][0].int().tolist()
        inside = s["input"][:, y1:y2, x1:x2].sum()
        assert inside > 0.5 * s["input"].sum() / 3  # the box holds a digit's ink
        np.testing.assert_array_equal(s["boxes"][0].numpy(), train.boxes[0, k])
    batch = collate([train[i] for i in range(4)])
    assert batch["input"].shape == (4, 3, 32, 32) and isinstance(batch["boxes"], list) and len(batch["boxes"]) == 4
    with pytest.raises(ValueError, match="data.objects=5"):
        MultiDigitsDataModule(objects=5)


def test_image_folder_boxes_follow_resize_and_crop(tmp_path):
    from PIL import Image

    from data.image_folder import ImageFolderDataModule

    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (40, 20)).save(tmp_path / "train" / name / "1.png")
    boxes = tmp_path / "boxes.json"
    # 40x20 -> shorter side 10: 20x10, centre crop 10x10 from x = 5.
    # (10, 0, 30, 20) -> (5, 0, 15, 10) -> (0, 0, 10, 10).
    boxes.write_text(
        json.dumps({"train/a/1.png": [[10, 0, 30, 20], [12, 4, 16, 8]], "train/b/1.png": [[0, 0, 40, 20]]})
    )
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=10, val_size=1, boxes_file=str(boxes), batch_size=2)
    dm.setup()
    by_path = {s["path"]: s["boxes"] for s in (*dm.train_set, *dm.val_set)}
    torch.testing.assert_close(by_path["train/a/1.png"], torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 2.0, 3.0, 4.0]]))
    torch.testing.assert_close(by_path["train/b/1.png"], torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    boxes.write_text(json.dumps({"train/a/1.png": [[10, 0, 30, 21]], "train/b/1.png": [[0, 0, 40, 20]]}))
    bad = ImageFolderDataModule(root=str(tmp_path), image_size=10, val_size=1, boxes_file=str(boxes))
    bad.setup()
    with pytest.raises(BoxError, match=r"\[train/a/1\.png\]: box 0 .* ends outside the 40x20 image"):
        _ = [*bad.train_set, *bad.val_set]
