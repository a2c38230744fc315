"""Conventions of lightning-hydra-template users: extras (config tree, tags enforced for sweeps), the
optional git-ignored conf/local group, tags in results.json, and the debug presets."""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess

import pytest
from rich.console import Console

from runs.console import config_tree
from tests.conftest import ROOT
from tests.test_sweep import multirun
from trainer.run import build_datamodule, train


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_config_tree_shows_the_composed_config(make_cfg):
    cfg = make_cfg(small=False)
    console = Console(record=True, width=120, color_system=None)
    console.print(config_tree(cfg))
    text = console.export_text()
    branches = [line.split()[-1] for line in text.splitlines() if line.startswith(("├── ", "└── "))]
    assert branches[:4] == ["data", "model", "augment", "optimizer"] and "tags" in branches
    assert set(branches) == set(cfg)  # every top-level key, once
    assert "_target_: data.digits.DigitsDataModule" in text and "max_epochs: 20" in text  # resolved YAML


def test_tags_in_results_and_the_tree_printed_at_start(make_cfg, tmp_path, capsys):
    cfg = make_cfg("tags=[lr_sweep,lenet]", "extras.print_config=true", "test=false")
    train(cfg)
    out = capsys.readouterr().out
    assert out.startswith("config: ") and "tags=[lr_sweep,lenet]" in out.splitlines()[1]
    assert "lr_sweep" in (tmp_path / "run" / "config_tree.txt").read_text()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["tags"] == ["lr_sweep", "lenet"]


def test_a_multirun_without_tags_stops_before_its_first_job(tmp_path):
    jobs = []
    with pytest.raises(SystemExit, match="a multirun needs tags"):
        multirun(tmp_path, jobs.append, "optimizer.lr=0.1,0.01", "tags=[]")
    assert jobs == []
    multirun(tmp_path / "ok", jobs.append, "optimizer.lr=0.1,0.01", "tags=[lr]")
    assert [job.optimizer.lr for job in jobs] == [0.1, 0.01]
    multirun(tmp_path / "off", jobs.append, "optimizer.lr=0.1", "tags=[]", "extras.enforce_tags=false")
    assert len(jobs) == 3


def test_local_config_group_is_optional_and_git_ignored(make_cfg, tmp_path):
    assert make_cfg(small=False).paths.data_dir.endswith("datasets")  # no conf/local/default.yaml: fine
    local = tmp_path / "conf" / "local"
    local.mkdir(parents=True)
    (local / "default.yaml").write_text("# @package _global_\npaths:\n  data_dir: /mnt/fast/datasets\n")
    cfg = make_cfg(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", small=False)
    assert cfg.paths.data_dir == "/mnt/fast/datasets"
    example = make_cfg("local=example", small=False)
    assert example.paths.data_dir == "/data/datasets" and example.data.num_workers == 8

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    assert ignored("conf/local/default.yaml") and ignored("conf/local/other_machine.yaml")
    assert not ignored("conf/local/example.yaml")


def test_debug_overfit_memorises_three_batches(make_cfg, tmp_path):
    assert make_cfg("debug=overfit", small=False).trainer.max_epochs == 20
    cfg = make_cfg("debug=overfit", "trainer.max_epochs=10", "~callbacks.progress_bar", small=False)
    assert cfg.trainer.overfit_batches == 3
    train(cfg)
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) == 10
    # The same 3 batches every epoch: from chance (ln 10 = 2.3) to memorised; unseen val batches lag behind.
    assert losses[0] > 1.5 and losses[-1] < 0.3
    assert float(rows[-1]["val/loss"]) > 2 * losses[-1]


def test_debug_limit_runs_a_fraction_of_each_split(make_cfg, tmp_path):
    cfg = make_cfg("debug=limit", "trainer.max_epochs=2", "~callbacks.progress_bar", "data.num_workers=0", small=False)
    assert (cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches) == (0.1, 0.5)
    datamodule = build_datamodule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    per_epoch = math.floor(len(datamodule.train_dataloader()) * 0.1)
    train(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert per_epoch >= 1 and results["global_step"] == 2 * per_epoch


def test_debug_profiler_reports_hook_times(make_cfg, caplog):
    cfg = make_cfg("debug=profiler", "test=false")
    with caplog.at_level(logging.INFO):
        train(cfg)
    report = [r.getMessage() for r in caplog.records if "Profiler Report" in r.getMessage()]
    assert len(report) == 1 and "run_training_epoch" in report[0]
