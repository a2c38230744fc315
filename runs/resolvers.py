"""Config resolvers that let every process of a distributed run agree on one run dir, written by rank 0 only.

Registered on import (the entry scripts import this module before Hydra composes the config):

- ``${visfeat.new_run_dir:<parent>,%Y-%m-%d_%H-%M-%S}``: the default run dir, ``<parent>/<time stamp>``, and
  created (claimed) as it is chosen: two runs started in the same second get ``<stamp>`` and ``<stamp>_1``,
  however many hosts share the file system (``mkdir`` either creates a directory or fails).
  Processes started independently by an external launcher would each claim their own (one run dir per
  process, the Hydra + DDP trap), so they share one: torchrun: the dir rank 0 claimed, handed to the
  others through torchrun's own key-value store; srun: ``<parent>/slurm<job id>.<step id>``, the same in
  every task of the step; ``VISFEAT_RUN_STAMP``, when set, names ``<parent>/<its value>`` in every process.
  Processes that Lightning starts itself (``trainer=ddp``/``ddp_sim``) are told the run dir on their command
  line instead (runs/distributed.py). A run dir in use is also locked (runs/lock.py).
- ``${visfeat.run_stamp:%Y-%m-%d_%H-%M-%S}``: the bare time stamp, shared in the same way (no dir claimed).
- ``${visfeat.config_subdir:${hydra.runtime.output_dir}}``: where Hydra saves the job's config: ``.hydra``,
  or, when the run dir already has one (a resumed run), ``.hydra-resume-<n>`` beside it, so the original
  run's config and overrides are never overwritten.
- ``${visfeat.if_rank_zero:A,B}``: A in the process of global rank 0, B in the others; the hydra config uses
  it so that only rank 0 writes ``.hydra/`` and the log file.
- ``${visfeat.direction:${optimized_metric}}``: ``maximize`` or ``minimize`` for the Optuna sweeper.
- ``${visfeat.mixed_precision:${trainer.accelerator}}``: the fastest precision for ResNet-class nets on the
  machine the run starts on (see ``mixed_precision``), e.g.
  ``trainer.precision='${visfeat.mixed_precision:${trainer.accelerator}}'``. Not a default: it trains
  faster but cost accuracy in the measurement of docs/performance.md.
- ``${visfeat.config_groups:}``: the config groups of ``conf/`` and their options, one ``group: a, b`` line
  each, for ``--help`` (conf/hydra/default.yaml): Hydra's own list would also show configs only other configs
  include, named with a leading ``_`` (``model/_base``).
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

# Environment variables that make a process a non-zero rank: torchrun (RANK), srun (SLURM_PROCID),
# Lightning's own launcher (LOCAL_RANK, NODE_RANK).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
STAMP_TIMEOUT = timedelta(minutes=5)
_stores: list[Any] = []  # keeps a store this process serves alive until the process group reuses its port
MINIMISED_WORDS = ("loss", "err", "time", "seconds")  # metric names that are minimised
_shared: dict[Any, str] = {}  # one exchange (or claim) per key and process, however often the config is resolved


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


def new_run_dir(parent: str, pattern: str = "%Y-%m-%d_%H-%M-%S") -> str:
    """``<parent>/<time stamp>`` (``pattern`` for strftime), created now; see the module docstring."""
    if key := os.environ.get("VISFEAT_RUN_STAMP"):
        return str(Path(parent) / key)
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return shared_with_rank_zero(f"visfeat/run_dir/{parent}", lambda: claim_dir(parent, pattern))
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return str(Path(parent) / f"slurm{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}")
    memo = ("new_run_dir", parent, pattern)  # Hydra resolves hydra.run.dir more than once (on copies of the config)
    if memo not in _shared:
        _shared[memo] = claim_dir(parent, pattern)
    return _shared[memo]


def claim_dir(parent: str, pattern: str) -> str:
    """Creates ``<parent>/<stamp>``, or ``<stamp>_<n>`` for the first n not taken, and returns it."""
    stamp = datetime.now().strftime(pattern)
    for n in itertools.count():
        path = Path(parent) / (stamp if n == 0 else f"{stamp}_{n}")
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        except OSError as e:  # read-only, no permission, a name over the file system's limit (255 bytes)
            # SystemExit: Hydra resolves this before the job, where an exception would end in its traceback.
            raise SystemExit(f"error: {run_dir_problem(path, e)}") from None
        return str(path)
    raise AssertionError("unreachable")


def run_dir_problem(path: Path, error: OSError) -> str:
    """Why the run dir ``path`` (``paths.log_dir``/``task_name``/stamp) cannot be made, and which key fixes it."""
    long = [part for part in path.parts if len(part.encode()) > 255]
    if error.errno == errno.ENAMETOOLONG and long:
        return (
            f"cannot create the run dir {path}: its name {long[0][:40]!r}... is {len(long[0].encode())} bytes, over "
            f"the file system's 255. Shorten task_name (or paths.log_dir), or give hydra.run.dir=<dir>."
        )
    return (
        f"cannot create the run dir {path} ({error.strerror}): paths.log_dir must be a folder this process can "
        f"write. Give another one: paths.log_dir=<dir> (or hydra.run.dir=<dir>)."
    )


def config_subdir(output_dir: str) -> str:
    """``.hydra`` or, when ``output_dir`` has one already, the first free ``.hydra-resume-<n>``."""
    memo = ("config_subdir", str(Path(output_dir).resolve()))
    if memo not in _shared:
        names = (".hydra" if n == 0 else f".hydra-resume-{n}" for n in itertools.count())
        _shared[memo] = next(name for name in names if not (Path(output_dir) / name).exists())
    return _shared[memo]


def written_config_subdir(output_dir: str) -> str | None:
    """The ``config_subdir`` this process gave Hydra for ``output_dir``, if it asked for one."""
    return _shared.get(("config_subdir", str(Path(output_dir).resolve())))


def shared_with_rank_zero(key: str, value: str | Callable[[], str]) -> str:
    """Rank 0's ``value`` in every process started by torchrun, exchanged through the store at
    MASTER_ADDR:MASTER_PORT before the process group exists.

    When torchrun's agent serves that store every rank is a client; otherwise rank 0 serves it, multi-tenant,
    as torch.distributed itself does, so the process group later shares the same server.
    """
    if key in _shared:
        return _shared[key]
    from torch.distributed import TCPStore

    rank = int(os.environ["RANK"])
    if rank == 0 and callable(value):  # e.g. claiming a dir: only rank 0 may
        value = value()
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
    return "minimize" if metric_mode(metric) == "min" else "maximize"


def metric_mode(metric: str, direction: Any = None) -> str:
    """``max`` or ``min``: from a sweeper's direction if given, else from the metric name."""
    if direction is not None:
        text = str(getattr(direction, "name", direction)).lower()
        return "min" if text.startswith("min") else "max"
    return "min" if any(word in metric.lower() for word in MINIMISED_WORDS) else "max"


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


