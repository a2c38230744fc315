"""Renames from the checkpoint formats that backbones' authors publish to the Net's keys, by backbone type:
the dispatch ``nets.pretrained.load_pretrained`` consults after the keys as they are."""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from models.tsm import TSM
from models.tv_video import TorchvisionVideo
from models.x3d import X3D
from weights.mmaction_tsm import mmaction_tsm_rename
from weights.x3d import pyslowfast_x3d_rename

Rename = Callable[[str], str]


def published_renames(backbone: nn.Module | None) -> list[Rename]:
    """Full-key renames (``head.`` included) for the formats of ``backbone``'s published checkpoints."""
    if isinstance(backbone, X3D):
        return [pyslowfast_x3d_rename]
    if isinstance(backbone, TSM):
        return [mmaction_tsm_rename]
    if isinstance(backbone, TorchvisionVideo):
        return [torchvision_video_head]
    return []


def torchvision_video_head(key: str) -> str:
    """torchvision's video classifiers onto the Net's head: MViT's ``head.1.*`` (after its dropout); Swin's
    ``head.*`` already is the head. S3D's 1x1x1 conv classifier (``classifier.1.*``) has 5-d weights
    and is reported as unexpected."""
    if m := re.match(r"head\.1\.(weight|bias)$", key):
        return f"head.{m[1]}"
    return key
