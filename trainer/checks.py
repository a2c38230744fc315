"""Checks of a composed config that Hydra's own (unknown keys, unknown group options) do not cover.

They run before anything is built, so a bad value fails in a second with its key named, not an hour
into training.
"""

from __future__ import annotations

from typing import Any

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
