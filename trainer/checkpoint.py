"""Reading checkpoints back: plain data only (``weights_only=True``), with errors that name the file."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from trainer.build import build_net


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
    config = ckpt.get("hyper_parameters", {}).get("config")
    if not config or "model" not in config:
        raise ValueError(f"{path} holds no visfeat run config (hyper_parameters.config.model); was it written by train.py?")
    return config


def net_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The net's weights out of a LightningModule state_dict (keys prefixed ``net.``)."""
    return {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}


def net_from_checkpoint(ckpt: dict[str, Any], path: str | Path, *, num_classes: int | None = None) -> nn.Module:
    """Rebuild the net from the config stored in the checkpoint and load its weights exactly."""
    model_cfg = OmegaConf.create(stored_config(ckpt, path)["model"])
    trained_classes = model_cfg.num_classes
    if num_classes is not None and num_classes != trained_classes:
        raise ValueError(
            f"{path} was trained for {trained_classes} classes but the data has {num_classes}; evaluate it on "
            f"data with the same classes, or fine-tune it (model.pretrained={path}) for the new ones"
        )
    net = build_net(model_cfg)
    net.load_state_dict(net_state_dict(ckpt), strict=True)
    return net
