"""Multirun sweeps: the summary a sweep leaves in its dir, Optuna studies that continue when run again."""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from hydra._internal.hydra import Hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from runs.resolvers import metric_mode
from sweeps.summary import write_summary
from sweeps.trial import load_study, load_trials, open_storage
from tests.conftest import ROOT, run_script
from trainer.run import train

TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "~callbacks.progress_bar",
    "data.batch_size=32",
]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fake_job(sweep_dir: Path, job: str, overrides: list[str], **metrics: float) -> None:
    run_dir = sweep_dir / job
    run_dir.mkdir(parents=True)
    results = {
        "overrides": overrides,
        "run_dir": str(run_dir),
        "seed": 0,
        "git_sha": "x",
        **{k.replace("__", "/"): v for k, v in metrics.items()},
    }
    (run_dir / "results.json").write_text(json.dumps(results))


# --- summary ----------------------------------------------------------------------------------------------


def test_summary_names_best_job_and_aggregates_over_seeds(tmp_path):
    accs = {("0.1", "0"): 0.50, ("0.1", "1"): 0.70, ("0.01", "0"): 0.80, ("0.01", "1"): 0.90}
    for i, ((lr, seed), acc) in enumerate(accs.items()):
        fake_job(
            tmp_path,
            str(i),
            [f"optimizer.lr={lr}", f"seed={seed}", "model=lenet"],
            val__acc_best=acc,
            test__acc=acc - 0.1,
            train_seconds=10.0 + i,
        )
    (tmp_path / "10").mkdir()  # a job that died before writing results.json is left out

    best = write_summary(tmp_path, metric="val/acc_best", mode="max")

    assert best["job"] == "3"
    rows = read_csv(tmp_path / "summary.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert [(r["optimizer.lr"], r["seed"]) for r in rows] == list(accs)
    assert "model" not in rows[0]  # the same in every job: not a swept parameter
    assert [float(r["val/acc_best"]) for r in rows] == list(accs.values())
    assert rows[2]["n_seeds"] == "2"
    assert float(rows[2]["val/acc_best/mean"]) == pytest.approx(0.85)
    assert float(rows[2]["val/acc_best/std"]) == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert float(rows[0]["test/acc/mean"]) == pytest.approx(0.5)
    assert rows[0]["overrides"] == "optimizer.lr=0.1 seed=0 model=lenet"
    markdown = (tmp_path / "summary.md").read_text()
    assert "Best job: **3** with val/acc_best = 0.9 (maximised)" in markdown
    assert "| 0.01 | 0.85 ± 0.07071 (2) | 0.75 ± 0.07071 (2) | 12.5 ± 0.7071 (2) |" in markdown
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "val_acc_best_vs_optimizer.lr.png",
        "val_acc_best_vs_seed.png",
    }


def test_summary_of_one_seed_per_configuration_shows_no_spread_table_or_seed_plot(tmp_path):
    # An Optuna-like sweep: every job its own configuration, each run once (here also with its own seed).
    for i, (lr, acc) in enumerate([("0.1", 0.5), ("0.01", 0.8), ("0.001", 0.7)]):
        fake_job(tmp_path, str(i), [f"optimizer.lr={lr}", f"seed={i}"], val__acc_best=acc)

    write_summary(tmp_path, metric="val/acc_best", mode="max")

    markdown = (tmp_path / "summary.md").read_text()
    assert "| 1 | 0.01 | 1 | 0.8 |" in markdown  # the job table shows what varies
    assert "Per configuration over seeds" not in markdown and "±" not in markdown
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"val_acc_best_vs_optimizer.lr.png"}


def test_summary_minimises_when_told(tmp_path):
    for i, loss in enumerate((0.3, 0.1, 0.2)):
        fake_job(tmp_path, str(i), [f"optimizer.lr={i}"], val__loss=loss)
    assert write_summary(tmp_path, metric="val/loss", mode="min")["job"] == "1"


