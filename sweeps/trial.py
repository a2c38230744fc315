"""The job side of an Optuna trial run by the ``visfeat_optuna`` sweeper (hydra_plugins/visfeat_optuna_sweeper).

The sweeper asks the study for a trial and launches a job with ``++optuna.trial=<number>
++optuna.study=<name> ++optuna.storage=<url>``. In that job ``TrialPruning`` reopens the study from its
storage, reports the monitored ``val/*`` metric of each epoch to the trial (step = epoch) and stops the fit
when the pruner says so (the sweeper's own, ``hydra.sweeper.pruner`` of the job's Hydra config: Optuna
keeps no pruner in the storage); it marks the trial with the user attribute ``pruned_epoch``, and the
sweeper then tells the study the trial was pruned. The job itself finishes as any other: it tests the best
checkpoint and writes results.json, so a pruned trial's run dir is complete.

Storage: an RDB URL (``sqlite:///<sweep dir>/optuna.db``; opened by ``optuna-dashboard <url>``) or a
JournalStorage file, a path ending in ``.log`` (``optuna-dashboard <path>``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# User attributes of trials: the epoch after which the pruner stopped it (set by TrialPruning), why it failed,
# and, for a trial that reruns the parameters of a failed or interrupted one, that one's number and the retry.
PRUNED_EPOCH = "pruned_epoch"
FAIL_REASON = "fail_reason"
RETRY_OF = "retry_of"
ATTEMPT = "attempt"
SQLITE_TIMEOUT_S = 60  # parallel jobs write to one SQLite file: wait for its lock instead of failing


def open_storage(storage: str) -> Any:
    """An Optuna storage for ``storage``: an RDB URL, or a JournalStorage file when it is a path ending in .log."""
    import optuna

    if "://" not in storage:
        if not storage.endswith(".log"):
            raise ValueError(
                f"Optuna storage {storage!r}: give an RDB URL (sqlite:///path/optuna.db) or a JournalStorage "
                "file path ending in .log"
            )
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    engine_kwargs = {}
    if storage.startswith("sqlite:///"):
        # SQLite needs the folder; the sweeper opens the study before any job has made the sweep dir.
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)


def load_study(storage: str, study_name: str) -> Any:
    """The study, or None when it (or its SQLite file) does not exist yet."""
    import optuna

    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        return None
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:  # no such study in the storage
        return None


def load_trials(storage: str, study_name: str) -> list:
    """The FrozenTrials of a study, oldest first; [] when there is no such study yet."""
    study = load_study(storage, study_name)
    return [] if study is None else study.get_trials(deepcopy=False)


def running_trial(study: Any, number: int) -> Any:
    """The live ``optuna.trial.Trial`` with this number, or None when it is not running (a finished trial's
    run started again from its .hydra config, say)."""
    import optuna

    for frozen in study.get_trials(deepcopy=False):
        if frozen.number == number:
            if frozen.state != optuna.trial.TrialState.RUNNING:
                return None
            # Optuna has no public lookup of a trial by number; Trial(study, id) is what study.ask() returns.
            return optuna.trial.Trial(study, frozen._trial_id)
    return None
