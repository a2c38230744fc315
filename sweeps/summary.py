"""What a multirun leaves in its sweep dir, and resuming Optuna studies. Hydra callbacks (conf/hydra).

``SweepSummary`` (every multirun): reads the results.json of every job under the sweep dir and writes
  summary.csv   one row per job: its overrides, the swept parameters as columns, final metrics, run dir,
                and, for the group of jobs that differ only in ``seed``, mean and std of every metric;
  summary.md    the same as tables with the best job named: one row per job, and, only when some
                configuration ran with several seeds, one row per configuration (mean ± std, n);
  plots/<metric>_vs_<param>.png   the optimised metric against each swept parameter (against the seed only
                when some configuration repeats it: one seed per configuration varies with the rest).
  The best job maximises or minimises ``optimized_metric``: the sweeper's ``direction`` when it has one,
  else ``mode`` (max unless the metric's name says loss/error/time).

  An Optuna sweep (hydra/sweeper=visfeat_optuna, whose jobs carry ``optuna.trial``) adds each job's trial
  number and state (COMPLETE, PRUNED with its epoch), a table of the study's trials with the failed ones and
  why, and Optuna's plots: plots/optuna_{history,importances,parallel_coordinate,intermediate_values}.png.
  Pruned and failed trials are never the best job.

  A job that raises (any multirun) is a row of state FAILED with its error, and the summary is rewritten after
  every job: a multirun that stops on a failed job still summarises those that finished.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from runs.atomic import atomic_open
from runs.resolvers import metric_mode

log = logging.getLogger(__name__)

SEED_KEYS = ("seed",)
# Per-job entries of results.json shown in the summary besides the val/ and test/ metrics.
EXTRA_NUMBERS = ("epochs", "train_seconds")
# Overrides the Optuna sweeper adds to every job (sweeps/trial.py): bookkeeping, not swept parameters.
TRIAL_KEY = "optuna.trial"
TRIAL_PREFIX = "optuna."
# What a job that raised leaves in its dir instead of results.json (SweepSummary.on_job_end): overrides, error.
FAILED_JOB = "failed.json"


# --- reading the jobs -------------------------------------------------------------------------------------


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """``["optimizer.lr=0.1", "+data.x=1", "~callbacks.a"]`` -> ``{"optimizer.lr": "0.1", "data.x": "1"}``."""
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep:
            parsed[key.lstrip("+~")] = value
    return parsed


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One dict per results.json under ``sweep_dir`` (and per ``FAILED_JOB`` record of a job that raised, with
    its error and state ``FAILED``), in job-directory order."""
    jobs = []
    found = [*sweep_dir.rglob("results.json"), *sweep_dir.rglob(FAILED_JOB)]
    for path in sorted(found, key=lambda p: natural_key(p.parent.relative_to(sweep_dir))):
        failed = path.name == FAILED_JOB
        if failed and (path.parent / "results.json").is_file():
            continue  # a later attempt of the job (an Optuna retry, a rerun) finished
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping %s: %s", path, e)
            continue
        overrides = results.get("overrides") or []
        params = parse_overrides(overrides)
        trial = params.get(TRIAL_KEY)
        jobs.append(
            {
                "job": str(path.parent.relative_to(sweep_dir)),
                "overrides": overrides,
                "params": {k: v for k, v in params.items() if not k.startswith(TRIAL_PREFIX)},
                "metrics": {} if failed else job_metrics(results),
                "run_dir": results.get("run_dir", str(path.parent)),
                "trial": int(trial) if trial is not None else None,
                "state": "FAILED" if failed else None,
                "error": results.get("error", "") if failed else "",
            }
        )
    return jobs


def natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in path.parts]


