"""Checks of a composed config that Hydra's own (unknown keys, unknown group options) do not cover.

They run before anything is built, so a bad value fails in a second with its key named, not an hour
into training; ``check_precision`` runs once the net and the Trainer are built (it needs both) and before
the first step.
"""

from __future__ import annotations

import functools
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


class ConfigError(ValueError):
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
    for key, kind, example in TYPED_KEYS:
        _check_type(key, _get(cfg, key), kind, example)
    for key in POSITIVE_KEYS:
        value = _get(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}={value!r} must be positive; e.g. {dict((k, e) for k, _, e in TYPED_KEYS)[key]}")
    ckpt = cfg.get("ckpt_path")
    if ckpt:
        from pathlib import Path

        if not Path(ckpt).is_file():
            raise ConfigError(f"ckpt_path={ckpt} does not exist; give the path of a .ckpt file to resume from")


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
