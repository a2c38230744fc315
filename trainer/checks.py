"""Checks of a composed config that Hydra's own (unknown keys, unknown group options) do not cover.

They run before anything is built, so a bad value fails in a second with its key named, not an hour
into training.
"""

from __future__ import annotations

from omegaconf import DictConfig


class ConfigError(ValueError):
    pass


def _positive(cfg: DictConfig, key: str, hint: str) -> None:
    node = cfg
    for part in key.split("."):
        if node is None or part not in node:
            return
        node = node[part]
    if node is None:
        return
    if isinstance(node, bool) or not isinstance(node, int | float) or node <= 0:
        raise ConfigError(f"{key}={node!r} must be a positive number; {hint}")


def check_config(cfg: DictConfig) -> None:
    _positive(cfg, "optimizer.lr", "e.g. optimizer.lr=0.01")
    _positive(cfg, "data.batch_size", "e.g. data.batch_size=64")
    _positive(cfg, "trainer.max_epochs", "e.g. trainer.max_epochs=10")
    ckpt = cfg.get("ckpt_path")
    if ckpt:
        from pathlib import Path

        if not Path(ckpt).is_file():
            raise ConfigError(f"ckpt_path={ckpt} does not exist; give the path of a .ckpt file to resume from")
