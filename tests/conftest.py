"""Shared test helpers: compose the real config once, shrink it, run it in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from runs.compose import compose_config

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny tensors: one intra-op thread is faster than two spinning against each other (and than
    against a second process, as in the DDP tests) on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Keeps every test run small: one epoch of a few batches, no rich progress bar redraws, no workers.
SMALL = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.num_workers=0",
    "~callbacks.progress_bar",
]


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(*overrides, small=True)`` -> composed config running in tmp_path/run."""

    def _make(*overrides: str, small: bool = True, output_dir: Path | None = None, config_name: str = "train"):
        extra = SMALL if small and config_name == "train" else []
        return compose_config(*extra, *overrides, output_dir=output_dir or tmp_path / "run", config_name=config_name)

    yield _make
    GlobalHydra.instance().clear()


def run_script(
    script: str, *args: str, cwd: Path = ROOT, env: dict | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run an entry script (train.py, eval.py, ...) in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc
