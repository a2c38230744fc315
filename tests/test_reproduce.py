"""Exact reproduction: the same seed twice gives identical metrics and weights; eval.py reproduces the test
metric train.py wrote; a run is re-run from its saved config with one command."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_script
from tests.test_faults import METRICS, assert_same_weights, results
from trainer.run import evaluate, train

SMALL_EXACT = ["trainer.deterministic=true", "seed=3"]


def test_same_seed_twice_gives_identical_metrics_and_weights_and_eval_reproduces_test(make_cfg, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(make_cfg(*SMALL_EXACT, output_dir=a))
    train(make_cfg(*SMALL_EXACT, output_dir=b))
    ra, rb = results(a), results(b)
    assert {k: ra[k] for k in METRICS} == {k: rb[k] for k in METRICS}
    assert_same_weights(a / "checkpoints" / "best.ckpt", b / "checkpoints" / "best.ckpt")
    assert_same_weights(a / "checkpoints" / "last.ckpt", b / "checkpoints" / "last.ckpt")
    for key in ("git_sha", "git_dirty", "versions", "seed", "overrides"):
        assert key in ra
    assert ra["seed"] == 3 and "seed=3" in ra["overrides"]

    # eval.py on the best checkpoint: the same test metrics (limit_test_batches as in training)
    out = evaluate(
        make_cfg(
            f"ckpt_path={a / 'checkpoints' / 'best.ckpt'}",
            "trainer.limit_test_batches=2",
            config_name="eval",
            output_dir=tmp_path / "eval",
        )
    )
    assert out["test/acc"] == ra["test/acc"]
    assert out["test/loss"] == pytest.approx(ra["test/loss"], rel=1e-6)


@pytest.mark.slow
def test_rerun_from_saved_config(tmp_path):
    small = [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "~callbacks.progress_bar",
        "trainer.deterministic=true",
    ]
    first, again = tmp_path / "first", tmp_path / "again"
    run_script("train.py", *small, f"hydra.run.dir={first}")
    run_script(
        "train.py",
        "--config-path",
        str(first / ".hydra"),
        "--config-name",
        "config",
        f"hydra.run.dir={again}",
    )
    a, b = (json.loads((d / "results.json").read_text()) for d in (first, again))
    assert {k: a[k] for k in METRICS if k in a} == {k: b[k] for k in METRICS if k in b}
    assert_same_weights(first / "checkpoints" / "last.ckpt", again / "checkpoints" / "last.ckpt")
