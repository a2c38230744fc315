"""Distributed runs: one run dir written by rank 0, exact (unpadded) evaluation, torchrun multi-node.

The end-to-end runs start real processes (gloo on CPU): ``trainer=ddp_sim`` (2 processes started by
Lightning) and two torchrun "nodes" on localhost.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict, read_write

from data.sampler import UnpaddedDistributedSampler, shard_sampler
from runs import resolvers
from runs.distributed import hydra_quote, job_command
from tests.conftest import ROOT, run_script

TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "~callbacks.progress_bar",
    "logger=csv",
    "data.batch_size=32",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_dirs(log_dir: Path, task: str = "train") -> list[Path]:
    return sorted(p for p in (log_dir / task).iterdir() if p.is_dir())


def assert_written_by_rank_zero_only(run_dir: Path) -> None:
    files = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert {
        "results.json",
        "metrics.csv",
        "train.log",
        ".hydra/config.yaml",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    } <= files
    # No per-process log files or stray config copies from the other ranks.
    assert [f for f in files if f.endswith(".log")] == ["train.log"]


# --- samplers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,world", [(359, 2), (10, 3), (2, 4), (0, 2)])
def test_eval_shards_cover_every_sample_exactly_once(n, world):
    data = list(range(n))
    shards = [list(UnpaddedDistributedSampler(data, num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == data
    assert [len(s) for s in shards] == [
        len(UnpaddedDistributedSampler(data, num_replicas=world, rank=r)) for r in range(world)
    ]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_train_shards_are_equal_disjoint_and_reshuffled_each_epoch():
    data = list(range(101))
    samplers = [shard_sampler(data, train=True, num_replicas=2, rank=r, seed=3) for r in range(2)]
    epochs = []
    for epoch in range(2):
        for s in samplers:
            s.set_epoch(epoch)
        a, b = (list(s) for s in samplers)
        assert len(a) == len(b) == 50 and not set(a) & set(b)
        epochs.append(a)
    assert epochs[0] != epochs[1]


def test_datamodule_shards_only_under_ddp(make_cfg):
    from trainer.run import build_datamodule

    cfg = make_cfg()
    dm = build_datamodule(cfg.data, cfg.augment)
    dm.setup("fit")
    assert dm.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"

    class FakeTrainer:
        world_size, global_rank = 2, 1

    dm.trainer = FakeTrainer()
    val, train = dm.val_dataloader(), dm.train_dataloader()
    assert isinstance(val.sampler, UnpaddedDistributedSampler)
    assert list(val.sampler) == list(range(1, len(dm.val_set), 2))
    assert len(train.sampler) == len(dm.train_set) // 2 and train.drop_last


# --- run dir agreement ------------------------------------------------------------------------------------


def test_extra_processes_rerun_the_job_not_the_sweep(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg("optimizer.lr=0.01", output_dir=tmp_path / "multirun" / "3")
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    with read_write(hc), open_dict(hc):  # what Hydra records for job 3 of `-m optimizer.lr=0.1,0.01`
        hc.overrides.task = ["optimizer.lr=0.01"]
    monkeypatch.setattr(sys, "argv", [str(ROOT / "train.py"), "-m", "optimizer.lr=0.1,0.01"])
    # As when train.py is the script: under `python -m pytest` __main__ is pytest's module, with a spec.
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)
    command = job_command()
    assert command[:2] == [sys.executable, str(ROOT / "train.py")]
    assert "-m" not in command and "optimizer.lr=0.1,0.01" not in command
    assert command[-2:] == [
        "optimizer.lr=0.01",
        f"hydra.run.dir={hydra_quote(str(tmp_path / 'multirun' / '3'))}",
    ]
    assert "--config-name=train" in command
    assert cfg.optimizer.lr == 0.01


def test_hydra_quote_survives_the_override_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = "/tmp/a b/it's=1,2"
    parsed = OverridesParser.create().parse_override(f"hydra.run.dir={hydra_quote(path)}")
    assert parsed.value() == path


def test_only_rank_zero_writes_hydra_files(monkeypatch):
    for name in resolvers.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert resolvers.if_rank_zero(".hydra", None) == ".hydra"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolvers.if_rank_zero(".hydra", None) is None


def test_torchrun_ranks_share_rank_zero_stamp(monkeypatch):
    """Rank 0 serves the store (no torchrun agent here), rank 1 reads its value."""
    port = free_port()
    monkeypatch.setattr(resolvers, "_shared", {})
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("RANK", "0")
    assert resolvers.shared_with_rank_zero("test/stamp", "2030-01-01_00-00-00") == "2030-01-01_00-00-00"
    monkeypatch.setattr(resolvers, "_shared", {})
    monkeypatch.setenv("RANK", "1")
    assert resolvers.shared_with_rank_zero("test/stamp", "another clock") == "2030-01-01_00-00-00"


def test_srun_tasks_share_the_step_stamp(monkeypatch):
    for name in ("VISFEAT_RUN_STAMP", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert resolvers.run_stamp() == "slurm123.0"
    monkeypatch.setenv("VISFEAT_RUN_STAMP", "mine")
    assert resolvers.run_stamp() == "mine"


# --- end to end -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_sim_test_metrics_equal_single_process_eval(tmp_path, make_cfg):
    """2 processes; 359 test images split 180/179 without padding: the same numbers as one process."""
    run_script("train.py", "trainer=ddp_sim", *TINY, f"paths.log_dir={tmp_path}")
    (run_dir,) = run_dirs(tmp_path)
    assert_written_by_rank_zero_only(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run_dir"] == str(run_dir)

    from trainer.run import evaluate

    single = evaluate(
        make_cfg(
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            config_name="eval",
            output_dir=tmp_path / "eval",
        )
    )
    assert results["test/acc"] == single["test/acc"]
    assert "test/acc_top5" not in results and "test/acc_top5" not in single  # 10 classes: top-1 only
    assert results["test/loss"] == pytest.approx(single["test/loss"], rel=1e-5)


@pytest.mark.slow
def test_two_torchrun_nodes_on_localhost_write_one_run_dir(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    args = [
        "trainer=ddp_sim",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        *TINY,
        "trainer.limit_test_batches=2",
        f"paths.log_dir={tmp_path}",
    ]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                str(ROOT / "train.py"),
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, out in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, out[-4000:]
    (run_dir,) = run_dirs(tmp_path)
    assert_written_by_rank_zero_only(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.0 <= results["test/acc"] <= 1.0 and results["epochs"] == 1
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


@pytest.mark.slow
def test_ddp_jobs_of_a_multirun_each_start_their_own_processes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_script(
        "train.py",
        "-m",
        "trainer=ddp_sim",
        "optimizer.lr=0.01,0.001",
        *TINY,
        "trainer.limit_test_batches=1",
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no run dir of an extra process elsewhere
    for job, lr in (("0", 0.01), ("1", 0.001)):
        assert_written_by_rank_zero_only(sweep_dir / job)
        config = (sweep_dir / job / ".hydra" / "config.yaml").read_text()
        assert f"lr: {lr}" in config
