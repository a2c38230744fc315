"""Exporting a checkpoint's net for inference outside this project: ONNX or TorchScript, dynamic batch axis.

    checkpoint --nets.stored.load_checkpoint (weights_only)--> nets.build.net_from_checkpoint (eval mode)
      --> trace on an example batch --> <output>.tmp --> check: outputs of the exported file against the eager net
      on the same random inputs at each of ``check_batch_sizes`` --> renamed to <output>, plus <output>.json

The input is the net's ``input`` tensor (images ``(B, C, H, W)``, clips ``(B, C, T, H, W)``) after the eval
preprocessing (resize, crop, normalise with the checkpoint's ``mean``/``std``, recorded in the JSON); the
output is the logits ``(B, num_classes)``. ONNX goes through torch's dynamo exporter (``torch.export`` then
onnxscript); the TorchScript exporter cannot lower adaptive pooling to a size that does not divide the
input, as LeNet's at 32x32 pixels. TorchScript is ``torch.jit.trace``. A file whose outputs differ from the
eager net's by more than ``atol + rtol * max|eager|`` is not written, and the error names the batch size.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from nets.build import net_from_checkpoint
from nets.stored import load_checkpoint, stored_config
from runs.atomic import replacing
from runs.results import write_json

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportMismatchError(RuntimeError):
    """The exported model's outputs differ from the eager net's beyond the tolerance."""


def export(cfg: DictConfig) -> Path:
    """Writes the exported net (and ``<output>.json`` describing it); returns the file's path."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format={cfg.format!r} is unknown; choose one of {sorted(FORMATS)}")
    batch_sizes = [int(b) for b in cfg.check_batch_sizes]
    if len(set(batch_sizes)) < 2 or min(batch_sizes) < 1:
        raise ValueError(f"check_batch_sizes={batch_sizes} needs two different positive batch sizes")
    ckpt_path = Path(cfg.ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    net = net_from_checkpoint(ckpt, ckpt_path).eval()
    # Only the net is built; the data config is read for its input size, as plain values.
    config = {**stored_config(ckpt, ckpt_path, parts=("model",)), "data": ckpt["hyper_parameters"]["config"]["data"]}
    shape = input_shape(config, cfg.get("input_shape"))
    output = Path(cfg.output) if cfg.get("output") else ckpt_path.with_suffix(FORMATS[cfg.format])
    output.parent.mkdir(parents=True, exist_ok=True)

    generator = torch.Generator().manual_seed(0)
    example = torch.randn(int(cfg.batch_size), *shape, generator=generator)  # (B, *shape)
    inputs = [torch.randn(b, *shape, generator=generator) for b in batch_sizes]
    with replacing(output) as tmp:
        if cfg.format == "onnx":
            export_onnx(net, example, tmp, opset=int(cfg.opset))
        else:
            export_torchscript(net, example, tmp)
        checks = check_outputs(net, tmp, cfg.format, inputs, atol=float(cfg.atol), rtol=float(cfg.rtol))
    data = config.get("data", {})
    write_json(
        output.with_name(output.name + ".json"),
        {
            "format": cfg.format,
            "checkpoint": str(ckpt_path),
            "input": {"name": "input", "shape": ["batch", *shape]},
            "output": {"name": "logits", "shape": ["batch", net.num_classes]},
            "mean": data.get("mean"),
            "std": data.get("std"),
            "checks": checks,
        },
    )
    log.info("exported %s to %s", cfg.format, output)
    return output


def input_shape(config: dict[str, Any], given: Sequence[int] | None) -> tuple[int, ...]:
    """``(C, H, W)`` or ``(C, T, H, W)`` of one input: ``input_shape`` when given, else from the checkpoint's data
    config (``num_frames`` and ``crop_size`` of videos, ``image_size`` or ``crop_size`` of images)."""
    if given:
        shape = tuple(int(s) for s in given)
        if len(shape) not in (3, 4) or min(shape) < 1:
            raise ValueError(f"input_shape={list(shape)} must be [C, H, W] or [C, T, H, W] (positive sizes)")
        return shape
    data = config.get("data", {})
    channels = int(config["model"].get("backbone", {}).get("in_chans", 3))
    size = data.get("image_size") or data.get("crop_size")
    if size is None:
        raise ValueError(
            f"the checkpoint's data config ({data.get('_target_')}) names no image or crop size; "
            f"give input_shape=[3,<height>,<width>] (or [3,<frames>,<height>,<width>] for clips)"
        )
    if data.get("num_frames"):
        return channels, int(data["num_frames"]), int(size), int(size)
    return channels, int(size), int(size)


# Loggers of the ONNX exporter's graph passes: an INFO line per pass ("Removed 18 unused nodes").
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_loggers(names: Sequence[str], level: int = logging.WARNING) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.setLevel(old)


def export_onnx(net: nn.Module, example: Tensor, path: Path, *, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1)
    with quiet_loggers(EXPORTER_LOGGERS):
        program = torch.onnx.export(
            net,
            (example,),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
        program.save(str(path))


@contextlib.contextmanager
def jit_deprecation_quiet() -> Iterator[None]:
    """torch (2.15 here) warns that torch.jit is deprecated on every call; format=torchscript asks for it knowingly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def export_torchscript(net: nn.Module, example: Tensor, path: Path) -> None:
    with torch.no_grad(), jit_deprecation_quiet():
        traced = torch.jit.trace(net, (example,), check_trace=False)
        torch.jit.save(traced, str(path))


def check_outputs(
    net: nn.Module, path: Path, fmt: str, inputs: list[Tensor], *, atol: float, rtol: float
) -> list[dict[str, float]]:
    """Runs the exported file and the eager net on each input; raises ``ExportMismatchError`` past the tolerance."""
    run = onnx_runner(path) if fmt == "onnx" else torchscript_runner(path)
    checks = []
    for x in inputs:
        with torch.no_grad():
            expected = net(x).numpy()  # (B, num_classes)
        got = run(x)
        if got.shape != expected.shape:
            raise ExportMismatchError(
                f"{fmt} output has shape {got.shape} for a batch of {len(x)}; the eager net's is {expected.shape}"
            )
        diff = float(np.abs(got - expected).max())
        tolerance = atol + rtol * float(np.abs(expected).max())
        log.info(
            "%s vs eager PyTorch, batch %d: max abs difference %.3g, tolerance %.3g (atol %g + rtol %g * max|eager|)",
            fmt, len(x), diff, tolerance, atol, rtol,
        )  # fmt: skip
        if not diff <= tolerance:  # also catches NaN
            raise ExportMismatchError(
                f"the {fmt} export disagrees with the eager net at batch size {len(x)}: max abs difference {diff:.3g} "
                f"> tolerance {tolerance:.3g}; the file was not written"
            )
        checks.append({"batch_size": len(x), "max_abs_diff": diff, "tolerance": tolerance})
    return checks


def onnx_runner(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"input": x.numpy()})[0]


def torchscript_runner(path: Path):
    with jit_deprecation_quiet():
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).numpy()

    return run
