"""Config resolvers that let every process of a distributed run agree on one run dir, written by rank 0 only.

Registered on import (the entry scripts import this module before Hydra composes the config):

- ``${visfeat.run_stamp:%Y-%m-%d_%H-%M-%S}``: the run dir's time stamp. A single process uses its own clock.
  Processes started independently by an external launcher would each read a different clock (one run dir
  per process, the Hydra + DDP trap), so they take one stamp that all of them share:
  torchrun: rank 0's clock, handed to the others through torchrun's own key-value store;
  srun: ``slurm<job id>.<step id>``, the same in every task of the step;
  ``VISFEAT_RUN_STAMP``, when set, wins over both.
  Processes that Lightning starts itself (``trainer=ddp``/``ddp_sim``) are told the run dir on their command
  line instead (runs/distributed.py).
- ``${visfeat.if_rank_zero:A,B}``: A in the process of global rank 0, B in the others; the hydra config uses
  it so that only rank 0 writes ``.hydra/`` and the log file.
- ``${visfeat.direction:${optimized_metric}}``: ``maximize`` or ``minimize`` for the Optuna sweeper.
- ``${visfeat.mixed_precision:${trainer.accelerator}}``: the fastest precision for ResNet-class nets on the
  machine the run starts on (see ``mixed_precision``), e.g.
  ``trainer.precision='${visfeat.mixed_precision:${trainer.accelerator}}'``. Not a default: it trains
  faster but cost accuracy in the measurement of docs/performance.md.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

# Environment variables that make a process a non-zero rank: torchrun (RANK), srun (SLURM_PROCID),
# Lightning's own launcher (LOCAL_RANK, NODE_RANK).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
STAMP_TIMEOUT = timedelta(minutes=5)
_stores: list[Any] = []  # keeps a store this process serves alive until the process group reuses its port
_shared: dict[str, str] = {}  # one exchange per key and process, however often the config is resolved


def is_rank_zero() -> bool:
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def if_rank_zero(value: Any, other: Any) -> Any:
    return value if is_rank_zero() else other


def run_stamp(pattern: str = "%Y-%m-%d_%H-%M-%S") -> str:
    if os.environ.get("VISFEAT_RUN_STAMP"):
        return os.environ["VISFEAT_RUN_STAMP"]
    now = datetime.now().strftime(pattern)
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return shared_with_rank_zero("visfeat/run_stamp", now)
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return f"slurm{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
    return now


def shared_with_rank_zero(key: str, value: str) -> str:
    """Rank 0's ``value`` in every process started by torchrun, exchanged through the store at
    MASTER_ADDR:MASTER_PORT before the process group exists.

    When torchrun's agent serves that store every rank is a client; otherwise rank 0 serves it, multi-tenant,
    as torch.distributed itself does, so the process group later shares the same server.
    """
    if key in _shared:
        return _shared[key]
    from torch.distributed import TCPStore

    rank = int(os.environ["RANK"])
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=rank == 0 and not agent_serves,
        timeout=STAMP_TIMEOUT,
        wait_for_workers=False,
        multi_tenant=True,
    )
    _stores.append(store)
    # Restarted workers (torchrun --max-restarts) start a new run dir.
    store_key = f"{key}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if rank == 0:
        store.set(store_key, value)
    else:
        value = store.get(store_key).decode()
    _shared[key] = value
    return value


def metric_direction(metric: str) -> str:
    """The Optuna direction ("maximize"/"minimize") of a metric such as ``optimized_metric``."""
    from runs.sweep import metric_mode

    return "minimize" if metric_mode(metric) == "min" else "maximize"


def mixed_precision(accelerator: str = "auto") -> str:
    """``bf16-mixed`` where bfloat16 runs natively: GPUs of compute capability 8.0 and later, CPUs with
    AVX512-BF16 or AMX instructions; ``16-mixed`` on older GPUs; ``32-true`` on other CPUs, where bfloat16
    is emulated and slower than fp32. Measured on a CPU with AVX512-BF16: ResNet-18 and a ResNet-18 + LSTM
    clip model train 1.6-1.7x faster in bf16-mixed, LeNet 0.7x (too small to gain)."""
    import torch

    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise ValueError(f"visfeat.mixed_precision: unknown accelerator {accelerator!r} (auto, cpu, gpu)")
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        native = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
        return "bf16-mixed" if native else "16-mixed"
    return "bf16-mixed" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "32-true"


def cpu_flags() -> set[str]:
    """The instruction set flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def repo_root() -> str:
    """The repository root (``${visfeat.root:}``): $VISFEAT_ROOT where set, else the folder above runs/."""
    return os.environ.get("VISFEAT_ROOT") or str(Path(__file__).resolve().parent.parent)


def register() -> None:
    # Cached: Hydra may resolve hydra.run.dir more than once, and every read must give the same dir.
    OmegaConf.register_new_resolver("visfeat.root", repo_root, replace=True)
    OmegaConf.register_new_resolver("visfeat.run_stamp", run_stamp, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("visfeat.if_rank_zero", if_rank_zero, replace=True)
    OmegaConf.register_new_resolver("visfeat.direction", metric_direction, replace=True)
    OmegaConf.register_new_resolver("visfeat.mixed_precision", mixed_precision, replace=True)


register()