def job_metrics(results: dict[str, Any]) -> dict[str, float]:
    metrics = {}
    for key, value in results.items():
        if (key.startswith(("val/", "test/")) or key in EXTRA_NUMBERS) and is_number(value):
            metrics[key] = float(value)
    return metrics


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def swept_params(jobs: list[dict[str, Any]]) -> list[str]:
    """Override keys whose value is not the same in every job (in first-seen order)."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["params"]))
    return [k for k in keys if len({job["params"].get(k) for job in jobs}) > 1]


# --- summarising ------------------------------------------------------------------------------------------


def best_job(jobs: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    scored = [
        job
        for job in jobs
        if metric in job["metrics"] and not math.isnan(job["metrics"][metric]) and job["state"] in (None, "COMPLETE")
    ]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda job: job["metrics"][metric])


def repeated_seeds(groups: list[dict[str, Any]]) -> bool:
    """Whether some configuration ran with more than one seed: only then is a spread over seeds worth a
    table, and the seed a parameter worth a plot (with one seed per configuration, it varies with the rest)."""
    return any(len(group["jobs"]) > 1 for group in groups)


def varied_params(params: list[str], groups: list[dict[str, Any]]) -> list[str]:
    """The swept parameters worth plotting the metric against: the seed only when it is repeated."""
    return params if repeated_seeds(groups) else [p for p in params if p not in SEED_KEYS]


def group_over_seeds(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs that differ only in their seed, as groups with mean and std (sample, n > 1) of each metric."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for job in jobs:
        config = tuple(sorted((k, v) for k, v in job["params"].items() if k not in SEED_KEYS))
        groups.setdefault(config, []).append(job)
    summary = []
    for config, members in groups.items():
        names = list(dict.fromkeys(k for job in members for k in job["metrics"]))
        stats = {}
        for name in names:
            values = [job["metrics"][name] for job in members if name in job["metrics"]]
            stats[name] = (
                statistics.fmean(values),
                statistics.stdev(values) if len(values) > 1 else None,
                len(values),
            )
        summary.append({"config": dict(config), "jobs": members, "stats": stats})
    return summary


def write_summary(sweep_dir: Path, *, metric: str | None, mode: str, study: Any = None) -> dict[str, Any] | None:
    """summary.csv, summary.md and plots in ``sweep_dir``; returns the best job (None without metric/jobs).

    ``study``: the Optuna study of the sweep, for the trials' states and Optuna's plots."""
    jobs = read_jobs(sweep_dir)
    if not jobs:
        log.warning("no results.json under %s: no sweep summary", sweep_dir)
        return None
    trials = study.get_trials(deepcopy=False) if study is not None else []
    mark_trial_states(jobs, trials)
    params = swept_params(jobs)
    metrics = list(dict.fromkeys(k for job in jobs for k in job["metrics"]))
    groups = group_over_seeds(jobs)
    best = best_job(jobs, metric, mode) if metric else None
    write_csv(sweep_dir / "summary.csv", jobs, params, metrics, groups)
    write_markdown(
        sweep_dir / "summary.md",
        jobs,
        params,
        metrics,
        groups,
        metric=metric,
        mode=mode,
        best=best,
        extra=study_lines(study, trials) if trials else [],
    )
    if metric:
        plot_metric(sweep_dir / "plots", jobs, varied_params(params, groups), metric)
    if study is not None:
        plot_study(sweep_dir / "plots", study, metric=metric or "value")
    log.info("sweep summary: %s (%d jobs)", sweep_dir / "summary.md", len(jobs))
    return best


def mark_trial_states(jobs: list[dict[str, Any]], trials: list) -> None:
    """Each job of an Optuna trial gets the trial's state: COMPLETE, PRUNED (with its epoch), FAIL, ..."""
    from sweeps.trial import PRUNED_EPOCH

    by_number = {t.number: t for t in trials}
    for job in jobs:
        trial = by_number.get(job["trial"])
        if trial is not None:
            job["state"] = trial.state.name
            if trial.state.name == "PRUNED" and PRUNED_EPOCH in trial.user_attrs:
                job["state"] = f"PRUNED after epoch {trial.user_attrs[PRUNED_EPOCH]}"


def write_csv(path: Path, jobs, params, metrics, groups) -> None:
    group_of = {id(job): group for group in groups for job in group["jobs"]}
    optuna = any(job["trial"] is not None for job in jobs)
    states = optuna or any(job["state"] for job in jobs)
    errors = any(job["error"] for job in jobs)
    header = [
        "job",
        *(["trial"] if optuna else []),
        *(["state"] if states else []),
        *(["error"] if errors else []),
        *params,
        *metrics,
        "n_seeds",
        *(f"{m}/{s}" for m in metrics for s in ("mean", "std")),
        "overrides",
        "run_dir",
    ]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for job in jobs:
            stats = group_of[id(job)]["stats"]
            spread = []
            for m in metrics:
                mean, std, _ = stats.get(m, (None, None, 0))
                spread += [blank(mean), blank(std)]
            writer.writerow(
                [
                    job["job"],
                    *([blank(job["trial"])] if optuna else []),
                    *([job["state"] or ""] if states else []),
                    *([job["error"]] if errors else []),
                    *(job["params"].get(p, "") for p in params),
                    *(blank(job["metrics"].get(m)) for m in metrics),
                    len(group_of[id(job)]["jobs"]),
                    *spread,
                    " ".join(job["overrides"]),
                    job["run_dir"],
                ]
            )


