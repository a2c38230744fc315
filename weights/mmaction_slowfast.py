"""MMAction2's SlowFast checkpoints (``slowfast_r50_8xb8-4x16x1-256e_kinetics400-rgb_*.pth`` and the like) onto
models/slowfast.py.

An MMAction2 ``.pth`` is ``{"meta", "state_dict"}``; its ``ResNet3dSlowFast`` holds two ``ResNet3dPathway`` modules
(``slow_path``, ``fast_path``) whose convs are mmcv ``ConvModule`` pairs (``conv`` + ``bn``), and the Slow pathway
owns the Fast->Slow lateral convs (after the stem and after layer1..layer3, none after layer4). models/slowfast.py
keeps PySlowFast's names, so (``p`` = 0 for ``slow_path``, 1 for ``fast_path``; under ``backbone.``):

    {slow,fast}_path.conv1.{conv,bn}                       -> s1.pathway{p}_stem.{conv,bn}
    {slow,fast}_path.layer{L}.{i}.conv{1,2,3}.conv         -> s{L+1}.pathway{p}_res{i}.branch2.{a,b,c}
    {slow,fast}_path.layer{L}.{i}.conv{1,2,3}.bn           -> s{L+1}.pathway{p}_res{i}.branch2.{a,b,c}_bn
    {slow,fast}_path.layer{L}.{i}.downsample.{conv,bn}     -> s{L+1}.pathway{p}_res{i}.{branch1,branch1_bn}
    slow_path.conv1_lateral.{conv,bn}                      -> s1_fuse.{conv_f2s,bn}
    slow_path.layer{L}_lateral.{conv,bn}                   -> s{L+1}_fuse.{conv_f2s,bn}      (L = 1..3)
    cls_head.fc_cls.{weight,bias}                          -> head.{weight,bias} (weight's columns reordered)

The layouts are the same network (R50 4x16: stems 1x7x7 / 5x7x7, 3x1x1 first convs in Slow's layer3-4 and all of
Fast's, laterals 5x1x1 of stride 8 from 8/32/64/128 to 16/64/128/256 channels, concatenated after Slow's
channels; the Slow pathway takes frames 0, 8, 16, 24 as MMAction2's nearest resampling does), with three
differences the loader deals with:

- ``SlowFastHead`` concatenates the pooled pathways Fast first (256 + 2048), the Net's embedding Slow first: the
  head weight's columns are swapped, reported under "reshaped".
- MMAction2's laterals carry no BN or ReLU unless ``lateral_norm=True`` (its default is False, as in the 4x16,
  8x8 and R101 configs; the ``8x8x1-steplr`` checkpoint has them). Such files need
  ``model.backbone.fusion_norm=false``; a file and a net that disagree fail before loading, naming the setting.
- ``speed_ratio`` (alpha) is not in the keys; the laterals' temporal kernel is, and a mismatch with
  ``model.backbone.fusion_kernel`` fails naming both (8x8 files: ``alpha=4 fusion_kernel=7``).

With those set, a mapped net gives the class scores of MMAction2's ``ResNet3dSlowFast`` + ``SlowFastHead``
(checked once against mmaction2 1.2.0, see tests/test_video_zoo_a.py). MMAction2 normalises its SlowFast inputs
with ImageNet's mean and std (its ``data_preprocessor``: 123.675/58.395, ... on 0-255), not PySlowFast's
0.45/0.225: set ``data.mean=[0.485,0.456,0.406] data.std=[0.229,0.224,0.225]``. ``slowfast_r101-r50`` (a
101-layer Slow and a 50-layer Fast pathway) has no counterpart here (one depth for both) and is refused.

    python train.py model=slowfast model.backbone.fusion_norm=false model.pretrained=/w/slowfast_r50_4x16.pth \
        data.mean=[0.485,0.456,0.406] data.std=[0.229,0.224,0.225]
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from models.slowfast import SlowFast
from weights.foreign import backbone_of

MARKER = "backbone.slow_path.conv1.conv.weight"
_PATHWAY = {"slow": 0, "fast": 1}
_BRANCH2 = {"1": "a", "2": "b", "3": "c"}
_DEPTH_OF_LAYER3 = {6: 50, 23: 101}  # blocks in layer3 (res4) -> ResNet depth


def matches(state: dict[str, Tensor]) -> bool:
    return MARKER in state


def convert(state: dict[str, Tensor], net: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    backbone = backbone_of(net, "MMAction2 SlowFast", (SlowFast,))
    _check_depth(state, backbone)
    _check_laterals(state, backbone)
    out, reshaped = {}, []
    for key, value in state.items():
        if key == "cls_head.fc_cls.weight":
            value = _slow_first(value, backbone, reshaped)
        out[mmaction_slowfast_key(key)] = value
    return out, reshaped


def mmaction_slowfast_key(key: str) -> str:
    """An MMAction2 ``ResNet3dSlowFast`` / ``SlowFastHead`` key under the net's names (unknown keys keep theirs)."""
    if m := re.fullmatch(r"backbone\.(slow|fast)_path\.conv1\.(conv|bn)\.(\w+)", key):
        return f"backbone.s1.pathway{_PATHWAY[m[1]]}_stem.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"backbone\.(slow|fast)_path\.layer(\d)\.(\d+)\.conv([123])\.(conv|bn)\.(\w+)", key):
        block = f"backbone.s{int(m[2]) + 1}.pathway{_PATHWAY[m[1]]}_res{m[3]}"
        return f"{block}.branch2.{_BRANCH2[m[4]]}{'_bn' if m[5] == 'bn' else ''}.{m[6]}"
    if m := re.fullmatch(r"backbone\.(slow|fast)_path\.layer(\d)\.(\d+)\.downsample\.(conv|bn)\.(\w+)", key):
        block = f"backbone.s{int(m[2]) + 1}.pathway{_PATHWAY[m[1]]}_res{m[3]}"
        return f"{block}.branch1{'_bn' if m[4] == 'bn' else ''}.{m[5]}"
    if m := re.fullmatch(r"backbone\.slow_path\.(?:conv1|layer(\d))_lateral\.(conv|bn)\.(\w+)", key):
        stage = 1 if m[1] is None else int(m[1]) + 1
        return f"backbone.s{stage}_fuse.{'conv_f2s' if m[2] == 'conv' else 'bn'}.{m[3]}"
    if m := re.fullmatch(r"cls_head\.fc_cls\.(weight|bias)", key):
        return f"head.{m[1]}"
    return key


