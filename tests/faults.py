"""Test-only fault injectors, added to a run from the command line, e.g.
``+callbacks.fault._target_=tests.faults.SignalAt +callbacks.fault.step=5``."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytorch_lightning as pl
import torch


class SignalAt(pl.Callback):
    """Sends ``signum`` to this process once, when training batch number ``step`` (global, from 0) ends."""

    def __init__(self, *, step: int, signum: str = "SIGTERM") -> None:
        self.step, self.signum = step, signal.Signals[signum]

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        # global_step already counts this batch's update
        if trainer.global_step - 1 == self.step:
            os.kill(os.getpid(), self.signum)


class NaNLossAt(pl.Callback):
    """Makes the loss of training batch ``step`` NaN by poisoning the input batch."""

    def __init__(self, *, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            batch["input"][0].fill_(float("nan"))


class RaiseAt(pl.Callback):
    """Raises (a stand-in for any crash) when training batch ``step`` starts."""

    def __init__(self, *, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected crash at step {self.step}")


def blow_up_weights(module: torch.nn.Module) -> None:
    with torch.no_grad():
        next(module.parameters()).fill_(float("inf"))


class NaNLossFrom(pl.Callback):
    """Makes the loss of every training batch from ``step`` on NaN (a diverged run)."""

    def __init__(self, *, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, batch_idx: int
    ) -> None:
        if trainer.global_step >= self.step:
            batch["input"][0].fill_(float("nan"))
