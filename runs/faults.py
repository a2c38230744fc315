"""Surviving faults: interruption by a signal, non-finite numbers, and the random state a resume needs.

- ``SaveOnSignal``: SIGTERM (what ``kill``, ``scancel`` and most schedulers send), SIGUSR1 (SLURM's
  warning before a time limit, ``#SBATCH --signal=USR1@90``) and SIGINT (Ctrl-C) are turned into "finish this
  batch, write ``checkpoints/last.ckpt``, exit with status 128 + signal"; under SLURM, SIGUSR1 also requeues the job
  (``scontrol requeue``). Resuming (``resume=auto``) continues with the next batch of the same epoch
  (see docs/reliability.md).
- ``ResumeState``: the torch, numpy and Python generators are part of every checkpoint, so a resumed run draws
  the same dropout masks and augmentations as an uninterrupted one; and the training loader's position
  (data/resumable.py) is put back even when Lightning built the loader before restoring the checkpoint.
- ``check_update``: called by the LightningModule before each optimizer step, one host sync for the loss
  and all gradients; ``error`` stops the run naming the step, ``skip`` drops the update and counts it, and
  ``ConsecutiveSkips`` stops a run that skips ``module.max_consecutive_skips`` updates in a row.
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
from torch import Tensor, nn

from runs.lightning_private import load_loader_states

log = logging.getLogger(__name__)

NONFINITE_MODES = ("error", "skip")


class Interrupted(SystemExit):
    """Raised after the checkpoint of an interrupted run is written; exits with status 128 + signal number."""


class NonFiniteError(FloatingPointError):
    pass


# --- signals -------------------------------------------------------------------------------------------


class SaveOnSignal(pl.Callback):
    """On SIGTERM, SIGUSR1 or SIGINT (Ctrl-C): finish the current training batch, save
    ``<checkpoints>/last.ckpt``, print the resume command, exit (130 for Ctrl-C). A second Ctrl-C before then
    aborts at once, without saving (Lightning's KeyboardInterrupt shutdown).

    The handler only records the signal; the checkpoint is written at the next batch end (or epoch end,
    when the signal came during validation), where the loop state is consistent and resumable.
    Under DDP the ranks agree (any rank signalled -> all stop at the same batch).
    """

    def __init__(
        self, *, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGINT"), filename: str = "last.ckpt"
    ) -> None:
        self.signals = [signal.Signals[name] for name in signals if hasattr(signal, name)]
        self.filename = filename
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received is not None:  # Ctrl-C again: the user will not wait
            self._restore()
            raise KeyboardInterrupt
        hint = "; Ctrl-C again aborts at once without saving" if signum == signal.SIGINT else ""
        log.warning("received %s: stopping after this batch and saving last.ckpt%s", signal.Signals(signum).name, hint)
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
    """What continues the run: ``resume=auto`` in its run dir (which restores its saved config, runs/resume.py),
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


# --- non-finite numbers ---------------------------------------------------------------------------------


class ConsecutiveSkips:
    """``module.nonfinite=skip`` with a limit: after ``limit`` updates skipped in a row the run stops (a run that
    drops every update is not training, however long it runs); 0: no limit."""

    def __init__(self, limit: int) -> None:
        if int(limit) < 0:
            raise ValueError(f"module.max_consecutive_skips={limit} must be >= 0 (0: no limit)")
        self.limit, self.in_a_row = int(limit), 0

    def count(self, ok: bool, *, step: int) -> None:
        self.in_a_row = 0 if ok else self.in_a_row + 1
        if self.limit and self.in_a_row >= self.limit:
            raise NonFiniteError(
                f"{self.in_a_row} updates in a row skipped for non-finite losses or gradients (the last at global "
                f"step {step}; module.max_consecutive_skips={self.limit}): training has diverged. Lower "
                f"optimizer.lr, set trainer.gradient_clip_val, or check the data; resume from checkpoints/last.ckpt."
            )


def check_nonfinite_mode(mode: str) -> str:
    if mode not in NONFINITE_MODES:
        raise ValueError(f"module.nonfinite={mode!r} must be one of {NONFINITE_MODES}")
    return mode


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every tensor is free of NaN and inf, in one host sync whatever their number: a NaN or inf makes
    a tensor's L2 norm non-finite. Only then is each tensor searched, since a norm also overflows for large
    finite values. (The max-abs norm, exact at once, is 6x slower on CPU: 16 ms for ResNet-18's gradients.)"""
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors)
    if len({n.dtype for n in norms}) > 1:  # e.g. bf16 gradients with an fp32 loss
        norms = [n.float() for n in norms]
    return bool(torch.stack(norms).isfinite().all()) or all(bool(torch.isfinite(t).all()) for t in tensors)


def nonfinite_names(named: dict[str, Tensor]) -> list[str]:
    """Names of the tensors holding a NaN or inf; the per-tensor search runs only when a norm is off."""
    if all_finite(list(named.values())):
        return []
    return [name for name, t in named.items() if not torch.isfinite(t).all()]


def check_update(
    net: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    *,
    losses: list[tuple[int, Tensor]],
    step: int,
    epoch: int,
    mode: str,
) -> bool:
    """True when the optimizer step may go ahead: the losses behind it (``(batch_idx, loss)`` of each batch
    accumulated into this update) and all gradients are finite.

    Called once per optimizer step, just before it, so the whole check costs one host sync (a GPU run used
    to pay two: the loss before backward, the gradients before the step); names are looked up only when
    something is off. A non-finite loss is named before non-finite gradients, since it is the cause.
    Otherwise ``error`` raises, and ``skip`` clears the gradients so that the optimizer leaves the weights
    alone (the skipped batch still ran backward, so DDP processes stay in step).
    """
    tensors = [loss for _, loss in losses]
    if net is not None:  # None: gradients are someone else's job (fp16's grad scaler)
        tensors += [p.grad for p in net.parameters() if p.grad is not None]
    if all_finite(tensors):
        return True
    bad_losses = [(i, loss) for i, loss in losses if not torch.isfinite(loss).all()]
    if bad_losses:
        i, loss = bad_losses[0]
        what = f"non-finite training loss ({loss.item()}) at global step {step} (epoch {epoch}, batch {i})"
        fix = "Lower optimizer.lr, check the input data, or set module.nonfinite=skip to drop such batches"
    else:  # the losses are finite, so a gradient is not (and the net was given)
        grads = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
        bad = nonfinite_names(grads)
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        what = f"non-finite gradients at global step {step} in {shown}"
        fix = "Lower optimizer.lr, set trainer.gradient_clip_val, or set module.nonfinite=skip to drop such updates"
    if mode == "error":
        raise NonFiniteError(f"{what}. {fix} (counted as train/skipped_nonfinite).")
    log.warning("%s: skipping the update", what)
    if net is None:
        return False
    # Parameters without a gradient are left untouched by torch optimizers (no decay, no momentum).
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None
    return False
