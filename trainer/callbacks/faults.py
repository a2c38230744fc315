"""Surviving faults: interruption by a signal, and the random state a resume needs (non-finite numbers:
runs/nonfinite.py).

- ``SaveOnSignal``: SIGTERM (what ``kill``, ``scancel`` and most schedulers send) and SIGUSR1 (SLURM's
  warning before a time limit, ``#SBATCH --signal=USR1@90``) are turned into "finish this batch, write
  ``checkpoints/last.ckpt``, exit with status 128 + signal"; under SLURM, SIGUSR1 also requeues the job
  (``scontrol requeue``). Resuming (``resume=auto``) continues with the next batch of the same epoch
  (see docs/reliability.md).
- ``ResumeState``: the torch, numpy and Python generators are part of every checkpoint, so a resumed run draws
  the same dropout masks and augmentations as an uninterrupted one; and the training loader's position
  (data/resumable.py) is put back even when Lightning built the loader before restoring the checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import shlex
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from runs.lightning_private import load_loader_states

log = logging.getLogger(__name__)


class Interrupted(SystemExit):
    """Raised after the checkpoint of an interrupted run is written; exits with status 128 + signal number."""


# --- signals -------------------------------------------------------------------------------------------


class SaveOnSignal(pl.Callback):
    """On SIGTERM or SIGUSR1: finish the current training batch, save ``<checkpoints>/last.ckpt``, exit.

    The handler only records the signal; the checkpoint is written at the next batch end (or epoch end,
    when the signal came during validation), where the loop state is consistent and resumable.
    Under DDP the ranks agree (any rank signalled -> all stop at the same batch).
    """

    def __init__(self, *, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1"), filename: str = "last.ckpt") -> None:
        self.signals = [signal.Signals[name] for name in signals if hasattr(signal, name)]
        self.filename = filename
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("received %s: stopping after this batch and saving last.ckpt", signal.Signals(signum).name)
        self.received = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Installed here, after Lightning's own handlers (Trainer._run), so ours is the one that acts.
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # After an epoch's last batch, wait for its validation and epoch end: Lightning resumes a checkpoint
        # saved at the last batch's end straight into the next epoch, skipping them.
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._stop_if_signalled(trainer, "batch")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_signalled(trainer, "epoch end")

    def _stop_if_signalled(self, trainer: pl.Trainer, where: str) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        path = checkpoint_dir(trainer) / self.filename
        trainer.save_checkpoint(path)
        epoch, batch = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.completed
        name = signal.Signals(self.received).name if self.received else "a signal (on another rank)"
        log.warning(
            "%s at epoch %d, %s %d (global step %d): saved %s. Resume with: %s",
            name,
            epoch,
            where,
            batch + (where == "batch"),
            trainer.global_step,
            path,
            resume_command(path, Path(trainer.default_root_dir)),
        )
        if self.received == getattr(signal, "SIGUSR1", None) and trainer.is_global_zero:
            requeue_slurm_job()
        self._restore()
        raise Interrupted(128 + (self.received or signal.SIGTERM))


def resume_command(path: Path, run_dir: Path) -> str:
    """What continues the run: ``resume=auto`` in its run dir (which restores its saved config, trainer/resume.py),
    or ``ckpt_path`` where the checkpoint is elsewhere."""
    run_dir_arg = shlex.quote(f"hydra.run.dir={run_dir}")
    if path == run_dir / "checkpoints" / "last.ckpt":
        return f"python train.py resume=auto {run_dir_arg}"
    return f"python train.py {shlex.quote(f'ckpt_path={path}')} {run_dir_arg}"


def requeue_slurm_job() -> None:
    """Under SLURM (``#SBATCH --signal=USR1@90``): put the job back in the queue once its checkpoint is saved
    (``scontrol requeue``); the requeued job runs its script again, whose ``resume=auto`` continues."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error("could not requeue SLURM job %s (scontrol requeue %s: %s); resubmit it by hand", job, job, e)
        return
    if done.returncode != 0:
        log.error("scontrol requeue %s failed (%d): %s", job, done.returncode, (done.stderr or done.stdout).strip())
    else:
        log.warning("requeued SLURM job %s (scontrol requeue %s)", job, job)


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    cb = trainer.checkpoint_callback
    if cb is not None and getattr(cb, "dirpath", None):
        return Path(cb.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


# --- random state ---------------------------------------------------------------------------------------


class ResumeState(pl.Callback):
    """Saves the global generators in checkpoints (as plain tensors/ints) and restores them when training
    resumes, just before the first batch, so the resumed run continues the uninterrupted run's draws.

    Also restores the training loader's saved position: Lightning 2.6 loads it only while building the
    train loader, which has already happened when ``configure_optimizers`` asked for
    ``estimated_stepping_batches`` (schedulers do), so it would be silently dropped.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        load_loader_states(trainer)
        if self._pending is None:
            return
        s, self._pending = self._pending, None
        torch.set_rng_state(s["torch"])
        n = s["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        version, internal, gauss = s["python"]
        random.setstate((version, tuple(internal), gauss))
