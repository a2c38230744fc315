"""Building the net from its config, plus the framework's own model options.

The model config holds the constructor arguments of ``models.net.Net`` and a few keys the framework
acts on after construction (``FRAMEWORK_KEYS``): they are taken out before instantiation so models stay
plain ``nn.Module``s without file IO or training concerns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nets.pretrained import load_pretrained
from nets.stored import net_state_dict, stored_config

FRAMEWORK_KEYS = ("pretrained", "pretrained_exclude", "pretrained_format", "channels_last")


def build_net(model_cfg: DictConfig | dict, *, load_weights: bool = True, compile: bool = False) -> nn.Module:
    """The net; with ``load_weights`` it starts from ``model.pretrained`` (nets/pretrained.py), leaving out
    keys under ``model.pretrained_exclude`` (e.g. ``[head]``). Rebuilding a checkpoint's net skips it.
    ``model.channels_last`` puts weights and inputs in channels-last layout; ``compile`` (the top-level
    ``compile`` key) compiles its forward with ``torch.compile`` in place; state_dict keys stay the same."""
    ctor = OmegaConf.to_container(model_cfg, resolve=True)
    options = {key: ctor.pop(key, None) for key in FRAMEWORK_KEYS}
    net = instantiate(ctor)
    if load_weights and options["pretrained"]:
        load_pretrained(
            net,
            options["pretrained"],
            exclude=options["pretrained_exclude"] or (),
            format=options["pretrained_format"],
        )
    if options["channels_last"]:
        use_channels_last(net)
    if compile:
        net.compile()
    return net


def use_channels_last(net: nn.Module) -> nn.Module:
    """Conv weights (4D and 5D) and, by a forward pre-hook, the net's input in channels-last layout: NHWC
    kernels (cuDNN tensor cores, oneDNN) then run without a layout conversion around every convolution."""
    for t in [*net.parameters(), *net.buffers()]:
        if t.ndim in (4, 5):
            t.data = t.data.contiguous(memory_format=_LAYOUT[t.ndim])
    net.register_forward_pre_hook(_input_channels_last, with_kwargs=True)
    return net


_LAYOUT = {4: torch.channels_last, 5: torch.channels_last_3d}


def _input_channels_last(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if args and isinstance(args[0], torch.Tensor) and args[0].ndim in _LAYOUT:
        args = (args[0].contiguous(memory_format=_LAYOUT[args[0].ndim]), *args[1:])
    elif isinstance(kwargs.get("input"), torch.Tensor) and kwargs["input"].ndim in _LAYOUT:
        kwargs = {**kwargs, "input": kwargs["input"].contiguous(memory_format=_LAYOUT[kwargs["input"].ndim])}
    return args, kwargs


def net_from_checkpoint(ckpt: dict[str, Any], path: str | Path, *, num_classes: int | None = None) -> nn.Module:
    """Rebuild the net from the config stored in the checkpoint and load its weights exactly."""
    model_cfg = OmegaConf.create(stored_config(ckpt, path, parts=("model",))["model"])
    trained_classes = model_cfg.num_classes
    if num_classes is not None and num_classes != trained_classes:
        raise ValueError(
            f"{path} was trained for {trained_classes} classes but the data has {num_classes}; evaluate it on "
            f"data with the same classes, or fine-tune it (model.pretrained={path}) for the new ones"
        )
    net = build_net(model_cfg, load_weights=False)  # the checkpoint's own weights follow
    net.load_state_dict(net_state_dict(ckpt), strict=True)
    return net
