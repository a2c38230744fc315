"""Checkpoints: written atomically and only with finite weights; read back as plain data only
(``weights_only=True``); their stored config instantiated only from an allowlist of import paths.

A stored config is code: instantiating it calls whatever its ``_target_``s name. A checkpoint from elsewhere
may name anything, so before a stored config is built every ``_target_`` in it must resolve, inside one of
``ALLOWED_TARGETS``, to a class or function defined in an allowed package (attribute paths through an allowed
module to, say, ``os.system`` are refused too).
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_object
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from runs.atomic import atomic_link, atomic_open
from runs.faults import NonFiniteError, nonfinite_names
from runs.lightning_private import CheckpointHooks

# Import paths (prefixes) a stored config may instantiate: the project's model, data and training parts and
# the libraries its configs use. Not trainer.run / runs.results (file writing, subprocesses).
ALLOWED_TARGETS = (
    "models.",
    "data.",
    "trainer.module.",
    "trainer.optim.",
    "trainer.callbacks.",
    "runs.checkpoint.",
    "runs.faults.",
    "trainer.ema.",
    "runs.distributed.",
    "runs.sweep.",
    "trainer.finetune.",
    "torch.nn.",
    "torch.optim.",
    "torchvision.models.",
    "torchvision.transforms.",
    "albumentations.",
    "torchmetrics.",
    "pytorch_lightning.Trainer",
    "pytorch_lightning.callbacks.",
    "pytorch_lightning.loggers.",
    "pytorch_lightning.strategies.",
    "pytorch_lightning.plugins.",
)


class UnsafeConfigError(ValueError):
    pass


# --- writing ----------------------------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer (``trainer.plugins``), made atomic and finite-only.

    The checkpoint goes to ``<file>.tmp`` in the same directory, is flushed and fsynced, then renamed over
    ``<file>`` (``os.replace`` is atomic on POSIX and Windows): a save that fails half way (disk full, an
    exception, a kill) leaves the previous ``last.ckpt`` / ``best.ckpt`` as they were. A checkpoint whose
    weights hold NaN or inf is refused with an error, so it never replaces a good one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote file systems: no rename there; Lightning's own writer
            check_finite_weights(checkpoint, path)
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        check_finite_weights(checkpoint, path)
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


class ModelCheckpoint(CheckpointHooks):
    """Lightning's ModelCheckpoint with a ``last.ckpt`` that is never more than ``last_every_s`` behind.

    Lightning (2.6) rewrites ``last.ckpt`` only at steps where it also wrote a top-k checkpoint: once the
    monitored metric stops improving, ``last.ckpt`` falls behind and a resume from it repeats those epochs,
    and at the end of fitting it may not hold the final weights. Here, at every save point (each epoch end
    by default):

    - the best checkpoint was just written: ``last.ckpt`` becomes a hard link to it (the same state, no second
      serialisation; a copy where hard links are impossible);
    - otherwise ``last.ckpt`` is written if ``last_every_s`` seconds passed since it last was (0: always).

    At the end of fitting it is always brought up to date; SIGTERM/SIGUSR1 write it too (runs.faults).
    So a crash that kills the process outright (out of memory, power loss) loses at most ``last_every_s``
    seconds of training, and small models with sub-second epochs do not spend their time serialising.
    """

    def __init__(self, *args: Any, last_every_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if last_every_s < 0:
            raise ValueError(f"callbacks.model_checkpoint.last_every_s={last_every_s} must be >= 0 (0: every epoch)")
        self.last_every_s = float(last_every_s)
        self._last_written_step: int | None = None
        self._last_written_time = time.monotonic()

    def topk_hook(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super().topk_hook(trainer, monitor_candidates)
        self.last_hook(trainer, monitor_candidates, when_due=True)

    def last_hook(
        self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor], *, when_due: bool = False
    ) -> None:
        if not self.save_last or self._last_written_step == trainer.global_step:
            return  # up to date (Lightning asks again right after the top-k save)
        source = self.last_saved_path if self.last_saved_step == trainer.global_step else None
        path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        if source and self.save_last is True and "://" not in path and not self.version_counter:
            self.last_model_path = path
            if trainer.is_global_zero:
                atomic_link(source, path)
            trainer.strategy.barrier()
        else:
            # Rank 0's clock decides, so that every process takes part in the same saves.
            due = time.monotonic() - self._last_written_time >= self.last_every_s
            if when_due and not trainer.strategy.broadcast(due):
                return
            self.write_last(trainer, monitor_candidates)
            self._last_written_time = time.monotonic()
        self._last_written_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and not trainer.fast_dev_run:
            self.last_hook(trainer, self.monitor_candidates(trainer))


def check_finite_weights(checkpoint: dict[str, Any], path: str | Path) -> None:
    """The net's parameters and buffers (``net.*``) must be finite; metric states (a max starts at -inf) may not be."""
    state = checkpoint.get("state_dict", {})
    bad = nonfinite_names(
        {k: v for k, v in state.items() if k.startswith("net.") and torch.is_tensor(v) and v.is_floating_point()}
    )
    if bad:
        raise NonFiniteError(
            f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}"
            f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}. The previous checkpoint is kept. "
            f"Training diverged: lower optimizer.lr or set trainer.gradient_clip_val."
        )


