"""Run dirs and resumes (issue 20, items 2 and 3), each fault for real: two processes claiming a run dir in the
same second, a second process in a dir in use, a killed lock holder, a resume with other settings, SIGUSR1
under a (fake) SLURM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from runs import resolvers
from runs.compose import compose_config
from runs.lock import RunDirInUse, RunDirLock
from tests.conftest import ROOT, SMALL, run_script
from trainer.resume import ResumeError, resumed_config
from trainer.run import train

HOLD_LOCK = (
    "import sys, time; sys.path.insert(0, {root!r}); from runs.lock import RunDirLock; "
    "RunDirLock({dir!r}).acquire(); print('locked', flush=True); time.sleep(120)"
)


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that holds ``run_dir``'s lock (as a running train.py does) until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK.format(root=str(ROOT), dir=str(run_dir))], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


# --- unique run dirs ---------------------------------------------------------------------------------------


CLAIM = (
    "import sys; sys.path.insert(0, {root!r}); from runs.resolvers import claim_dir; print(claim_dir({parent!r}, '%Y'))"
)


def test_two_processes_claiming_a_run_dir_in_the_same_second_get_two(tmp_path):
    """'%Y': the same stamp for both, as two runs started in the same second have."""
    code = CLAIM.format(root=str(ROOT), parent=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    dirs = sorted(p.communicate()[0].strip() for p in procs)
    year = time.strftime("%Y")
    assert dirs == sorted(str(tmp_path / name) for name in (year, f"{year}_1", f"{year}_2"))
    assert all(Path(d).is_dir() for d in dirs)


def test_default_run_dir_is_claimed_once_per_process(tmp_path, monkeypatch):
    for name in ("VISFEAT_RUN_STAMP", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(resolvers, "_shared", {})
    first = resolvers.new_run_dir(str(tmp_path), "%Y")
    assert resolvers.new_run_dir(str(tmp_path), "%Y") == first  # Hydra resolves hydra.run.dir more than once
    monkeypatch.setattr(resolvers, "_shared", {})  # another process
    assert resolvers.new_run_dir(str(tmp_path), "%Y") == first + "_1"


def test_torchrun_ranks_share_the_dir_rank_zero_claimed(tmp_path, monkeypatch):
    from tests.test_ddp import free_port

    monkeypatch.setattr(resolvers, "_shared", {})
    monkeypatch.delenv("VISFEAT_RUN_STAMP", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("RANK", "0")
    claimed = resolvers.new_run_dir(str(tmp_path), "%Y")
    monkeypatch.setattr(resolvers, "_shared", {})
    monkeypatch.setenv("RANK", "1")
    assert resolvers.new_run_dir(str(tmp_path), "%Y") == claimed
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(claimed).name]  # rank 1 claimed nothing


def test_a_resume_writes_its_hydra_files_beside_the_original(tmp_path, monkeypatch):
    monkeypatch.setattr(resolvers, "_shared", {})
    assert resolvers.config_subdir(str(tmp_path)) == ".hydra"
    (tmp_path / ".hydra").mkdir()
    monkeypatch.setattr(resolvers, "_shared", {})
    assert resolvers.config_subdir(str(tmp_path)) == ".hydra-resume-1"
    (tmp_path / ".hydra-resume-1").mkdir()
    assert resolvers.config_subdir(str(tmp_path)) == ".hydra-resume-1"  # the same answer within one run
    monkeypatch.setattr(resolvers, "_shared", {})
    assert resolvers.config_subdir(str(tmp_path)) == ".hydra-resume-2"


# --- the run dir lock ----------------------------------------------------------------------------------------


def test_a_run_dir_in_use_is_refused_naming_the_process_and_taken_over_once_it_died(tmp_path, caplog):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunDirInUse) as excinfo:
            RunDirLock(tmp_path).acquire()
        message = str(excinfo.value)
        assert f"in use by process {holder.pid} on host {socket.gethostname()}" in message
        assert "hydra.run.dir=<new dir>" in message
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the lock file stays, its flock goes with the process
        holder.wait()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid
    lock = RunDirLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert f"process {holder.pid} on" in caplog.text and "holds it no longer" in caplog.text
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_train_in_a_dir_in_use_fails_at_once(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        start = time.perf_counter()
        with pytest.raises(RunDirInUse, match=f"process {holder.pid}"):
            train(make_cfg(output_dir=run_dir))
        assert time.perf_counter() - start < 5
    finally:
        holder.kill()
        holder.wait()
    assert not (run_dir / "checkpoints").exists()


def test_a_new_run_in_a_dir_holding_a_run_is_refused(make_cfg, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ResumeError, match=r"already holds a run .*Continue it with resume=auto"):
        train(make_cfg())


@pytest.mark.slow
def test_two_train_processes_given_one_run_dir(tmp_path):
    """Two real train.py processes: one runs, the other fails at once naming it."""
    run_dir = tmp_path / "shared"
    args = [*SMALL, "trainer.max_epochs=3", "trainer.limit_train_batches=20", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while not (run_dir / ".lock").exists() and time.time() < deadline:
        time.sleep(0.2)
    second = run_script("train.py", *args, check=False)
    assert first.wait(timeout=600) == 0, first.stdout.read()[-3000:]
    assert second.returncode != 0
    assert f"is in use by process {first.pid}" in second.stdout + second.stderr


# --- resuming with the run's own config ------------------------------------------------------------------------


def saved_run(tmp_path: Path, *overrides: str) -> Path:
    """A run dir whose last.ckpt holds the config of a run with ``overrides`` (no weights needed here)."""
    run_dir = tmp_path / "run"
    cfg = compose_config(*SMALL, *overrides, output_dir=run_dir)
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"config": config}}, run_dir / "checkpoints" / "last.ckpt")
    return run_dir


def test_resume_auto_restores_the_saved_config(make_cfg, tmp_path):
    run_dir = saved_run(tmp_path, "optimizer.lr=0.0123", "data.batch_size=8")
    cfg = resumed_config(make_cfg("resume=auto", output_dir=run_dir))
    assert cfg.optimizer.lr == 0.0123 and cfg.data.batch_size == 8
    assert cfg.ckpt_path == str(run_dir / "checkpoints" / "last.ckpt")


def test_resume_moves_saved_paths_to_the_run_dirs_new_place(make_cfg, tmp_path):
    old = saved_run(tmp_path)
    new = tmp_path / "moved"
    old.rename(new)
    cfg = resumed_config(make_cfg("resume=auto", output_dir=new))
    assert cfg.callbacks.model_checkpoint.dirpath == str(new / "checkpoints")
    assert cfg.trainer.default_root_dir == str(new)


def test_resume_auto_without_a_checkpoint_starts_the_run(make_cfg, tmp_path):
    cfg = make_cfg("resume=auto", "optimizer.lr=0.5")
    assert resumed_config(cfg) is cfg


def test_resume_refuses_a_conflicting_change_unless_allowed(make_cfg, tmp_path):
    run_dir = saved_run(tmp_path, "optimizer.lr=0.0123")
    with pytest.raises(
        ResumeError, match=r"optimizer\.lr: the run has 0\.0123, this command gives 0\.5.*allow_resume_changes=true"
    ):
        resumed_config(make_cfg("resume=auto", "optimizer.lr=0.5", output_dir=run_dir))
    cfg = resumed_config(make_cfg("resume=auto", "optimizer.lr=0.5", "allow_resume_changes=true", output_dir=run_dir))
    assert cfg.optimizer.lr == 0.5
    # Repeating the run's own setting is no conflict.
    assert resumed_config(make_cfg("resume=auto", "optimizer.lr=0.0123", output_dir=run_dir)).optimizer.lr == 0.0123


def test_resuming_a_lenet_checkpoint_with_another_model_names_both(make_cfg, tmp_path):
    run_dir = saved_run(tmp_path, "model=lenet")
    both = (
        r"model\.backbone\._target_: the run has 'models\.backbones\.LeNet', "
        r"this command gives 'models\.backbones\.ResNet'"
    )
    with pytest.raises(ResumeError, match=both):
        resumed_config(make_cfg("resume=auto", "model=resnet", output_dir=run_dir))
    with pytest.raises(ResumeError, match=r"holds a LeNet net, but this run's model config builds a ResNet"):
        resumed_config(make_cfg("resume=auto", "model=resnet", "allow_resume_changes=true", output_dir=run_dir))


def fake_scontrol(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    script.chmod(0o755)
    return tmp_path / "scontrol.log"


def test_sigusr1_under_slurm_saves_then_requeues_the_job(make_cfg, tmp_path, monkeypatch):
    log = fake_scontrol(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    fault = [
        "+callbacks.fault._target_=tests.faults.SignalAt",
        "+callbacks.fault.step=1",
        "+callbacks.fault.signum=SIGUSR1",
    ]
    with pytest.raises(SystemExit) as exit_info:
        train(make_cfg(*fault, "test=false"))
    assert exit_info.value.code == 128 + signal.SIGUSR1
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert log.read_text().split() == ["requeue", "4242"]


@pytest.mark.slow
def test_the_printed_resume_command_continues_with_the_runs_settings(tmp_path):
    """SIGTERM mid-run, then the command the run printed, run as printed: the run's own max_epochs, and its
    original .hydra/ kept beside the resume's own."""
    run_dir = tmp_path / "run"
    fault = ["+callbacks.fault._target_=tests.faults.SignalAt", "+callbacks.fault.step=2"]
    first = run_script("train.py", *SMALL, "trainer.max_epochs=3", *fault, f"hydra.run.dir={run_dir}", check=False)
    assert first.returncode == 143, first.stdout[-2000:] + first.stderr[-2000:]
    printed = (first.stdout + first.stderr).split("Resume with: python train.py ")[1].splitlines()[0].split()
    assert printed == ["resume=auto", f"hydra.run.dir={run_dir}"]
    run_script("train.py", *printed, *fault)  # the test-only callback named again to vouch for it
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 3
    original = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert "trainer.max_epochs=3" in original
    assert yaml.safe_load((run_dir / ".hydra-resume-1" / "overrides.yaml").read_text())[0] == "resume=auto"
