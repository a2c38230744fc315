"""Callbacks of our own: the per-epoch history behind metrics.csv and the curve plots, the one-line model
summary at the start of a fit, airbench's whitening initialisation."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

from runs.plots import plot_curves

log = logging.getLogger(__name__)


class History(pl.Callback):
    """Collects epoch-level metrics and learning rates; writes ``metrics.csv`` and ``plots/*.png`` in the run
    dir whatever logger is configured. Its rows are part of the checkpoint, so a resumed run keeps them.

    The learning rates (``lr/<group>``, one per parameter group) also go to the configured loggers under the
    same names, so metrics.csv, the CSV logger and TensorBoard agree (Lightning's LearningRateMonitor would
    name them ``lr-<Optimizer>/pg<i>``)."""

    def __init__(self, *, output_dir: str, plot: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.plot = plot
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after this epoch's validation, so val metrics are those of the epoch just trained.
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        row = {"epoch": float(trainer.current_epoch), "step": float(trainer.global_step)}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("train/", "val/", "data/", "finetune/")) and not key.endswith("_step"):
                row[key.removesuffix("_epoch")] = float(value)
        lrs = {}
        for i, group in enumerate(trainer.optimizers[0].param_groups):
            # Fine-tuning groups come as named pairs (decayed, undecayed) with one lr: one column per group.
            lrs[f"lr/{group.get('group', f'group{i}')}"] = float(group["lr"])
        for logger in trainer.loggers:
            logger.log_metrics(lrs, step=trainer.global_step)
        row.update(lrs)
        self.rows.append(row)
        if trainer.is_global_zero:
            self.write_csv()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.plot and self.rows:
            plot_curves(self.rows, self.output_dir / "plots")

    def write_csv(self) -> Path:
        path = self.output_dir / "metrics.csv"
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


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


class WhiteningInit(pl.Callback):
    """airbench's patch-whitening first layer: set from ``num_images`` training images before the first step
    (``backbone.init_whitening``: normalised, not augmented, the first ones of the training split), its bias
    trained for the first ``bias_epochs`` epochs only. A resumed run, and a net fine-tuned from pretrained
    weights (``backbone.whitened`` is saved with them), keep the whitening they brought."""

    def __init__(self, *, num_images: int = 5000, eps: float = 5e-4, bias_epochs: int = 3) -> None:
        if num_images < 1 or bias_epochs < 0 or eps < 0:
            raise ValueError(
                f"callbacks.whitening: num_images={num_images} must be >= 1, bias_epochs={bias_epochs} and "
                f"eps={eps} >= 0"
            )
        self.num_images, self.eps, self.bias_epochs = int(num_images), float(eps), int(bias_epochs)

    @staticmethod
    def _backbone(pl_module: pl.LightningModule) -> Any:
        backbone = pl_module.net.backbone
        if not hasattr(backbone, "init_whitening"):
            raise ValueError(
                f"callbacks.whitening needs a backbone with a whitening layer (model=airbench); "
                f"{type(backbone).__name__} has none: remove callbacks.whitening"
            )
        return backbone

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._backbone(pl_module)  # fails before any work when the model has no whitening layer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        backbone = self._backbone(pl_module)
        if trainer.global_step > 0 or bool(backbone.whitened):
            return  # resumed, or pretrained: the weights hold the whitening they were trained with
        images = trainer.datamodule.train_images(self.num_images).to(pl_module.device)  # (N, C, H, W)
        backbone.init_whitening(images, eps=self.eps)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._backbone(pl_module).whiten.bias.requires_grad = trainer.current_epoch < self.bias_epochs
