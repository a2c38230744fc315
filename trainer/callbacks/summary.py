"""The one-line model summary at the start of a fit: parameters and FLOPs (``ModelSummaryLine``)."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)


class ModelSummaryLine(pl.Callback):
    """One line when fitting starts: the net, its parameters (trainable ones) and FLOPs of one training sample's
    forward (``torch.utils.flop_counter``, 2 per multiply-add), e.g.
    ``model: Net(LeNet): 61.7K parameters (61.7K trainable), 847K FLOPs per sample 3x32x32``.
    Lightning's table (``trainer.enable_model_summary``) stays off: it lists every layer."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            log.info("%s", model_summary_line(pl_module.net, first_sample(trainer.datamodule)))


def first_sample(datamodule: Any) -> dict[str, Any] | None:
    train_set = getattr(datamodule, "train_set", None)
    for i in range(min(len(train_set), 8) if train_set is not None else 0):
        sample = train_set[i]
        if sample is not None:  # unreadable files give None
            return sample
    return None


def model_summary_line(net: torch.nn.Module, sample: dict[str, Any] | None) -> str:
    params = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    backbone = type(getattr(net, "backbone", net)).__name__
    line = f"model: {type(net).__name__}({backbone}): {si(params)} parameters ({si(trainable)} trainable)"
    if sample is None:
        return line
    device = next(net.parameters()).device
    x = torch.as_tensor(sample["input"]).float()[None].to(device)  # (1, C, H, W) or (1, C, T, H, W)
    boxes = [torch.as_tensor(sample["boxes"]).float().to(device)] if sample.get("boxes") is not None else None
    training = net.training
    net.eval()  # BatchNorm statistics untouched
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x, boxes)
    finally:
        net.train(training)
    shape = "x".join(str(n) for n in x.shape[1:])
    return f"{line}, {si(counter.get_total_flops())} FLOPs per sample {shape}"


def si(n: float) -> str:
    """``61706`` -> ``61.7K``, ``1.5e9`` -> ``1.50G``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"
