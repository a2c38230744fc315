"""MMAction2's TSM checkpoints (``tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb_*.pth`` and
the like) onto ``models.tsm.TSM``.

An MMAction2 ``.pth`` is ``{"meta", "state_dict", ...}`` with ``backbone.`` and ``cls_head.`` prefixes; its
ResNet wraps every conv in an mmcv ``ConvModule`` (``conv`` + ``bn``) and TSM wraps each block's first conv
in a ``TemporalShift`` (``.net``). The TSM backbone here keeps torchvision's names, so:

    backbone.conv1.conv.weight / backbone.conv1.bn.*           -> backbone.conv1.weight / backbone.bn1.*
    backbone.layerL.B.convN.conv[.net].weight                  -> backbone.layerL.B.convN.weight
    backbone.layerL.B.convN.bn.*                               -> backbone.layerL.B.bnN.*
    backbone.layerL.B.downsample.conv.weight / .bn.*           -> backbone.layerL.B.downsample.0.weight / .1.*
    cls_head.fc_cls.{weight,bias}                              -> head.{weight,bias}

    python train.py model=tsm model.pretrained=/path/tsm_r50_kinetics400.pth
"""

from __future__ import annotations

import re


def mmaction_tsm_rename(key: str) -> str:
    if m := re.match(r"backbone\.conv1\.(conv|bn)\.(.+)$", key):
        return f"backbone.{'conv1' if m[1] == 'conv' else 'bn1'}.{m[2]}"
    if m := re.match(r"backbone\.(layer\d\.\d+)\.conv(\d)\.(conv(?:\.net)?|bn)\.(.+)$", key):
        return f"backbone.{m[1]}.{'conv' if m[3] != 'bn' else 'bn'}{m[2]}.{m[4]}"
    if m := re.match(r"backbone\.(layer\d\.\d+)\.downsample\.(conv|bn)\.(.+)$", key):
        return f"backbone.{m[1]}.downsample.{0 if m[2] == 'conv' else 1}.{m[3]}"
    if m := re.match(r"cls_head\.fc_cls\.(weight|bias)$", key):
        return f"head.{m[1]}"
    return key