def test_summary_of_an_optuna_sweep_marks_pruned_and_failed_trials(tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db", direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    for number, (acc, state) in enumerate([(0.8, "COMPLETE"), (0.9, "PRUNED"), (0.85, "COMPLETE"), (None, "FAIL")]):
        trial = study.ask({"optimizer.lr": lr})
        for epoch in range(3 if state == "PRUNED" else 4):
            trial.report(0.5 + epoch * 0.1, step=epoch)
        if state == "PRUNED":
            trial.set_user_attr("pruned_epoch", 2)
            study.tell(trial, state=STATES.PRUNED)
        elif state == "FAIL":
            trial.set_user_attr("fail_reason", "RuntimeError: CUDA out of memory")
            study.tell(trial, state=STATES.FAIL)
        else:
            study.tell(trial, acc)
        if acc is not None:  # a failed job wrote no results.json
            overrides = [f"optimizer.lr={trial.params['optimizer.lr']}", f"++optuna.trial={number}", "++optuna.study=s"]
            fake_job(tmp_path, f"t_{number}", overrides, val__acc_best=acc)

    best = write_summary(tmp_path, metric="val/acc_best", mode="max", study=study)

    assert best["job"] == "t_2"  # the pruned trial's 0.9 does not count
    rows = read_csv(tmp_path / "summary.csv")
    assert [(r["job"], r["trial"], r["state"]) for r in rows] == [
        ("t_0", "0", "COMPLETE"),
        ("t_1", "1", "PRUNED after epoch 2"),
        ("t_2", "2", "COMPLETE"),
    ]
    assert "optuna.trial" not in rows[0] and "optuna.study" not in rows[0]  # bookkeeping, not parameters
    markdown = (tmp_path / "summary.md").read_text()
    assert "## Optuna study `s`: 4 trials" in markdown and "2 complete, 1 pruned, 1 fail." in markdown
    assert "| 1 | PRUNED | 0.7 |" in markdown and "pruned after epoch 2 |" in markdown  # value: the last reported
    assert "| 3 | FAIL |  |" in markdown and "RuntimeError: CUDA out of memory |" in markdown
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "val_acc_best_vs_optimizer.lr.png",
        "optuna_history.png",
        "optuna_importances.png",
        "optuna_parallel_coordinate.png",
        "optuna_intermediate_values.png",
    }


@pytest.mark.parametrize(
    "metric,direction,mode",
    [
        ("val/acc_best", None, "max"),
        ("val/loss", None, "min"),
        ("val/acc", "minimize", "min"),
        ("val/loss", "maximize", "max"),
    ],
)
def test_metric_mode(metric, direction, mode):
    assert metric_mode(metric, direction) == mode


# --- Optuna ---------------------------------------------------------------------------------------------

STATES = optuna.trial.TrialState


def multirun(tmp_path: Path, task, *overrides: str):
    """Hydra's real multirun with the real config and sweeper (basic launcher, in this process), ``task`` as
    the task function instead of train()."""
    GlobalHydra.instance().clear()
    hydra_ = Hydra.create_main_hydra_file_or_module(
        calling_file=str(ROOT / "train.py"), calling_module=None, config_path="conf", job_name="train"
    )
    try:
        return hydra_.multirun(
            config_name="train",
            task_function=task,
            overrides=[f"paths.log_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/sweep", *overrides],
            with_log_configuration=False,
        )
    finally:
        GlobalHydra.instance().clear()


def quadratic(cfg) -> float:
    """A trivial objective with its optimum at lr = 10^-2.5, that checks what each job is told."""
    assert cfg.optuna.study == "digits" and cfg.optuna.storage.endswith("/sweep/optuna.db")
    assert HydraConfig.get().job.num == cfg.optuna.trial  # job number = trial number
    return -((math.log10(cfg.optimizer.lr) + 2.5) ** 2)


def load(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path}/sweep/optuna.db")


def test_optuna_sweeper_on_a_trivial_objective_counts_n_trials_over_reruns(tmp_path):
    multirun(tmp_path, quadratic, "hparams_search=digits_optuna", "hydra.sweeper.n_trials=1")
    first = load(tmp_path).trials
    assert [t.state for t in first] == [STATES.COMPLETE]
    assert first[0].value == pytest.approx(-((math.log10(first[0].params["optimizer.lr"]) + 2.5) ** 2))
    space = {"optimizer.lr", "optimizer.weight_decay", "data.batch_size", "module.label_smoothing"}
    assert set(first[0].params) == space
    assert 1e-4 <= first[0].params["optimizer.lr"] <= 3e-2 and first[0].params["data.batch_size"] in (32, 64, 128)
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.best_trial == 0 and results.best_value == first[0].value and results.complete == 1

    # A sweep killed during trial 1 left it RUNNING; the rerun fails it, runs its parameters again first, then
    # one new trial: 3 finished trials in all (n_trials is the study's total).
    left = load(tmp_path).ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 3e-2, log=True)})
    multirun(tmp_path, quadratic, "hparams_search=digits_optuna", "hydra.sweeper.n_trials=3")
    trials = load(tmp_path).trials
    assert (trials[0].number, trials[0].params, trials[0].value) == (0, first[0].params, first[0].value)
    assert [t.state for t in trials] == [STATES.COMPLETE, STATES.FAIL, STATES.COMPLETE, STATES.COMPLETE]
    assert trials[2].params["optimizer.lr"] == left.params["optimizer.lr"] and trials[2].user_attrs["retry_of"] == 1
    # The sampler's seed moved on: the rerun does not replay the first run's random start.
    assert trials[3].params != trials[0].params


