"""Callbacks of our own: the per-epoch history behind metrics.csv and the curve plots."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from runs.plots import plot_curves


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
