"""The per-epoch history behind metrics.csv and the curve plots."""

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
