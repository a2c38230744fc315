"""Multirun sweeps: the summary a sweep leaves in its dir, Optuna studies that continue when run again."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from runs.sweep import OptunaTotalTrials, finished_trials, metric_mode, write_summary
from tests.conftest import run_script

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


def test_summary_minimises_when_told(tmp_path):
    for i, loss in enumerate((0.3, 0.1, 0.2)):
        fake_job(tmp_path, str(i), [f"optimizer.lr={i}"], val__loss=loss)
    assert write_summary(tmp_path, metric="val/loss", mode="min")["job"] == "1"


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


# --- Optuna -----------------------------------------------------------------------------------------------


def test_optuna_n_trials_counts_the_finished_trials_of_the_study(tmp_path):
    storage = f"sqlite:///{tmp_path}/sweep/optuna.db"
    sweeper = {"storage": storage, "study_name": "s", "n_trials": 5, "sampler": {"seed": 7}}
    config = OmegaConf.create({"hydra": {"sweeper": sweeper}})
    OptunaTotalTrials().on_multirun_start(config)  # no study yet: all 5 to run, the folder for the db made
    assert config.hydra.sweeper.n_trials == 5 and config.hydra.sweeper.sampler.seed == 7

    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for value in (0.1, 0.2):
        study.tell(study.ask(), value)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    study.ask()  # interrupted: left RUNNING
    assert finished_trials(storage, "s") == 2

    config = OmegaConf.create({"hydra": {"sweeper": sweeper}})
    OptunaTotalTrials().on_multirun_start(config)
    assert config.hydra.sweeper.n_trials == 3
    assert config.hydra.sweeper.sampler.seed == 9  # not replaying the random start of the first run


@pytest.mark.parametrize("search", ["digits_optuna", "cifar10_optuna"])
def test_hparams_search_configs_compose(make_cfg, search):
    cfg = make_cfg(f"hparams_search={search}", small=False)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "val/acc_best"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"
    assert "now:" not in OmegaConf.to_container(cfg.hydra.sweep)["dir"]  # a fixed dir, found again on a rerun
    assert "optuna_total_trials" in cfg.hydra.callbacks and "sweep_summary" in cfg.hydra.callbacks
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"{search} searches {key}, which the config lacks"


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


@pytest.mark.parametrize(
    "launcher,target",
    [("slurm", "SlurmLauncher"), ("submitit_slurm", "SlurmLauncher"), ("joblib", "JoblibLauncher")],
)
def test_launchers_compose(make_cfg, launcher, target):
    cfg = make_cfg(f"hydra/launcher={launcher}", small=False)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.nodes == cfg.trainer.num_nodes and cfg.hydra.launcher.timeout_min == 240
