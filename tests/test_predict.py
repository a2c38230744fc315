"""predict.py: top-k classes with probabilities of an image, a video, a folder or a list, with the checkpoint's
eval preprocessing, TTA and views; class names from the training data; a CSV for a folder or list."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from features.predict import predict
from nets.build import net_from_checkpoint
from nets.stored import load_checkpoint
from runs.compose import compose_config
from tests.conftest import run_script
from tests.data_utils import write_cifar10
from trainer.run import train

CIFAR_MEAN, CIFAR_STD = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def cifar_ckpt(make_cfg, tmp_path):
    write_cifar10(tmp_path / "cifar10", n_per_batch=8, n_test=8)
    train(make_cfg("data=cifar10", f"data.root={tmp_path / 'cifar10'}", "data.val_size=8", "data.batch_size=8",
                   "data.persistent_workers=false", "trainer.limit_train_batches=2", "test=false"))  # fmt: skip
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


def write_pngs(folder: Path, n: int = 3) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        path = folder / ("cat" if i % 2 else "dog") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def by_hand(ckpt: Path, image: Path, *, mirror: bool = False) -> np.ndarray:
    """Class probabilities of a 32x32 image computed here: /255, CIFAR-10 normalisation, the net, softmax."""
    x = (np.asarray(Image.open(image).convert("RGB")) / 255.0 - CIFAR_MEAN) / CIFAR_STD  # (H, W, 3)
    x = torch.tensor(x.transpose(2, 0, 1), dtype=torch.float32)[None]  # (1, 3, H, W)
    net = net_from_checkpoint(load_checkpoint(ckpt), ckpt).eval()
    with torch.no_grad():
        logits = net(x) if not mirror else 0.5 * (net(x) + net(x.flip(-1)))
    return torch.softmax(logits, 1)[0].numpy()


def predict_cfg(tmp_path: Path, ckpt: Path, input: Path, *overrides: str):
    args = [f"ckpt_path={ckpt}", f"input={input}", "num_workers=0", "progress=false", "device=cpu", *overrides]
    return compose_config(*args, output_dir=tmp_path / "predict", config_name="predict")


def test_predict_py_on_a_folder_prints_class_names_and_writes_a_csv(cifar_ckpt, tmp_path):
    images = write_pngs(tmp_path / "imgs")
    out = tmp_path / "pred"
    proc = run_script("predict.py", f"ckpt_path={cifar_ckpt}", f"input={tmp_path / 'imgs'}", "top_k=3",
                      "num_workers=0", "progress=false", f"hydra.run.dir={out}")  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("cat/", "dog/"))]
    assert len(lines) == 3 and all(line.count(",") == 2 for line in lines)
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["cat/1.png", "dog/0.png", "dog/2.png"]
    assert [r["label"] for r in rows] == ["cat", "dog", "dog"]
    for row, image in zip(rows, sorted(images), strict=True):
        expected = by_hand(cifar_ckpt, image)
        best = np.argsort(-expected)[:3]
        assert [row[f"class_{i + 1}"] for i in range(3)] == [CIFAR_NAMES[c] for c in best]
        assert [float(row[f"prob_{i + 1}"]) for i in range(3)] == pytest.approx(expected[best], abs=1e-5)
        assert f"{row['path']}: {CIFAR_NAMES[best[0]]} {expected[best[0]]:.3f}, " in "\n".join(lines)


def test_predict_one_image_with_mirror_tta_and_a_list_with_an_unreadable_file(cifar_ckpt, tmp_path):
    image = write_pngs(tmp_path / "imgs", n=1)[0]
    (record,) = predict(predict_cfg(tmp_path, cifar_ckpt, image, "tta=mirror", "top_k=10"))
    expected = by_hand(cifar_ckpt, image, mirror=True)
    assert dict(record["top"]) == pytest.approx(dict(zip(CIFAR_NAMES, expected, strict=True)), abs=1e-5)
    assert not (tmp_path / "predict" / "predictions.csv").exists()  # one file: printed only

    (tmp_path / "broken.png").write_bytes(b"not a png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image} cat\nbroken.png dog\n")
    records = predict(predict_cfg(tmp_path, cifar_ckpt, listing, f"output={tmp_path / 'out.csv'}"))
    assert records[0]["top"][0][1] == pytest.approx(by_hand(cifar_ckpt, image).max(), abs=1e-5)
    assert "error" in records[1] and "top" not in records[1]
    with open(tmp_path / "out.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["path"] == "broken.png" and rows[1]["error"] and rows[1]["class_1"] == ""


def test_predict_a_video_averages_its_views_with_the_video_class_names(make_cfg, tmp_path):
    data = tmp_path / "data"
    train(make_cfg("experiment=video_synthetic", f"paths.data_dir={data}", "data.train_per_class=1",
                   "data.val_per_class=1", "data.test_per_class=1", "data.num_frames=4", "data.crop_size=16",
                   "data.batch_size=4", "model.temporal.hidden_size=8", "test=false"))  # fmt: skip
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    video = sorted((data / "synthetic_video").rglob("*.mp4"))[0]
    one = predict(predict_cfg(tmp_path, ckpt, video, "data.test_clips=1"))[0]["top"]
    three = predict(predict_cfg(tmp_path, ckpt, video, "data.test_clips=3"))[0]["top"]
    assert {name for name, _ in one} == {"right", "left", "right_then_left", "left_then_right"}
    assert sum(p for _, p in one) == pytest.approx(1.0, abs=1e-5)
    assert dict(one) != pytest.approx(dict(three), abs=1e-7)  # other views, other mean
    with pytest.raises(ValueError, match="module.tta=mirror augments images"):
        predict(predict_cfg(tmp_path, ckpt, video, "tta=mirror"))
