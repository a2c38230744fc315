"""Checks of a composed config that Hydra's own (unknown keys, unknown group options) do not cover.

They run before anything is built, so a bad value fails in a second with its key named, not an hour
into training; ``check_precision`` runs once the net and the Trainer are built (it needs both) and before
the first step.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
)
from PIL import Image

from data.base import dataset_files
from data.image_folder import IMAGE_EXTENSIONS
from nets.stored import directory_message
from nets.tta import TTA_MODES
from runs.console import UserError

log = logging.getLogger(__name__)


class ConfigError(UserError, ValueError):
    pass


# Keys whose type is checked before anything is built: (key, type, example). Absent keys are skipped.
TYPED_KEYS = (
    ("seed", int, "seed=0"),
    ("trainer.max_epochs", int, "trainer.max_epochs=10"),
    ("data.batch_size", int, "data.batch_size=64"),
    ("data.num_workers", int, "data.num_workers=4"),
    ("optimizer.lr", float, "optimizer.lr=0.01"),
)
POSITIVE_KEYS = ("optimizer.lr", "data.batch_size", "trainer.max_epochs")


def _get(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if node is None or not isinstance(node, DictConfig) or part not in node:
            return None
        node = node[part]
    return node


def _check_type(key: str, value: Any, kind: type, example: str) -> None:
    if value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        ok = ok or isinstance(value, float)
    if not ok:
        raise ConfigError(f"{key}={value!r} must be {'an integer' if kind is int else 'a number'}; e.g. {example}")


def check_resolved(cfg: DictConfig) -> None:
    """Every value set and every interpolation resolvable (Hydra's own node aside): a missing mandatory value
    (``???``, e.g. data.num_classes of data=image_folder) fails here, naming its key."""
    try:
        for key in cfg:
            if key == "hydra":
                continue
            value = cfg[key]  # raises for a missing top-level value
            if isinstance(value, DictConfig | ListConfig):
                OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
    except InterpolationToMissingValueError as e:
        key = e.msg.rsplit("Missing mandatory value: ", 1)[-1].splitlines()[0].strip()
        raise ConfigError(
            f"no value for {key} (??? in its config, needed by {e.full_key}); set it: {key}=<value>"
        ) from e
    except MissingMandatoryValue as e:
        raise ConfigError(f"no value for {e.full_key} (??? in its config); set it: {e.full_key}=<value>") from e
    except InterpolationResolutionError as e:
        raise ConfigError(f"{e.full_key}: {e.msg}") from e


def check_config(cfg: DictConfig) -> None:
    check_resolved(cfg)
    check_trainer_parts(cfg)
    for key, kind, example in TYPED_KEYS:
        _check_type(key, _get(cfg, key), kind, example)
    for key in POSITIVE_KEYS:
        value = _get(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}={value!r} must be positive; e.g. {dict((k, e) for k, _, e in TYPED_KEYS)[key]}")
    for part in FINITE_PARTS:
        check_finite(cfg.get(part), part)
    check_validation_split(cfg)
    ckpt = cfg.get("ckpt_path")
    if ckpt:
        from pathlib import Path

        if Path(ckpt).is_dir():
            raise ConfigError(directory_message(ckpt))
        if not Path(ckpt).is_file():
            raise ConfigError(f"ckpt_path={ckpt} does not exist; give the path of a .ckpt file to resume from")


# Config parts whose numbers must be finite: a NaN learning rate or decay trains nothing, silently.
FINITE_PARTS = ("optimizer", "scheduler")


def check_finite(node: Any, key: str) -> None:
    """Every float under ``node`` is finite (NaN and inf are refused, naming the key)."""
    if isinstance(node, DictConfig):
        for k in node:
            check_finite(node[k], f"{key}.{k}")
    elif isinstance(node, ListConfig):
        for i, v in enumerate(node):
            check_finite(v, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node} is not a finite number; give one, e.g. {key}=0.01")


def holds_out_no_validation(cfg: DictConfig) -> bool:
    """``data.val_size=0``: every training image trains (airbench), no validation split."""
    return (cfg.get("data") or {}).get("val_size", None) == 0


def check_validation_split(cfg: DictConfig) -> None:
    """Without a validation split nothing but the checkpoint (which then keeps the latest weights,
    trainer/run.py) may need a ``val/`` metric."""
    if not holds_out_no_validation(cfg):
        return
    needs = {"optimized_metric": (cfg.get("optimized_metric"), "optimized_metric=test/acc")}
    for name, callback in (cfg.get("callbacks") or {}).items():
        if name != "model_checkpoint" and isinstance(callback, DictConfig) and callback.get("monitor"):
            needs[f"callbacks.{name}.monitor"] = (callback.monitor, f"~callbacks.{name}")
    for key, (metric, fix) in needs.items():
        if metric and str(metric).startswith("val/"):
            raise ConfigError(
                f"{key}={metric} needs a validation split, but data.val_size=0 holds none out; "
                f"set data.val_size (e.g. data.val_size=5000) or {fix}"
            )


# --- precision vs hardware ---------------------------------------------------------------------------------

# What oneDNN gets wrong (torch 2.15 on an AMD EPYC with AVX512-BF16): the bf16 weight gradient of a Conv3d with
# a temporal kernel of 3 (padding 1) over 2 frames, at 16+ channels, comes out inf or off by orders of magnitude.
# Video ResNets reach 2 frames in layer3 for 8-frame clips (layer4 for 16); fp32 and the forward pass are right.
PROBE_SHAPE = {"input": (2, 32, 2, 4, 4), "weight": (32, 32, 3, 1, 1), "padding": (1, 0, 0)}


@functools.cache
def cpu_bf16_conv3d_grads_ok() -> bool:
    """Whether this CPU's bf16 Conv3d weight gradient matches fp32 on the shape above (a few ms, once)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_SHAPE["input"], generator=g)
    w = torch.randn(PROBE_SHAPE["weight"], generator=g) * 0.1
    grad_out = torch.randn(PROBE_SHAPE["input"], generator=g)
    pad = PROBE_SHAPE["padding"]
    with torch.enable_grad():
        reference = torch.nn.grad.conv3d_weight(x, w.shape, grad_out, padding=pad)
        w_bf16 = w.bfloat16().requires_grad_()
        F.conv3d(x.bfloat16(), w_bf16, padding=pad).backward(grad_out.bfloat16())
    error = (w_bf16.grad.float() - reference).abs().max() / reference.abs().max()
    return bool(error < 0.05)  # bf16 rounding: ~0.005


def check_precision(net: torch.nn.Module, trainer: pl.Trainer) -> None:
    """bf16 training of a net with 3D convolutions on a CPU whose bf16 Conv3d gradients are wrong: fail now,
    not with a non-finite gradient at the first step (or, worse, silently wrong weights)."""
    precision = str(trainer.precision)
    if not precision.startswith("bf16") or not isinstance(trainer.accelerator, pl.accelerators.CPUAccelerator):
        return
    if not any(isinstance(m, torch.nn.Conv3d) for m in net.modules()):
        return
    if not cpu_bf16_conv3d_grads_ok():
        raise ConfigError(
            f"trainer.precision={precision} on this CPU: its oneDNN computes wrong bf16 Conv3d weight gradients "
            f"(inf or off by orders of magnitude for 2-frame inputs; checked just now), and this net has 3D "
            f"convolutions. Train it with trainer.precision=32-true, or bf16 on a GPU."
        )


# --- parts of the config that would be dropped ---------------------------------------------------------------


def check_trainer_parts(cfg: DictConfig) -> None:
    """``trainer.callbacks.history`` and ``trainer.logger`` are replaced by what the ``callbacks`` and ``logger`` groups
    build (trainer/run.py: build_trainer), so anything added under them would be dropped without a word."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig):
        return
    for part in ("callbacks", "logger"):
        node = trainer.get(part)
        if node is None or node is False:
            continue
        names = [f"trainer.{part}.{k}" for k in node] if isinstance(node, DictConfig) else [f"trainer.{part}"]
        group = "callbacks" if part == "callbacks" else "logger"
        raise ConfigError(
            f"{', '.join(names)}: the Trainer's {part} come from the `{group}` config group, so this would be "
            f"dropped. Give it there instead: +{group}.<name>._target_=<class> (+{group}.<name>.<arg>=<value>)."
        )


# --- before the first step: the files of the evaluation splits, the run dir ------------------------------------


class UnreadableFileError(RuntimeError):
    pass


def check_writable(*directories: str | Path) -> None:
    """Each directory can be created and written to (a file created, written, removed): a read-only or full
    run dir fails now, not when the first checkpoint is due after an epoch."""
    for directory in directories:
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-") as f:
                f.write(b"visfeat")
                f.flush()
        except OSError as e:
            raise ConfigError(
                f"cannot write to {directory} ({e.strerror or e}): the run's checkpoints and results go there. "
                f"Choose a writable run dir with hydra.run.dir=<dir> (or paths.log_dir=<dir> for all runs)."
            ) from e


def probe_file(path: str | Path) -> str | None:
    """Why ``path`` cannot be read (None if it can), cheaply: an image's header is decoded (PIL ``verify``, which
    for PNG also checks every chunk's CRC) and a JPEG that does not end with its end-of-image marker, as a
    truncated one does, is decoded in full (at 1/8 scale); a video's container is opened and must hold a video
    stream (PyAV)."""
    path = Path(path)
    try:
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            with Image.open(path) as im:
                im.verify()
            if path.suffix.lower() in (".jpg", ".jpeg") and not jpeg_ends_cleanly(path):
                with Image.open(path) as im:
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                    im.load()
        else:
            import av

            with av.open(str(path)) as container:
                if not container.streams.video:
                    return "no video stream in it"
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError...; PyAV its FFmpegErrors
        return f"{type(e).__name__}: {e}"
    return None


def jpeg_ends_cleanly(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64))
        return b"\xff\xd9" in f.read().rstrip(b"\x00\r\n ")[-2:]


def check_eval_files(datamodule: Any, *, workers: int = 8) -> int:
    """Probes every file of the validation and test splits (``probe_file``) before the first step. An
    unreadable one stops the run naming it, or, where the dataset skips unreadable files
    (``data.skip_unreadable_eval=true``), is taken out of the split with a warning; returns how many were."""
    # The splits' file lists before anything is decoded into memory (data.in_memory): setup() then holds the
    # lists as checked here.
    _, val_set, test_set = datamodule.list_splits()
    splits = [("val", val_set), ("test", test_set)]
    lists: dict[int, tuple[str, Any, list]] = {}  # one entry per file list (the test split may be the val one)
    for split, dataset in splits:
        if items := dataset_files(dataset):
            seen = lists.get(id(items))
            lists[id(items)] = (f"{seen[0]}, {split}" if seen else split, dataset, items)
    paths = sorted({str(p) for _, _, items in lists.values() for p, _ in items})
    if not paths:
        return 0
    with ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1))) as pool:  # PIL and FFmpeg release the GIL
        bad = {p: why for p, why in zip(paths, pool.map(probe_file, paths), strict=True) if why}
    if not bad:
        return 0
    shown = "; ".join(f"{p} ({why})" for p, why in list(bad.items())[:5]) + (
        f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    )
    strict = [
        split
        for split, dataset, items in lists.values()
        if not getattr(dataset, "skip_unreadable", False) and any(str(p) in bad for p, _ in items)
    ]
    if strict:
        raise UnreadableFileError(
            f"{len(bad)} unreadable file(s) in the evaluation splits ({', '.join(strict)}), found before training: "
            f"{shown}. Remove or replace them, or set data.skip_unreadable_eval=true to leave them out (counted "
            f"as data/skipped_eval in results.json)."
        )
    for _, _, items in lists.values():
        items[:] = [(p, y) for p, y in items if str(p) not in bad]
    log.warning("leaving %d unreadable file(s) out of evaluation (data.skip_unreadable_eval): %s", len(bad), shown)
    return len(bad)


def check_before_first_step(datamodule: Any, trainer: pl.Trainer) -> int:
    """Once the DataModule and Trainer are built: the run dir and checkpoint dir writable (checked by rank 0,
    which writes them), every evaluation file readable (``check_eval_files``; returns how many were left out)."""
    if trainer.is_global_zero:
        dirs = [trainer.default_root_dir] + [cb.dirpath for cb in trainer.checkpoint_callbacks if cb.dirpath]
        check_writable(*dict.fromkeys(dirs))
    return check_eval_files(datamodule)


# --- eval.py -------------------------------------------------------------------------------------------------


# What eval.py reads: conf/eval.yaml's keys and groups (data keys are checked against the data config they patch).
EVAL_KEYS = ("task_name", "ckpt_path", "seed", "data", "module", "paths", "hydra", "trainer", "logger", "extras")
EVAL_MODULE_KEYS = ("tta",)


def check_eval_config(cfg: DictConfig) -> None:
    """ckpt_path given, and no key eval.py would ignore (``+module.lr=0.1``, ``+test=false``, a misspelling)."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ConfigError(
            "eval.py tests a checkpoint: give it as ckpt_path=<file>, e.g. "
            "python eval.py ckpt_path=outputs/train/<run>/checkpoints/best.ckpt"
        )
    unused = [k for k in cfg if k not in EVAL_KEYS]
    unused += [f"module.{k}" for k in cfg.get("module") or {} if k not in EVAL_MODULE_KEYS]
    if unused:
        raise ConfigError(
            f"eval.py does not use {', '.join(sorted(unused))}: it takes ckpt_path, data (data=<name>, "
            f"data.<key>=...), module.tta ({' | '.join(TTA_MODES)}), seed, trainer.*, logger.*; the model and its "
            f"training options come from the checkpoint"
        )
    check_resolved(cfg)
    if cfg.get("module") and cfg.module.get("tta") is not None and cfg.module.tta not in TTA_MODES:
        raise ConfigError(f"module.tta={cfg.module.tta!r} must be one of {list(TTA_MODES)}")


def check_data_options(data_cfg: DictConfig, given: DictConfig) -> None:
    """Options given to eval.py (``data.<key>=<value>``) must be arguments of the data config they patch."""
    from nets.stored import named_parameters

    target = data_cfg.get("_target_")
    if not target:
        return
    from hydra.utils import get_object

    accepted = named_parameters(get_object(target))
    unknown = sorted(k for k in given if k != "_target_" and k not in accepted)
    if unknown:
        raise ConfigError(
            f"data.{', data.'.join(unknown)}: not an option of the checkpoint's data config {target} "
            f"(data.skip_unreadable_eval applies to file datasets: image_folder, video)."
        )
