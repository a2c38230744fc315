"""An Optuna study as a Hydra sweeper, driven by ask/tell.

Each round asks the study for ``n_jobs`` trials, launches one Hydra job per trial with the trial's
parameters as overrides (plus ``++optuna.trial/study/storage``, so that the job can report each epoch to
its trial: sweeps/trial.py), and tells the study how each ended:

- COMPLETE with the job's return value (train() returns ``optimized_metric``);
- PRUNED when the job's pruning callback marked the trial (the pruner stopped it early);
- FAIL when the job raised. Its parameters are tried again, as a new trial, up to ``retries`` times; a
  trial that still fails counts against ``n_trials`` and against ``max_failure_rate``.

``n_trials`` is the size of the whole study: a rerun of the same sweep (same storage and study name) runs
only the trials still missing. Trials left RUNNING by a sweep that was killed are marked FAIL and their
parameters run again first; the sampler's seed is moved on by the trials already in the study, so a rerun
does not replay the random start. At the end ``optimization_results.yaml`` in the sweep dir holds the best
parameters and value; the sweep summary (sweeps/summary.py) adds the trial states and Optuna's plots.

Optuna is imported only when a sweep starts: Hydra imports this module on every run to find its plugins.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")


class VisfeatOptunaSweeper(Sweeper):
    def __init__(
        self,
        *,
        sampler: DictConfig,
        pruner: DictConfig,
        direction: str,
        storage: str,
        study_name: str,
        n_trials: int,
        n_jobs: int,
        retries: int,
        max_failure_rate: float,
        params: DictConfig | None,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"hydra.sweeper.direction={direction!r}: one of {DIRECTIONS}")
        if not storage or not study_name:
            raise ValueError(
                "hydra.sweeper.storage and hydra.sweeper.study_name are needed: the jobs report to the study "
                "through its storage; e.g. storage=sqlite:///${hydra.sweep.dir}/optuna.db"
            )
        for key, value, low in (("n_trials", n_trials, 0), ("n_jobs", n_jobs, 1), ("retries", retries, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"hydra.sweeper.{key}={value!r} must be an integer >= {low}")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate={max_failure_rate!r} must be in [0, 1]")
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.direction, self.storage, self.study_name = direction, str(storage), str(study_name)
        self.n_trials, self.n_jobs, self.retries, self.max_failure_rate = n_trials, n_jobs, retries, max_failure_rate
        self.params = params or {}
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # --- the sweep ----------------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from sweeps.trial import load_trials, open_storage

        from ._space import search_space

        space, fixed = search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        if not space:
            raise ValueError(
                "the Optuna sweeper has nothing to search: set hydra.sweeper.params (or give "
                "sweep overrides such as optimizer.lr='tag(log, interval(1e-4, 0.1))')"
            )
        storage = open_storage(self.storage)
        earlier = load_trials(self.storage, self.study_name)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.build_sampler(seed_offset=len(earlier)),
            pruner=instantiate(self.pruner_cfg),
            direction=self.direction,
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            raise ValueError(
                f"study {self.study_name!r} in {self.storage} was made to {study.direction.name.lower()}, "
                f"hydra.sweeper.direction={self.direction}: use another study_name (or storage)"
            )
        log.info(
            "Optuna study %s in %s: %d trials already; sampler %s, pruner %s",
            self.study_name,
            self.storage,
            len(earlier),
            type(study.sampler).__name__,
            type(study.pruner).__name__,
        )
        self.rerun_interrupted(study)

        states = optuna.trial.TrialState
        done = len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))
        given_up = 0
        while done + given_up < self.n_trials:
            batch = min(self.n_jobs, self.n_trials - done - given_up)
            trials = [study.ask(space) for _ in range(batch)]
            overrides = [self.job_overrides(trial, fixed) for trial in trials]
            returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            failed = []
            for trial, ret in zip(trials, returns, strict=True):
                state = self.tell(study, trial, ret)
                if state != states.FAIL:
                    done += 1
                elif not self.retry(study, trial):
                    given_up += 1
                    failed.append(ret)
            if failed and len(failed) / len(returns) > self.max_failure_rate:
                log.error(
                    "%d of %d trials failed (hydra.sweeper.max_failure_rate=%s, retries=%d): stopping the sweep",
                    len(failed),
                    len(returns),
                    self.max_failure_rate,
                    self.retries,
                )
                _ = failed[0].return_value  # raises the job's own exception, with its traceback
        self.write_results(study)

    def build_sampler(self, *, seed_offset: int) -> Any:
        cfg = OmegaConf.to_container(self.sampler_cfg, resolve=True)
        if seed_offset and cfg.get("seed") is not None:
            cfg["seed"] = int(cfg["seed"]) + seed_offset
        return instantiate(cfg)

    def rerun_interrupted(self, study: Any) -> None:
        """Trials left RUNNING by a killed sweep: FAIL, and their parameters queued to run first.

        One sweep per study at a time is assumed: a trial another live sweep is running would be failed too."""
        import optuna

        from sweeps.trial import ATTEMPT, RETRY_OF

        for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            log.warning("Optuna trial %d was interrupted (left running): marked failed, run again", frozen.number)
            study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(frozen.params, user_attrs={RETRY_OF: frozen.number, ATTEMPT: 0})

    def job_overrides(self, trial: Any, fixed: dict[str, str]) -> list[str]:
        from ._space import override_value

        return [
            *(f"{key}={override_value(value)}" for key, value in trial.params.items()),
            *(f"{key}={value}" for key, value in fixed.items()),
            f"++optuna.trial={trial.number}",
            f"++optuna.study={quoted(self.study_name)}",
            f"++optuna.storage={quoted(self.storage)}",
        ]

    def tell(self, study: Any, trial: Any, ret: Any) -> Any:
        import optuna

        from sweeps.trial import PRUNED_EPOCH

        states = optuna.trial.TrialState
        # The job wrote to the trial through its own storage connection: read the trial again.
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        try:
            value = ret.return_value
        except optuna.TrialPruned:
            study.tell(trial, state=states.PRUNED)
            return states.PRUNED
        except Exception as e:  # the job raised: Hydra's JobReturn re-raises it here
            return self.fail(study, trial, f"{type(e).__name__}: {e}")
        if PRUNED_EPOCH in frozen.user_attrs:
            study.tell(trial, state=states.PRUNED)  # its value: the last one reported
            return states.PRUNED
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        if math.isnan(value):
            return self.fail(study, trial, f"the job returned {ret.return_value!r}, not a number (optimized_metric?)")
        study.tell(trial, value)
        return states.COMPLETE

    def fail(self, study: Any, trial: Any, reason: str) -> Any:
        import optuna

        from sweeps.trial import FAIL_REASON

        log.warning("Optuna trial %d failed: %s", trial.number, reason)
        trial.set_user_attr(FAIL_REASON, reason[:1000])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return optuna.trial.TrialState.FAIL

    def retry(self, study: Any, trial: Any) -> bool:
        """Queue the failed trial's parameters again if it has retries left; whether it did."""
        from sweeps.trial import ATTEMPT, RETRY_OF

        attempt = int(trial.user_attrs.get(ATTEMPT, 0))
        if attempt >= self.retries:
            return False
        origin = trial.user_attrs.get(RETRY_OF, trial.number)
        log.info("Optuna trial %d: retrying its parameters (retry %d of %d)", trial.number, attempt + 1, self.retries)
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: origin, ATTEMPT: attempt + 1})
        return True

    def write_results(self, study: Any) -> None:
        import optuna

        from runs.atomic import atomic_open

        states = optuna.trial.TrialState
        counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in states}
        log.info("Optuna study %s: %s", self.study_name, ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        results: dict[str, Any] = {"name": "optuna", "study_name": self.study_name, "storage": self.storage, **counts}
        if counts["complete"]:
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("best trial %d: value %.4g with %s", best.number, best.value, best.params)
        with atomic_open(Path(self.config.hydra.sweep.dir) / "optimization_results.yaml") as f:
            f.write(OmegaConf.to_yaml(OmegaConf.create(results)))


def quoted(text: str) -> str:
    """A string as a quoted override value (paths and URLs hold characters the override grammar reads)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