def blank(value: float | None) -> str | float:
    return "" if value is None else value


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def write_markdown(path: Path, jobs, params, metrics, groups, *, metric, mode, best, extra=()) -> None:
    lines = [f"# Sweep summary: {len(jobs)} jobs", ""]
    if best is not None:
        lines += [
            f"Best job: **{best['job']}** with {metric} = {fmt(best['metrics'][metric])} ({mode}imised), "
            f"overrides `{' '.join(best['overrides'])}`, run dir `{best['run_dir']}`.",
            "",
        ]
    elif metric:
        lines += [f"No job recorded {metric}.", ""]
    failed = [j for j in jobs if j["state"] == "FAILED"]
    if failed:
        lines += [f"{len(failed)} of {len(jobs)} jobs failed: {', '.join(j['job'] for j in failed)} (error below).", ""]
    lines += ["## Jobs", ""]
    optuna = any(j["trial"] is not None for j in jobs)
    states = optuna or bool(failed)
    lines += markdown_table(
        ["job", *(["trial"] if optuna else []), *(["state"] if states else []), *params, *metrics, "run dir"],
        [
            [
                j["job"],
                *([str(j["trial"])] if optuna else []),
                *([j["state"] or ""] if states else []),
                *(j["params"].get(p, "") for p in params),
                *(fmt(j["metrics"].get(m)) for m in metrics),
                j["run_dir"],
            ]
            for j in jobs
        ],
    )
    if repeated_seeds(groups):
        lines += ["", *seed_table(groups, params, metrics)]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += markdown_table(
            ["job", "overrides", "error"],
            [[j["job"], " ".join(j["overrides"]), j["error"].replace("|", "/").replace("\n", " ")] for j in failed],
        )
    if extra:
        lines += ["", *extra]
    with atomic_open(path) as f:
        f.write("\n".join(lines) + "\n")


def seed_table(groups: list[dict[str, Any]], params: list[str], metrics: list[str]) -> list[str]:
    """Mean ± std (n) of every metric per configuration; configurations run with one seed show their value."""
    config_params = [p for p in params if p not in SEED_KEYS]
    rows = []
    for group in groups:
        cells = []
        for m in metrics:
            mean, std, n = group["stats"].get(m, (None, None, 0))
            cells.append("" if mean is None else f"{mean:.4g} ± {fmt(std)} ({n})" if n > 1 else f"{mean:.4g} (1)")
        rows.append([*(group["config"].get(p, "") for p in config_params), *cells])
    return ["## Per configuration over seeds (mean ± std, n)", "", *markdown_table([*config_params, *metrics], rows)]


def plot_metric(plot_dir: Path, jobs, params, metric: str) -> list[Path]:
    """One PNG per swept parameter: the metric of each job against the parameter's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [job for job in jobs if metric in job["metrics"]]
    paths = []
    for param in params:
        values = [job["params"].get(param, "") for job in scored]
        ys = [job["metrics"][metric] for job in scored]
        numbers = [as_float(v) for v in values]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if all(x is not None for x in numbers):
            ax.scatter(numbers, ys)
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 100:
                ax.set_xscale("log")
        else:
            categories = sorted(set(values))
            ax.scatter([categories.index(v) for v in values], ys)
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        plot_dir.mkdir(parents=True, exist_ok=True)
        path = plot_dir / f"{metric.replace('/', '_')}_vs_{param.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def study_lines(study: Any, trials: list) -> list[str]:
    """summary.md's section on the Optuna study: trials per state, and every trial that did not complete."""
    from sweeps.trial import FAIL_REASON, PRUNED_EPOCH, RETRY_OF

    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    lines = [
        f"## Optuna study `{study.study_name}`: {len(trials)} trials",
        "",
        ", ".join(f"{n} {state.lower()}" for state, n in counts.items()) + ".",
        "",
    ]
    rows = []
    for trial in trials:
        if trial.state.name == "COMPLETE":
            continue
        note = trial.user_attrs.get(FAIL_REASON, "")
        if PRUNED_EPOCH in trial.user_attrs:
            note = f"pruned after epoch {trial.user_attrs[PRUNED_EPOCH]}"
        if RETRY_OF in trial.user_attrs:
            note = f"{note} (rerun of trial {trial.user_attrs[RETRY_OF]})".strip()
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        rows.append([str(trial.number), trial.state.name, fmt(trial.value), params, note.replace("|", "/")])
    if rows:
        lines += markdown_table(["trial", "state", "value", "params", "note"], rows)
    return lines


