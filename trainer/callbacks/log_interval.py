"""Logging every epoch however short: ``trainer.log_every_n_steps`` fitted to the epoch."""

from __future__ import annotations

import math

import pytorch_lightning as pl


class StepLogInterval(pl.Callback):
    """``trainer.log_every_n_steps`` at most the number of training batches of an epoch (after
    ``limit_train_batches``), so per-step metrics are logged in every epoch, however short.

    Runs at ``setup``, before Lightning first sizes the training loader (which is where it would warn).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.datamodule is None:
            return
        try:
            batches = len(trainer.datamodule.train_dataloader())
        except TypeError:  # an iterable loader has no length: nothing to fit the interval to
            return
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            batches = min(batches, limit)
        elif limit is not None:
            batches = math.floor(batches * float(limit))
        if 0 < batches < trainer.log_every_n_steps:
            trainer.log_every_n_steps = batches
