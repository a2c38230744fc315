"""Test-only fault injectors, added to a run from the command line, e.g.
``+callbacks.fault._target_=tests.faults.SignalAt +callbacks.fault.step=5``."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytorch_lightning as pl
import torch


class SignalAt(pl.Callback):
    """Sends ``signum`` to this process ``times`` times (to its whole process group with ``group``, as a terminal
    sends Ctrl-C), when training batch number ``step`` (global, from 0) ends, or with ``in_validation`` validation
    batch ``step`` of an epoch."""

    def __init__(
        self, *, step: int, signum: str = "SIGTERM", times: int = 1, group: bool = False, in_validation: bool = False
    ) -> None:
        self.step, self.signum, self.times, self.group = step, signal.Signals[signum], times, group
        self.in_validation = in_validation

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        # global_step already counts this batch's update
        if trainer.global_step - 1 == self.step and not self.in_validation:
            self.send()

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if self.in_validation and not trainer.sanity_checking and batch_idx == self.step:
            self.send()

    def send(self) -> None:
        for _ in range(self.times):
            if self.group:
                os.killpg(os.getpgid(0), self.signum)
            else:
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