def _slow_first(weight: Tensor, backbone: SlowFast, reshaped: list[str]) -> Tensor:
    """SlowFastHead's ``fc_cls.weight`` (N, C_fast + C_slow) with its columns as the Net's (N, C_slow + C_fast)."""
    c_slow, c_fast = backbone.pathway_channels[backbone.stage_names[-1]]
    if weight.ndim != 2 or weight.shape[1] != c_slow + c_fast:
        return weight  # not this net's head input: assign() skips it on shape and reports it
    reshaped.append(
        f"cls_head.fc_cls.weight {tuple(weight.shape)} -> head.weight {tuple(weight.shape)}: columns "
        f"[fast {c_fast} | slow {c_slow}] -> [slow | fast] (MMAction2's SlowFastHead concatenates Fast first)"
    )
    return torch.cat([weight[:, c_fast:], weight[:, :c_fast]], dim=1)  # (N, C_slow + C_fast)


def _check_depth(state: dict[str, Tensor], backbone: SlowFast) -> None:
    blocks = {}
    for path in _PATHWAY:
        found = [int(m[1]) for k in state if (m := re.match(rf"backbone\.{path}_path\.layer3\.(\d+)\.", k))]
        blocks[path] = 1 + max(found, default=-1)
    if blocks["slow"] != blocks["fast"]:
        raise ValueError(
            f"this MMAction2 SlowFast checkpoint has pathways of different depths (layer3: {blocks['slow']} Slow "
            f"blocks, {blocks['fast']} Fast blocks, e.g. slowfast_r101-r50); models/slowfast.py gives both "
            f"pathways one depth (model.backbone.depth)"
        )
    ours = backbone.s4.blocks
    if blocks["slow"] != ours and blocks["slow"] in _DEPTH_OF_LAYER3:
        depth = _DEPTH_OF_LAYER3[blocks["slow"]]
        raise ValueError(
            f"this MMAction2 SlowFast checkpoint is a ResNet-{depth} ({blocks['slow']} blocks in layer3), the net "
            f"a ResNet-{_DEPTH_OF_LAYER3.get(ours, ours)}; set model.backbone.depth={depth}"
        )


def _check_laterals(state: dict[str, Tensor], backbone: SlowFast) -> None:
    conv = state.get("backbone.slow_path.conv1_lateral.conv.weight")
    if conv is None or conv.ndim != 5:
        return  # no laterals in the file (the net's are reported missing), or not a conv (skipped on shape)
    has_norm = "backbone.slow_path.conv1_lateral.bn.weight" in state
    if has_norm != (backbone.s1_fuse.bn is not None):
        file = "has a BN (and ReLU)" if has_norm else "has no BN or ReLU (MMAction2's lateral_norm=False)"
        net = "have them" if backbone.s1_fuse.bn is not None else "have none"
        raise ValueError(
            f"this MMAction2 SlowFast checkpoint's lateral convs {file}, the net's {net}: set "
            f"model.backbone.fusion_norm={'true' if has_norm else 'false'}"
        )
    kernel, ours = conv.shape[2], backbone.s1_fuse.conv_f2s.kernel_size[0]
    if kernel != ours:
        raise ValueError(
            f"this MMAction2 SlowFast checkpoint's lateral convs have a temporal kernel of {kernel}, the net's "
            f"{ours}: set model.backbone.fusion_kernel={kernel} and model.backbone.alpha to the file's speed_ratio "
            f"(MMAction2's 8x8 configs: alpha=4 fusion_kernel=7; 4x16: alpha=8 fusion_kernel=5)"
        )