def plot_study(plot_dir: Path, study: Any, *, metric: str) -> list[Path]:
    """Optuna's own plots of the study (optuna.visualization.matplotlib) as PNGs; a plot that needs more
    trials than there are (importances need two complete ones) is left out with a log line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        "optuna_history": optuna_plots.plot_optimization_history,
        "optuna_importances": optuna_plots.plot_param_importances,
        "optuna_parallel_coordinate": optuna_plots.plot_parallel_coordinate,
        "optuna_intermediate_values": optuna_plots.plot_intermediate_values,
    }
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, plot in plots.items():
        if name == "optuna_importances" and len(complete) < 2:
            log.info("no %s plot: needs 2 complete trials, the study has %d", name, len(complete))
            continue
        try:
            kwargs = {} if name == "optuna_intermediate_values" else {"target_name": metric}
            with warnings.catch_warnings():  # Optuna calls its matplotlib plots experimental (since v2.2)
                warnings.simplefilter("ignore", ExperimentalWarning)
                ax = plot(study, **kwargs)
        except (ValueError, RuntimeError) as e:
            log.info("no %s plot: %s", name, e)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        path = plot_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def as_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


# --- Hydra callbacks --------------------------------------------------------------------------------------


class SweepSummary(Callback):
    """Writes the sweep summary when a multirun ends (see the module docstring)."""

    def __init__(self, *, metric: str | None = None, mode: str | None = None) -> None:
        if mode not in (None, "max", "min"):
            raise ValueError(f"SweepSummary mode={mode!r} must be 'max', 'min' or null (from the sweeper/metric)")
        self.metric, self.mode = metric, mode

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """In a multirun, after every job: a job that raised leaves ``FAILED_JOB`` (its overrides and error) in
        its dir, and the summary is brought up to date, so the jobs that finished are summarised even when the
        multirun then stops on the failure (Hydra raises it once the jobs ran, and never ends the multirun)."""
        hydra = config.get("hydra")
        if hydra is None or hydra.get("mode") != RunMode.MULTIRUN:
            return
        if job_return.status == JobStatus.FAILED:
            error = "unknown error"
            try:
                _ = job_return.return_value  # raises the job's exception (Hydra's way to hand it out)
            except Exception as e:  # any job error is recorded, never raised here
                error = f"{type(e).__name__}: {e}"
            run_dir = Path(hydra.runtime.output_dir)
            record = {"overrides": list(hydra.overrides.task), "run_dir": str(run_dir), "error": error}
            with atomic_open(run_dir / FAILED_JOB) as f:
                f.write(json.dumps(record, indent=1))
        self.on_multirun_end(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        metric = self.metric or config.get("optimized_metric")
        sweeper = config.hydra.sweeper
        mode = self.mode or metric_mode(metric or "", sweeper.get("direction"))
        study = None
        if sweeper.get("storage") and sweeper.get("study_name"):  # an Optuna sweep
            from sweeps.trial import load_study

            study = load_study(str(sweeper.storage), str(sweeper.study_name))
        write_summary(Path(config.hydra.sweep.dir), metric=metric, mode=mode, study=study)


class EnforceTags(Callback):
    """``extras.enforce_tags``: a multirun with empty ``tags`` stops before its first job.

    A Hydra callback's exceptions are only warned about, so this exits (SystemExit) with the message."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        extras = config.get("extras") or {}
        if extras.get("enforce_tags") and not config.get("tags"):
            raise SystemExit(
                "error: a multirun needs tags, to tell its runs apart later in results.json and the summary: "
                "add e.g. tags='[lr_sweep,lenet]' (or extras.enforce_tags=false)"
            )