# --- reading ----------------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ValueError(f"{path} is not a readable checkpoint (or holds pickled objects): {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a visfeat/Lightning checkpoint: no 'state_dict' in it")
    return ckpt


def stored_config(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The run config saved in the checkpoint, checked against ``ALLOWED_TARGETS`` before anyone builds it."""
    config = ckpt.get("hyper_parameters", {}).get("config")
    if not config or "model" not in config:
        raise ValueError(
            f"{path} holds no visfeat run config (hyper_parameters.config.model); was it written by train.py?"
        )
    # Hydra's own node (present when a config was composed with it) is never instantiated from a checkpoint.
    check_targets({k: v for k, v in config.items() if k != "hydra"}, path)
    return config


def check_targets(node: Any, path: str | Path, key: str = "") -> None:
    """Raise ``UnsafeConfigError`` naming the file, key and target of any ``_target_`` outside the allowlist, and
    for any interpolation (stored configs are saved resolved; ``${...}`` would run a resolver)."""
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{key}.{k}" if key else str(k)
            if k == "_target_":
                check_target(v, path, here)
            else:
                check_targets(v, path, here)
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            check_targets(v, path, f"{key}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise UnsafeConfigError(
            f"{path}: config value {key}={node!r} is an interpolation; stored configs are saved resolved"
        )


def check_target(target: Any, path: str | Path, key: str) -> None:
    """Entries of ``ALLOWED_TARGETS`` ending in ``.`` are packages: the object must also be defined in that
    package (``trainer.module.torch.save`` matches ``trainer.module.`` by name only). Others are exact names."""
    fix = "Load only checkpoints you trust; if this one is, add its prefix to runs.checkpoint.ALLOWED_TARGETS."
    if not isinstance(target, str):
        raise UnsafeConfigError(f"{path}: {key}={target!r} is not an import path. {fix}")
    if target in ALLOWED_TARGETS:
        return
    package = next((p for p in ALLOWED_TARGETS if p.endswith(".") and target.startswith(p)), None)
    if package is None:
        raise UnsafeConfigError(
            f"{path}: {key}={target!r} is not under an allowed import path {ALLOWED_TARGETS}. {fix}"
        )
    try:
        obj = get_object(target)
    except Exception as e:
        raise UnsafeConfigError(f"{path}: {key}={target!r} cannot be imported: {e}") from e
    module = getattr(obj, "__module__", None) or ""
    if not callable(obj) or not (module + ".").startswith(package):
        raise UnsafeConfigError(
            f"{path}: {key}={target!r} resolves to {obj!r} defined in {module or 'an unknown module'!r}, outside "
            f"{package.rstrip('.')}. {fix}"
        )


def net_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The net's weights out of a LightningModule state_dict (keys prefixed ``net.``)."""
    return {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
