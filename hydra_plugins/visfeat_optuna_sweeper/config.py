"""The sweeper's config schema and its option groups, in Hydra's ConfigStore.

``hydra/sweeper=visfeat_optuna`` and ``hydra/sweeper/pruner=none|median|hyperband``. The sampler and the
pruner are plain ``_target_`` dicts, so any argument of their Optuna class can be set
(``hydra.sweeper.pruner.n_startup_trials=3``, ``hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler``).
The sampler is no option group: hydra-optuna-sweeper, where still installed, registers its own
``hydra/sweeper/sampler=tpe`` for Optuna 2, and one of the two would silently win.
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in sys.modules,
# where dataclasses look string annotations up; and OmegaConf wants typing's Optional/Dict/List.
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional  # noqa: UP035

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# Steps are epochs. The median pruner waits for n_startup_trials finished trials and n_warmup_steps epochs
# of the trial itself before it stops anything.
PRUNERS = {
    "none": {"_target_": "optuna.pruners.NopPruner"},
    "median": {
        "_target_": "optuna.pruners.MedianPruner",
        "n_startup_trials": 5,
        "n_warmup_steps": 2,
        "interval_steps": 1,
    },
    "hyperband": {
        "_target_": "optuna.pruners.HyperbandPruner",
        "min_resource": 1,
        "max_resource": "auto",
        "reduction_factor": 3,
    },
}


@dataclass
class VisfeatOptunaSweeperConf:
    _target_: str = "hydra_plugins.visfeat_optuna_sweeper.sweeper.VisfeatOptunaSweeper"
    # The sweeper builds the sampler (its seed moved on by the trials already run) and the pruner itself.
    _recursive_: bool = False
    defaults: List[Any] = field(  # noqa: UP006
        default_factory=lambda: [{"pruner": "none"}]
    )
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    pruner: Any = MISSING
    direction: str = "maximize"
    # An RDB URL (sqlite:///..., postgresql://...) or a JournalStorage file (a path ending in .log); the jobs
    # reopen the study through it to report each epoch, and optuna-dashboard opens it.
    storage: str = "sqlite:///${hydra.sweep.dir}/optuna.db"
    study_name: str = "${task_name}"
    # Finished (complete or pruned) trials of the whole study: a rerun adds only the missing ones.
    n_trials: int = 20
    # Trials asked for and launched together (a parallel launcher runs them at once).
    n_jobs: int = 1
    # How often the parameters of a failed trial are tried again (as a new trial) before giving up on them.
    retries: int = 0
    # Fraction of a batch's trials that may fail for good (after their retries) before the sweep stops.
    max_failure_rate: float = 0.0
    # Search space: key -> Hydra sweep syntax, e.g. optimizer.lr: tag(log, interval(1e-4, 1e-1)).
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="visfeat_optuna", node=VisfeatOptunaSweeperConf, provider="visfeat")
for name, node in PRUNERS.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="visfeat")
