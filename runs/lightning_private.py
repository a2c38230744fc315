"""The one seam to Lightning's private API: every private name of pytorch_lightning that visfeat uses.

Checked against pytorch-lightning 2.6.6 (requirements.lock). Each entry below names what it relies on;
``check()`` verifies that every one of them still exists with the expected signature and is run by
tests/test_lightning_seam.py, so a Lightning upgrade that changes one fails there, with a message naming
the name, instead of somewhere deep inside a run. The rest of the code base uses only the public names
defined here (``CheckpointHooks``, ``ChildScriptLauncher``, ``LauncherHooks``, ``load_loader_states``,
``WandbLogger``).
"""

from __future__ import annotations

import inspect
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

CHECKED_VERSION = "2.6.6"


class CheckpointHooks(pl.callbacks.ModelCheckpoint):
    """ModelCheckpoint with its private save hooks and state under public names.

    Lightning 2.6.6: ``ModelCheckpoint._save_topk_checkpoint(trainer, monitor_candidates)`` and
    ``_save_last_checkpoint(trainer, monitor_candidates)`` are called at every save point (no public hook
    decides *when* last.ckpt is written); ``_last_checkpoint_saved``, ``_last_global_step_saved``,
    ``_enable_version_counter`` and ``_monitor_candidates(trainer)`` hold what they decide on.
    Subclasses override ``topk_hook`` / ``last_hook`` and call ``super()`` for Lightning's own behaviour.
    """

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        self.topk_hook(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        self.last_hook(trainer, monitor_candidates)

    def topk_hook(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def last_hook(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor], **_: Any) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)

    def write_last(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        """Lightning's own write of last.ckpt (whatever an override of ``last_hook`` decides)."""
        pl.callbacks.ModelCheckpoint._save_last_checkpoint(self, trainer, monitor_candidates)

    @property
    def last_saved_path(self) -> str:
        """The checkpoint file written most recently by this callback (top-k or last)."""
        return self._last_checkpoint_saved

    @property
    def last_saved_step(self) -> int | None:
        return self._last_global_step_saved

    @property
    def version_counter(self) -> bool:
        """Whether existing files get ``-v1``, ``-v2`` suffixes instead of being replaced."""
        return self._enable_version_counter

    def monitor_candidates(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        return self._monitor_candidates(trainer)


class ChildScriptLauncher(_SubprocessScriptLauncher):
    """Lightning's ``_SubprocessScriptLauncher`` (the ``popen`` start method of DDP) with a public hook.

    Lightning 2.6.6: ``_call_children_scripts()`` starts the processes of local ranks 1.. by running the
    script again (``self.procs``); ``_check_can_spawn_children()`` refuses when they already exist.
    Subclasses override ``start_children`` and may call ``default_start_children``.
    """

    def _call_children_scripts(self) -> None:
        self.start_children()

    def start_children(self) -> None:
        self.default_start_children()

    def default_start_children(self) -> None:
        super()._call_children_scripts()

    def check_can_spawn_children(self) -> None:
        self._check_can_spawn_children()


class LauncherHooks(pl.strategies.DDPStrategy):
    """DDPStrategy whose ``popen`` launcher is replaced by ``self.child_launcher()``.

    Lightning 2.6.6: ``DDPStrategy._configure_launcher()`` sets ``self._launcher``; the public
    ``launcher`` property only reads it.
    """

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _SubprocessScriptLauncher:
            self._launcher = self.child_launcher()

    def child_launcher(self) -> _SubprocessScriptLauncher:
        return _SubprocessScriptLauncher(self.cluster_environment, self.num_processes, self.num_nodes)


def load_loader_states(trainer: pl.Trainer) -> None:
    """Restore the dataloader states a checkpoint brought, now (not at the first batch, as Lightning does).

    Lightning 2.6.6: ``trainer.fit_loop._combined_loader_states_to_load`` holds them until
    ``fit_loop._load_combined_loader_states()`` runs, which is after ``on_train_start``; a resumed sampler
    must know its position before then.
    """
    loop = trainer.fit_loop
    if getattr(loop, "_combined_loader_states_to_load", None):
        loop._load_combined_loader_states()


class WandbLogger(pl.loggers.WandbLogger):
    """Lightning's WandbLogger (``logger=wandb``) without the ``anonymous`` argument it always hands to
    ``wandb.init``.

    Lightning 2.6.6 puts ``"anonymous": None`` into ``self._wandb_init`` unless one asks for anonymous
    logging, and wandb 0.31 warns about any value it is given ("The anonymous setting has no effect and will
    be removed in a future version"): leaving the key out leaves wandb at its own default, silently.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous", False) is None:
            del self._wandb_init["anonymous"]


# name -> (object holding it, parameters it must take), for check()
EXPECTED: dict[str, tuple[Any, tuple[str, ...]]] = {
    "ModelCheckpoint._save_topk_checkpoint": (pl.callbacks.ModelCheckpoint, ("trainer", "monitor_candidates")),
    "ModelCheckpoint._save_last_checkpoint": (pl.callbacks.ModelCheckpoint, ("trainer", "monitor_candidates")),
    "ModelCheckpoint._monitor_candidates": (pl.callbacks.ModelCheckpoint, ("trainer",)),
    "_SubprocessScriptLauncher._call_children_scripts": (_SubprocessScriptLauncher, ()),
    "_SubprocessScriptLauncher._check_can_spawn_children": (_SubprocessScriptLauncher, ()),
    "DDPStrategy._configure_launcher": (pl.strategies.DDPStrategy, ()),
    "_FitLoop._load_combined_loader_states": (pl.loops.fit_loop._FitLoop, ()),
}
# attributes set in __init__, checked on a fresh instance
ATTRIBUTES = {
    "ModelCheckpoint": ("_last_checkpoint_saved", "_last_global_step_saved", "_enable_version_counter"),
    "_FitLoop": ("_combined_loader_states_to_load",),
    "WandbLogger": ("_wandb_init",),
}


def check() -> list[str]:
    """What no longer matches Lightning's private API as checked against ``CHECKED_VERSION`` (empty: all)."""
    problems = []
    for name, (owner, params) in EXPECTED.items():
        method = getattr(owner, name.split(".")[1], None)
        if method is None:
            problems.append(f"{name} is gone")
            continue
        got = [p for p in inspect.signature(method).parameters if p != "self"]
        if got[: len(params)] != list(params):
            problems.append(f"{name} takes {got}, expected {list(params)}")
    checkpoint = pl.callbacks.ModelCheckpoint()
    fit_loop = pl.loops.fit_loop._FitLoop(pl.Trainer(logger=False, enable_checkpointing=False))
    wandb_logger = pl.loggers.WandbLogger(offline=True)  # builds no run until its experiment is used
    for owner, attrs in (("ModelCheckpoint", checkpoint), ("_FitLoop", fit_loop), ("WandbLogger", wandb_logger)):
        for attr in ATTRIBUTES[owner]:
            if not hasattr(attrs, attr):
                problems.append(f"{owner}.{attr} is gone")
    return [
        f"{p} (visfeat checked pytorch-lightning {CHECKED_VERSION}; see runs/lightning_private.py)" for p in problems
    ]
