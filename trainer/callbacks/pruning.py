"""Pruning an Optuna trial from inside its job (the study side: sweeps/trial.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from sweeps.trial import PRUNED_EPOCH, open_storage, running_trial

log = logging.getLogger(__name__)


class TrialPruning(pl.Callback):
    """Reports ``monitor`` after each validation to an Optuna trial and stops the fit when ``pruner`` says so.

    The pruner is not kept in the study's storage: the job builds the one the sweeper was configured with.
    """

    def __init__(self, *, trial: int, study: str, storage: str, monitor: str, pruner: Any) -> None:
        self.number, self.study_name, self.storage, self.monitor = int(trial), study, storage, monitor
        self.pruner = pruner
        self.trial: Any = None
        self.pruned_epoch: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        import optuna

        study = optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage), pruner=self.pruner)
        self.trial = running_trial(study, self.number)
        if self.trial is None:
            log.warning("Optuna trial %d of study %s is not running: not reporting to it", self.number, study)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self.trial is not None:
            if self.monitor not in trainer.callback_metrics:
                raise KeyError(
                    f"Optuna pruning monitors {self.monitor!r}, which validation does not log; logged: "
                    f"{sorted(k for k in trainer.callback_metrics if k.startswith('val/'))}. "
                    "Set optimized_metric (or ++optuna.monitor) to one of them."
                )
            epoch = trainer.current_epoch
            value = float(trainer.callback_metrics[self.monitor])
            self.trial.report(value, step=epoch)
            prune = self.trial.should_prune()
            if prune:
                self.trial.set_user_attr(PRUNED_EPOCH, epoch)
                log.info("Optuna trial %d pruned after epoch %d (%s=%.4g)", self.number, epoch, self.monitor, value)
        # Every process stops together (the decision is rank 0's, which alone talks to the study).
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_epoch = trainer.current_epoch
            trainer.should_stop = True


def trial_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """``[TrialPruning]`` in a job launched for an Optuna trial (``cfg.optuna`` set by the sweeper), else [].

    Its pruner: the sweeper's, ``hydra.sweeper.pruner`` of the job's Hydra config."""
    trial = cfg.get("optuna")
    if not trial:
        return []
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    pruner_cfg = HydraConfig.get().sweeper.get("pruner") if HydraConfig.initialized() else None
    if pruner_cfg is None:
        raise ValueError(
            f"optuna.trial={trial.trial} is set, but the Hydra config has no hydra.sweeper.pruner: jobs for "
            "Optuna trials are launched by hydra/sweeper=visfeat_optuna"
        )
    monitor = trial.get("monitor") or cfg.get("optimized_metric")
    if not monitor or not str(monitor).startswith("val/"):
        raise ValueError(
            f"an Optuna trial reports a val/ metric each epoch; optimized_metric={monitor!r} is not one: "
            "set ++optuna.monitor=val/acc (or another val/ metric)"
        )
    return [
        TrialPruning(
            trial=trial.trial, study=trial.study, storage=trial.storage, monitor=monitor, pruner=instantiate(pruner_cfg)
        )
    ]
