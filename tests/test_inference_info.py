"""Checkpoints carry what inference needs (input shape, normalisation, class names; runs/inference_info.py), and
extract/export/eval use it: a CIFAR-10 checkpoint needs no data.image_size / input_shape. Checkpoints without it
still load, falling back to their data config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from features.extract import extract
from nets.stored import load_checkpoint
from runs.compose import compose_config
from runs.inference_info import INFERENCE_KEY, inference_info
from tests.data_utils import write_cifar10
from trainer.export import export
from trainer.run import train

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def train_cifar(make_cfg, tmp_path: Path) -> Path:
    write_cifar10(tmp_path / "cifar10", n_per_batch=8, n_test=8)
    train(make_cfg("data=cifar10", f"data.root={tmp_path / 'cifar10'}", "data.val_size=8", "data.batch_size=8",
                   "data.persistent_workers=false"))  # fmt: skip
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


def write_images(folder: Path, n: int = 3, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        (folder / "x").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8)).save(folder / "x" / f"{i}.png")
    return folder


def without_inference(ckpt: Path, out: Path) -> Path:
    """The same checkpoint as one written before checkpoints recorded inference values."""
    state = torch.load(ckpt, weights_only=True)
    del state[INFERENCE_KEY]
    torch.save(state, out)
    return out


def test_cifar10_checkpoint_stores_shape_normalisation_and_class_names(make_cfg, tmp_path):
    ckpt = train_cifar(make_cfg, tmp_path)
    stored = load_checkpoint(ckpt)[INFERENCE_KEY]
    assert stored == {
        "input_shape": [3, 32, 32],
        "mean": pytest.approx([0.4914, 0.4822, 0.4465]),
        "std": pytest.approx([0.2470, 0.2435, 0.2616]),
        "class_names": CIFAR_NAMES,
    }
    # The stored data config names no size: before, extract needed data.image_size=32 and export input_shape.
    assert "image_size" not in load_checkpoint(ckpt)["hyper_parameters"]["config"]["data"]

    images = write_images(tmp_path / "imgs")
    cfg = compose_config(f"ckpt_path={ckpt}", f"input={images}", f"output={tmp_path / 'feats'}", "num_workers=0",
                         "progress=false", output_dir=tmp_path / "x", config_name="extract")  # fmt: skip
    meta = extract(cfg)
    assert meta["preprocessing"]["image_size"] == 32 and meta["rows"] == 3

    out = export(compose_config(f"ckpt_path={ckpt}", f"output={tmp_path / 'net.onnx'}", output_dir=tmp_path / "e",
                                config_name="export"))  # fmt: skip
    described = json.loads(out.with_name(out.name + ".json").read_text())
    assert described["input"]["shape"] == ["batch", 3, 32, 32]
    assert described["class_names"] == CIFAR_NAMES and described["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])


def test_old_checkpoint_without_the_values_falls_back_with_a_clear_message(make_cfg, tmp_path, caplog):
    ckpt = without_inference(train_cifar(make_cfg, tmp_path), tmp_path / "old.ckpt")
    with caplog.at_level("INFO"):
        info = inference_info(load_checkpoint(ckpt), ckpt)
    assert info.input_shape is None and info.class_names == [str(i) for i in range(10)] and not info.stored
    assert info.mean == pytest.approx([0.4914, 0.4822, 0.4465])  # from the stored data config
    assert "stores no input_shape" in caplog.text and "class_names (the label numbers are used)" in caplog.text

    images = write_images(tmp_path / "imgs")
    extract_cfg = [f"ckpt_path={ckpt}", f"input={images}", "num_workers=0", "progress=false"]
    cfg = compose_config(*extract_cfg, f"output={tmp_path / 'f1'}", output_dir=tmp_path / "x", config_name="extract")
    with pytest.raises(ValueError, match="records no input shape .* set data.image_size"):
        extract(cfg)
    cfg = compose_config(*extract_cfg, f"output={tmp_path / 'f2'}", "data.image_size=32", output_dir=tmp_path / "x",
                         config_name="extract")  # fmt: skip
    assert extract(cfg)["rows"] == 3  # as before: the size given
    cfg = compose_config(f"ckpt_path={ckpt}", f"output={tmp_path / 'n.pt'}", "format=torchscript",
                         output_dir=tmp_path / "e", config_name="export")  # fmt: skip
    with pytest.raises(ValueError, match=r"records no input shape .* give input_shape=\[3,<height>,<width>\]"):
        export(cfg)


def test_old_digits_checkpoint_takes_its_size_from_the_data_config(make_cfg, tmp_path):
    train(make_cfg("trainer.limit_train_batches=1", "test=false"))
    ckpt = without_inference(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "old.ckpt")
    info = inference_info(load_checkpoint(ckpt), ckpt)
    assert info.input_shape == (3, 32, 32) and info.mean == pytest.approx([0.2] * 3)


def test_video_checkpoint_stores_the_clip_shape(make_cfg, tmp_path):
    train(make_cfg("experiment=video_synthetic", f"paths.data_dir={tmp_path / 'data'}", "trainer.max_epochs=1",
                   "data.train_per_class=1", "data.val_per_class=1", "data.test_per_class=1", "data.num_frames=4",
                   "data.crop_size=16", "data.batch_size=4", "model.temporal.hidden_size=8"))  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt[INFERENCE_KEY]["input_shape"] == [3, 4, 16, 16]
    assert ckpt[INFERENCE_KEY]["class_names"] == ["right", "left", "right_then_left", "left_then_right"]
