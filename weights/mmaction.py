"""MMAction2 checkpoints (``.pth``: ``{"meta": ..., "state_dict": ...}``) of its I3D ResNets and SlowFast.

SlowFast files (``backbone.slow_path.*``) go to weights/mmaction_slowfast.py; the rest of this module is I3D.

``backbone.*`` keys are MMAction2's ``ResNet3d`` names, which models/i3d_resnet.py shares, so they land as
they are; ``cls_head.fc_cls`` becomes ``Net.head``. The non-local blocks of the NL models (mmcv's
``NonLocal3d`` inside a bottleneck) map onto the blocks ``model.non_local`` inserts after the same bottleneck
(same pairwise function, sub-sampling after the phi/g convs, inner width C/2):

    layer{L}.{i}.non_local_block.{theta | g.0 | phi.0}.conv  -> inserted.layer{L}_{i}.{theta | g | phi}
    layer{L}.{i}.non_local_block.conv_out.{conv, bn}         -> inserted.layer{L}_{i}.{out, bn}     (under backbone.)

mmcv's ``conv_out`` has no bias (its BatchNorm follows): the inserted block's ``out.bias`` is set to zeros,
reported with the reshaped tensors. Keys of parts this net lacks are reported unexpected.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from models.i3d_resnet import I3DResNet
from weights import mmaction_slowfast
from weights.foreign import backbone_of

_NONLOCAL = re.compile(r"backbone\.(layer\d)\.(\d+)\.non_local_block\.(theta|g|phi|conv_out)(?:\.0)?\.(conv|bn)\.(\w+)")


def matches(state: dict[str, Tensor]) -> bool:
    if mmaction_slowfast.matches(state):
        return True
    return any(k.startswith("cls_head.") for k in state) and any(k.startswith("backbone.") for k in state)


def convert(state: dict[str, Tensor], net: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    if mmaction_slowfast.matches(state):
        return mmaction_slowfast.convert(state, net)
    backbone_of(net, "MMAction2", (I3DResNet,))
    out, reshaped = {}, []
    for key, value in state.items():
        if key.startswith("cls_head.fc_cls."):
            out["head." + key.removeprefix("cls_head.fc_cls.")] = value
        elif m := _NONLOCAL.fullmatch(key):
            layer, block, part, kind, param = m.groups()
            target = "bn" if kind == "bn" else "out" if part == "conv_out" else part
            out[f"backbone.inserted.{layer}_{block}.{target}.{param}"] = value
            if part == "conv_out" and kind == "conv" and param == "weight":
                bias = f"backbone.inserted.{layer}_{block}.out.bias"
                out[bias] = torch.zeros(value.shape[0], dtype=value.dtype)
                reshaped.append(f"(none: mmcv's conv_out has no bias) -> {bias} zeros ({value.shape[0]},)")
        else:
            out[key] = value
    return out, reshaped
