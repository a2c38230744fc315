"""Lightning's ModelCheckpoint with a ``last.ckpt`` kept fresh (``callbacks.model_checkpoint``)."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

from runs.atomic import atomic_link
from runs.lightning_private import CheckpointHooks


class ModelCheckpoint(CheckpointHooks):
    """Lightning's ModelCheckpoint with a ``last.ckpt`` that is never more than ``last_every_s`` behind.

    Lightning (2.6) rewrites ``last.ckpt`` only at steps where it also wrote a top-k checkpoint: once the
    monitored metric stops improving, ``last.ckpt`` falls behind and a resume from it repeats those epochs,
    and at the end of fitting it may not hold the final weights. Here, at every save point (each epoch end
    by default):

    - the best checkpoint was just written: ``last.ckpt`` becomes a hard link to it (the same state, no second
      serialisation; a copy where hard links are impossible);
    - otherwise ``last.ckpt`` is written if ``last_every_s`` seconds passed since it last was (0: always).

    At the end of fitting it is always brought up to date; SIGTERM/SIGUSR1 write it too (trainer/callbacks/faults.py).
    So a crash that kills the process outright (out of memory, power loss) loses at most ``last_every_s``
    seconds of training, and small models with sub-second epochs do not spend their time serialising.
    """

    def __init__(self, *args: Any, last_every_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if last_every_s < 0:
            raise ValueError(f"callbacks.model_checkpoint.last_every_s={last_every_s} must be >= 0 (0: every epoch)")
        self.last_every_s = float(last_every_s)
        self._last_written_step: int | None = None
        self._last_written_time = time.monotonic()

    def topk_hook(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super().topk_hook(trainer, monitor_candidates)
        self.last_hook(trainer, monitor_candidates, when_due=True)

    def last_hook(
        self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor], *, when_due: bool = False
    ) -> None:
        if not self.save_last or self._last_written_step == trainer.global_step:
            return  # up to date (Lightning asks again right after the top-k save)
        source = self.last_saved_path if self.last_saved_step == trainer.global_step else None
        path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        if source and self.save_last is True and "://" not in path and not self.version_counter:
            self.last_model_path = path
            if trainer.is_global_zero:
                atomic_link(source, path)
            trainer.strategy.barrier()
        else:
            # Rank 0's clock decides, so that every process takes part in the same saves.
            due = time.monotonic() - self._last_written_time >= self.last_every_s
            if when_due and not trainer.strategy.broadcast(due):
                return
            self.write_last(trainer, monitor_candidates)
            self._last_written_time = time.monotonic()
        self._last_written_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and not trainer.fast_dev_run:
            self.last_hook(trainer, self.monitor_candidates(trainer))
