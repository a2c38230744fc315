"""Outputs never written over (issue 25): eval.py into a training run's dir, export.py over a checkpoint, two
extractions into one dir, a refused run's leftovers. Each on a real training run's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runs.compose import compose_config
from runs.lock import RunDirHoldsARun, RunDirInUse
from tests.conftest import SMALL
from tests.test_reliability_runs import hold_lock
from trainer.run import evaluate, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run dir of a real (small) LeNet run on digits."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(compose_config(*SMALL, "test=false", output_dir=run_dir))
    return run_dir


def files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_eval_into_a_training_runs_dir_is_refused_and_changes_nothing(make_cfg, trained):
    before = files(trained)
    assert "results.json" in before and "epochs" in json.loads(before["results.json"])
    cfg = make_cfg(f"ckpt_path={trained / 'checkpoints' / 'best.ckpt'}", config_name="eval", output_dir=trained)
    with pytest.raises(RunDirHoldsARun, match=rf"run dir {trained} holds another run \(results\.json, checkpoints\)"):
        evaluate(cfg)
    assert files(trained) == before


def test_eval_into_a_dir_a_training_run_is_using_fails_at_once(make_cfg, trained, tmp_path):
    run_dir = tmp_path / "busy"
    holder = hold_lock(run_dir)
    try:
        cfg = make_cfg(f"ckpt_path={trained / 'checkpoints' / 'best.ckpt'}", config_name="eval", output_dir=run_dir)
        with pytest.raises(RunDirInUse, match=f"process {holder.pid}"):
            evaluate(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert not (run_dir / "results.json").exists()


def test_eval_in_a_dir_of_its_own_still_writes_its_results(make_cfg, trained, tmp_path):
    cfg = make_cfg(f"ckpt_path={trained / 'checkpoints' / 'best.ckpt'}", config_name="eval")
    results = evaluate(cfg)
    assert "test/acc" in results and (tmp_path / "run" / "results.json").is_file()
