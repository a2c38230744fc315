"""Building the net from its config, plus the framework's own model options.

The model config holds the constructor arguments of ``models.net.Net`` and a few keys the framework
acts on after construction (``FRAMEWORK_KEYS``): they are taken out before instantiation so models stay
plain ``nn.Module``s without file IO or training concerns.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

FRAMEWORK_KEYS = ("pretrained", "channels_last")


def build_net(model_cfg: DictConfig | dict) -> nn.Module:
    ctor = OmegaConf.to_container(model_cfg, resolve=True)
    for key in FRAMEWORK_KEYS:
        ctor.pop(key, None)
    return instantiate(ctor)
