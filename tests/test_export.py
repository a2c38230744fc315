"""export.py: a checkpoint's net to ONNX / TorchScript with a dynamic batch axis, each file checked against the
eager net at two batch sizes; an export that disagrees fails and leaves no file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from omegaconf import OmegaConf

import trainer.export as export_module
from nets.build import build_net
from runs.compose import compose_config
from tests.conftest import run_script
from trainer.export import ExportMismatchError, export

# A small image net (LeNet on 32x32 digits) and a small video net (LeNet per frame + LSTM on 4-frame clips).
NETS = {
    "lenet": ["model=lenet", "data=digits"],
    "cnn_lstm": ["model=cnn_lstm", "data=synthetic_video", "data.num_frames=4", "model.temporal.hidden_size=16"],
    "resnet18": ["model=resnet", "model.backbone.depth=18", "data=digits"],
    "r2plus1d": ["model=r2plus1d", "data=synthetic_video", "data.num_frames=4"],
}


def make_checkpoint(tmp_path: Path, name: str) -> Path:
    """A checkpoint as train.py writes it (the resolved run config and the net's ``net.*`` weights), untrained."""
    cfg = compose_config(*NETS[name], output_dir=tmp_path / "train")
    torch.manual_seed(0)
    net = build_net(cfg.model, load_weights=False)
    config = OmegaConf.to_container(cfg, resolve=True)
    config = {k: config[k] for k in ("model", "data", "seed")}
    path = tmp_path / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}}, path)
    return path


def export_cfg(tmp_path: Path, ckpt: Path, *overrides: str):
    return compose_config(f"ckpt_path={ckpt}", *overrides, output_dir=tmp_path / "export", config_name="export")


def eager_logits(ckpt: Path, x: torch.Tensor) -> np.ndarray:
    from nets.build import net_from_checkpoint
    from nets.stored import load_checkpoint

    net = net_from_checkpoint(load_checkpoint(ckpt), ckpt).eval()
    with torch.no_grad():
        return net(x).numpy()


def check_exported(tmp_path: Path, name: str, fmt: str, shape: tuple[int, ...]) -> None:
    ckpt = make_checkpoint(tmp_path, name)
    out = export(export_cfg(tmp_path, ckpt, f"format={fmt}"))
    assert out == ckpt.with_suffix({"onnx": ".onnx", "torchscript": ".pt"}[fmt])
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["input"]["shape"] == ["batch", *shape]
    assert [c["batch_size"] for c in meta["checks"]] == [1, 3]
    assert all(c["max_abs_diff"] <= c["tolerance"] for c in meta["checks"])
    # An independent run of the file at a batch size none of the checks used.
    x = torch.randn(5, *shape)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape[0] == "batch"  # the batch axis is symbolic, not 2
        got = session.run(None, {"input": x.numpy()})[0]
    else:
        got = torch.jit.load(str(out)).eval()(x).detach().numpy()
    expected = eager_logits(ckpt, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_lenet_export_matches_eager_pytorch(tmp_path, fmt):
    check_exported(tmp_path, "lenet", fmt, (3, 32, 32))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_video_net_export_matches_eager_pytorch(tmp_path, fmt):
    check_exported(tmp_path, "cnn_lstm", fmt, (3, 4, 32, 32))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", ["resnet18", "r2plus1d"])
def test_larger_nets_export_matches_eager_pytorch(tmp_path, name, fmt):
    check_exported(tmp_path, name, fmt, (3, 4, 32, 32) if name == "r2plus1d" else (3, 32, 32))


def test_export_that_disagrees_with_eager_fails_and_writes_nothing(tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path, "lenet")
    real = export_module.export_torchscript

    def perturbed(net, example, path):  # a converter bug: the file computes something slightly different
        with torch.no_grad():
            net.head.bias.add_(1e-2)
        real(net, example, path)
        with torch.no_grad():
            net.head.bias.sub_(1e-2)

    monkeypatch.setattr(export_module, "export_torchscript", perturbed)
    with pytest.raises(ExportMismatchError, match=r"at batch size 1: max abs difference 0\.01"):
        export(export_cfg(tmp_path, ckpt, "format=torchscript"))
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.ckpt"]


def test_bad_export_options_fail_with_the_fix(tmp_path):
    ckpt = make_checkpoint(tmp_path, "lenet")
    with pytest.raises(ValueError, match="format='tflite' is unknown"):
        export(export_cfg(tmp_path, ckpt, "format=tflite"))
    with pytest.raises(ValueError, match="needs two different positive batch sizes"):
        export(export_cfg(tmp_path, ckpt, "check_batch_sizes=[2]"))
    with pytest.raises(ValueError, match=r"input_shape=\[3, 32\] must be"):
        export(export_cfg(tmp_path, ckpt, "input_shape=[3,32]"))


@pytest.mark.slow
def test_export_script_writes_the_named_file(tmp_path):
    ckpt = make_checkpoint(tmp_path, "lenet")
    out = tmp_path / "lenet.onnx"
    proc = run_script("export.py", f"ckpt_path={ckpt}", "format=onnx", f"output={out}", f"paths.log_dir={tmp_path}")
    assert out.is_file() and "max abs difference" in proc.stdout + proc.stderr