def test_failed_trials_are_recorded_and_retried(tmp_path):
    calls = []

    def flaky(cfg) -> float:
        calls.append(cfg.optuna.trial)
        if len(calls) == 1:
            raise RuntimeError("out of memory (a flaky node)")
        return quadratic(cfg)

    multirun(tmp_path, flaky, "hparams_search=digits_optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.retries=1")
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [STATES.FAIL, STATES.COMPLETE]
    assert trials[0].user_attrs["fail_reason"] == "RuntimeError: out of memory (a flaky node)"
    assert trials[1].params == trials[0].params and trials[1].user_attrs["retry_of"] == 0
    assert calls == [0, 1]

    def broken(cfg) -> float:
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):  # no retries, max_failure_rate 0: the sweep stops
        multirun(tmp_path / "b", broken, "hparams_search=digits_optuna", "hydra.sweeper.n_trials=3")
    assert [t.state for t in load(tmp_path / "b").trials] == [STATES.FAIL]


def test_a_hopeless_trial_is_pruned_early(make_cfg, tmp_path):
    """Two earlier trials reached val/acc 0.9 from the first epoch; a run that cannot learn (lr 1e-9) is
    stopped by the median pruner after its first epoch instead of running all four."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for _ in range(2):
        good = optuna.trial.create_trial(
            value=0.95, intermediate_values={0: 0.9, 1: 0.93, 2: 0.94, 3: 0.95}, state=STATES.COMPLETE
        )
        study.add_trial(good)
    trial = study.ask()
    cfg = make_cfg(
        "hparams_search=digits_optuna",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "optimizer.lr=1e-9",
        "trainer.max_epochs=4",
        "test=false",
        f"++optuna.trial={trial.number}",
        "++optuna.study=s",
        f"++optuna.storage='{storage}'",
    )
    train(cfg)
    pruned = load_trials(storage, "s")[trial.number]
    assert pruned.user_attrs["pruned_epoch"] == 0 and list(pruned.intermediate_values) == [0]
    assert pruned.intermediate_values[0] < 0.5  # near chance: hopeless
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["epochs"] == 1  # stopped after the first of four epochs


def test_journal_storage_file(tmp_path):
    path = str(tmp_path / "sweep" / "optuna.log")
    study = optuna.create_study(study_name="j", storage=open_storage(path), direction="maximize")
    study.tell(study.ask(), 0.5)
    assert [t.value for t in load_trials(path, "j")] == [0.5]
    assert load_study(path, "other") is None and load_study(f"sqlite:///{tmp_path}/none.db", "j") is None
    with pytest.raises(ValueError, match="ending in .log"):
        open_storage(str(tmp_path / "optuna.db"))


@pytest.mark.parametrize("search,pruner", [("digits_optuna", "MedianPruner"), ("cifar10_optuna", "HyperbandPruner")])
def test_hparams_search_configs_compose(make_cfg, search, pruner):
    cfg = make_cfg(f"hparams_search={search}", small=False)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.visfeat_optuna_sweeper.sweeper.VisfeatOptunaSweeper"
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "val/acc_best"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.pruner._target_ == f"optuna.pruners.{pruner}"
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"
    assert "now:" not in OmegaConf.to_container(cfg.hydra.sweep)["dir"]  # a fixed dir, found again on a rerun
    assert "sweep_summary" in cfg.hydra.callbacks
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"{search} searches {key}, which the config lacks"


def test_pruners_by_config(make_cfg):
    cfg = make_cfg("hparams_search=digits_optuna", "hydra/sweeper/pruner=hyperband", small=False)
    pruner = instantiate(cfg.hydra.sweeper.pruner)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    cfg = make_cfg("hparams_search=digits_optuna", "hydra/sweeper/pruner=none", small=False)
    assert isinstance(instantiate(cfg.hydra.sweeper.pruner), optuna.pruners.NopPruner)


# --- end to end -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_grid_on_digits_writes_four_runs_and_a_summary(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_script(
        "train.py",
        "-m",
        "optimizer.lr=0.01,0.001",
        "module.label_smoothing=0.0,0.1",
        *TINY,
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    results = {
        d.name: json.loads((d / "results.json").read_text())
        for d in sweep_dir.iterdir()
        if (d / "results.json").is_file()
    }
    assert sorted(results) == ["0", "1", "2", "3"]
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["optimizer.lr"], r["module.label_smoothing"]) for r in rows] == [
        ("0.01", "0.0"),
        ("0.01", "0.1"),
        ("0.001", "0.0"),
        ("0.001", "0.1"),
    ]
    for row in rows:
        assert float(row["val/acc_best"]) == results[row["job"]]["val/acc_best"]
        assert float(row["test/acc"]) == results[row["job"]]["test/acc"]
        assert row["run_dir"] == str(sweep_dir / row["job"])
    best = max(rows, key=lambda r: float(r["val/acc_best"]))
    assert f"Best job: **{best['job']}**" in (sweep_dir / "summary.md").read_text()
    assert {p.name for p in (sweep_dir / "plots").iterdir()} == {
        "val_acc_best_vs_optimizer.lr.png",
        "val_acc_best_vs_module.label_smoothing.png",
    }


@pytest.mark.slow
def test_optuna_sweep_continues_the_same_study(tmp_path):
    def sweep(n_trials: int) -> None:
        run_script(
            "train.py",
            "hparams_search=digits_optuna",
            f"hydra.sweeper.n_trials={n_trials}",
            *TINY,
            f"paths.log_dir={tmp_path}",
        )

    sweep_dir = tmp_path / "train" / "optuna_digits"
    storage = f"sqlite:///{sweep_dir}/optuna.db"
    sweep(2)
    first = [(t.number, t.params, t.value) for t in optuna.load_study(study_name="digits", storage=storage).trials]
    assert len(first) == 2 and len(read_csv(sweep_dir / "summary.csv")) == 2

    sweep(3)
    trials = optuna.load_study(study_name="digits", storage=storage).trials
    assert [(t.number, t.params, t.value) for t in trials[:2]] == first
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert trials[2].params != trials[0].params
    rows = read_csv(sweep_dir / "summary.csv")
    assert len(rows) == 3
    assert sorted(float(r["val/acc_best"]) for r in rows) == sorted(t.value for t in trials)


def wait_for(condition, *, timeout: float, what: str, log: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"gave up waiting for {what} (exit {proc.poll()}):\n{log.read_text()[-5000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_optuna_sweep_killed_mid_trial_resumes_and_finishes_the_total(tmp_path):
    args = [
        "hparams_search=digits_optuna",
        "hydra.sweeper.n_trials=3",
        *TINY,
        "trainer.max_epochs=3",
        f"paths.log_dir={tmp_path}",
    ]
    storage = f"sqlite:///{tmp_path}/train/optuna_digits/optuna.db"

    def trial_1_is_half_done() -> bool:
        # Read-only SQL: opening an Optuna storage here could race the sweeper creating its tables.
        try:
            with closing(sqlite3.connect(f"file:{storage.removeprefix('sqlite:///')}?mode=ro", uri=True)) as db:
                states = db.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
                reported = db.execute(
                    "SELECT COUNT(*) FROM trial_intermediate_values v JOIN trials t ON v.trial_id = t.trial_id "
                    "WHERE t.number = 1"
                ).fetchone()[0]
        except sqlite3.OperationalError:  # no file or no tables yet
            return False
        return states == [(0, "COMPLETE"), (1, "RUNNING")] and reported >= 1

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        wait_for(trial_1_is_half_done, timeout=600, what="trial 1 to report its first epoch", log=log, proc=proc)
    finally:
        proc.kill()  # SIGKILL: no handler runs, the trial is left RUNNING in the study
        proc.wait()
    assert [t.state for t in load_trials(storage, "digits")] == [STATES.COMPLETE, STATES.RUNNING]

    run_script("train.py", *args)

    trials = load_trials(storage, "digits")
    assert [t.state for t in trials] == [STATES.COMPLETE, STATES.FAIL, STATES.COMPLETE, STATES.COMPLETE]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["retry_of"] == 1
    rows = read_csv(tmp_path / "train" / "optuna_digits" / "summary.csv")
    assert sorted((r["trial"], r["state"]) for r in rows) == [("0", "COMPLETE"), ("2", "COMPLETE"), ("3", "COMPLETE")]


@pytest.mark.slow
def test_optuna_sweep_prunes_a_hopeless_trial(tmp_path):
    """Two trials that learn, then one that cannot (lr 1e-9): the median pruner stops it after its first
    epoch of four, and the summary says so."""
    sweep_dir = tmp_path / "train" / "optuna_digits"
    storage = f"sqlite:///{sweep_dir}/optuna.db"
    sweep_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="digits", storage=storage, direction="maximize")
    fixed = {"optimizer.weight_decay": 1e-4, "data.batch_size": 32, "module.label_smoothing": 0.0}
    for lr in (1e-2, 5e-3, 1e-9):
        study.enqueue_trial({"optimizer.lr": lr, **fixed})
    run_script(
        "train.py",
        "hparams_search=digits_optuna",
        "hydra.sweeper.n_trials=3",
        "optimizer.lr=tag(log, interval(1e-9, 3e-2))",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        *TINY,
        "trainer.max_epochs=4",
        "trainer.limit_train_batches=8",
        "trainer.limit_val_batches=2",
        f"paths.log_dir={tmp_path}",
    )
    trials = load_trials(storage, "digits")
    assert [t.state for t in trials] == [STATES.COMPLETE, STATES.COMPLETE, STATES.PRUNED]
    assert [len(t.intermediate_values) for t in trials] == [4, 4, 1]
    assert trials[2].user_attrs["pruned_epoch"] == 0
    rows = {r["trial"]: r for r in read_csv(sweep_dir / "summary.csv")}
    assert rows["2"]["state"] == "PRUNED after epoch 0" and rows["2"]["epochs"] == "1.0"
    assert "1 pruned" in (sweep_dir / "summary.md").read_text()
    assert (sweep_dir / "plots" / "optuna_intermediate_values.png").is_file()


@pytest.mark.parametrize(
    "launcher,target",
    [("slurm", "SlurmLauncher"), ("submitit_slurm", "SlurmLauncher"), ("joblib", "JoblibLauncher")],
)
def test_launchers_compose(make_cfg, launcher, target):
    cfg = make_cfg(f"hydra/launcher={launcher}", small=False)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.nodes == cfg.trainer.num_nodes and cfg.hydra.launcher.timeout_min == 240


def test_summary_of_a_sweep_with_a_failed_job_marks_it_with_its_error(tmp_path):
    fake_job(tmp_path, "0", ["optimizer.lr=0.1"], val__acc_best=0.5)
    fake_job(tmp_path, "2", ["optimizer.lr=0.001"], val__acc_best=0.7)
    (tmp_path / "1").mkdir()
    record = {"overrides": ["optimizer.lr=-1"], "run_dir": str(tmp_path / "1"), "error": "ValueError: Invalid lr"}
    (tmp_path / "1" / "failed.json").write_text(json.dumps(record))
    assert write_summary(tmp_path, metric="val/acc_best", mode="max")["job"] == "2"
    rows = read_csv(tmp_path / "summary.csv")
    assert [(r["job"], r["state"], r["error"]) for r in rows] == [
        ("0", "", ""),
        ("1", "FAILED", "ValueError: Invalid lr"),
        ("2", "", ""),
    ]
    markdown = (tmp_path / "summary.md").read_text()
    assert "1 of 3 jobs failed: 1" in markdown and "| 1 | optimizer.lr=-1 | ValueError: Invalid lr |" in markdown


@pytest.mark.slow
def test_a_multirun_with_a_failing_job_still_writes_the_summary_of_the_others(tmp_path):
    """A real grid of three jobs in which the middle one raises (a negative learning rate, refused by torch)."""
    sweep_dir = tmp_path / "sweep"
    proc = run_script(
        "train.py",
        "-m",
        "optimizer.lr=0.01,-1,0.001",
        *TINY,
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep_dir}",
        check=False,
    )
    assert proc.returncode != 0  # the multirun reports the failure
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["optimizer.lr"], r["state"]) for r in rows] == [("0.01", ""), ("-1", "FAILED"), ("0.001", "")]
    assert "-1" in rows[1]["error"] and rows[0]["val/acc_best"] and rows[2]["val/acc_best"]
    assert "1 of 3 jobs failed" in (sweep_dir / "summary.md").read_text()