def config_groups() -> str:
    """``group: option, option`` for every folder of conf/ holding configs (not hydra/, not ``_`` names)."""
    conf = Path(__file__).resolve().parent.parent / "conf"
    lines = []
    for folder in sorted(p for p in conf.rglob("*") if p.is_dir()):
        group = folder.relative_to(conf).as_posix()
        options = sorted(f.stem for f in folder.glob("*.yaml") if not f.stem.startswith("_"))
        if options and group.split("/")[0] != "hydra":
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def register() -> None:
    # Cached: Hydra may resolve hydra.run.dir more than once, and every read must give the same dir.
    OmegaConf.register_new_resolver("visfeat.root", repo_root, replace=True)
    OmegaConf.register_new_resolver("visfeat.run_stamp", run_stamp, use_cache=True, replace=True)
    # Cached in the config too (as Hydra's ${now:}): a submitit job resolves its pickled launcher config again
    # in another process, and must find the sweep dir the launcher claimed.
    OmegaConf.register_new_resolver("visfeat.new_run_dir", new_run_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("visfeat.config_subdir", config_subdir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("visfeat.if_rank_zero", if_rank_zero, replace=True)
    OmegaConf.register_new_resolver("visfeat.direction", metric_direction, replace=True)
    OmegaConf.register_new_resolver("visfeat.mixed_precision", mixed_precision, replace=True)
    OmegaConf.register_new_resolver("visfeat.config_groups", config_groups, replace=True)


register()
