"""DDP that starts its extra processes as the same Hydra job, in the same run dir.

Lightning's DDP (``strategy=ddp``, start method ``popen``) starts the other processes of a node by running
the script again. Its own Hydra support re-runs ``sys.argv``: under ``-m`` that is the whole sweep (every
extra process would run every job), and the run dir it passes is ``hydra.run.dir``, not the dir of a sweep
job. ``DDPStrategy`` below re-runs *this job* instead: its own overrides (``hydra.overrides.task``) in run
mode, with ``hydra.run.dir`` set to this job's output dir. The extra processes find a non-zero
``LOCAL_RANK`` in their environment, so they write neither ``.hydra/`` nor a log file there
(``visfeat.if_rank_zero`` in conf/hydra/default.yaml); everything else is written by rank 0.

Why not ``ddp_spawn``: it pickles the trainer, module and datamodule into each child, which breaks on
unpicklable parts (lambdas in transforms, open video readers) and returns nothing from the children.

Processes started by torchrun or srun are not started by Lightning: each runs train.py itself and they agree
on the run dir through ``visfeat.new_run_dir`` (runs/resolvers.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytorch_lightning as pl
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig

from runs.lightning_private import ChildScriptLauncher, LauncherHooks

# What the launcher puts into this process's environment; removed again by ``end_processes``.
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def hydra_quote(value: str) -> str:
    """``value`` as a quoted Hydra override value (paths may hold characters like ``=`` or ``,``)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_command() -> list[str]:
    """The command that runs the current Hydra job again, in run mode, into the same output dir."""
    import __main__

    hc = HydraConfig.get()
    if getattr(__main__, "__spec__", None) is not None:
        command = [sys.executable, "-m", __main__.__spec__.name]
    else:
        command = [sys.executable, os.path.abspath(sys.argv[0])]
    for source in hc.runtime.config_sources:
        path = source.path.removeprefix("file://")
        if source.provider == "main" and source.schema == "file":
            command.append(f"--config-path={os.path.abspath(path)}")
        elif source.provider == "command-line" and source.schema == "file":
            command.append(f"--config-dir={os.path.abspath(path)}")
    command.append(f"--config-name={hc.job.config_name}")
    return [*command, *hc.overrides.task, f"hydra.run.dir={hydra_quote(hc.runtime.output_dir)}"]


class HydraJobLauncher(ChildScriptLauncher):
    """Lightning's subprocess launcher, starting ``job_command()`` when Hydra runs the script."""

    def start_children(self) -> None:
        if not HydraConfig.initialized():
            self.default_start_children()
            return
        self.check_can_spawn_children()
        env = self.cluster_environment
        self.saved_environ = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
        os.environ.update(
            MASTER_ADDR=env.main_address,
            MASTER_PORT=str(env.main_port),
            NODE_RANK=str(env.node_rank()),
            LOCAL_RANK=str(env.local_rank()),
            WORLD_SIZE=str(self.num_processes * self.num_nodes),
        )
        command = job_command()
        self.procs = [
            subprocess.Popen(command, env={**os.environ, "LOCAL_RANK": str(local_rank)}, cwd=os.getcwd())
            for local_rank in range(1, self.num_processes)
        ]


class DDPStrategy(LauncherHooks):
    """``pytorch_lightning.strategies.DDPStrategy`` whose extra processes run the same Hydra job."""

    def child_launcher(self) -> HydraJobLauncher:
        return HydraJobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)


def end_processes(trainer: pl.Trainer) -> None:
    """After a job whose processes this one started: wait for them, close the process group and restore the
    environment, so that the next job of a multirun starts (and joins) processes of its own."""
    launcher = trainer.strategy.launcher
    if not isinstance(launcher, HydraJobLauncher) or not launcher.procs:
        return
    codes = [proc.wait() for proc in launcher.procs]
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name, value in launcher.saved_environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if any(codes):
        raise RuntimeError(f"DDP processes of this job exited with codes {codes}; see their output above")
