"""The Sports-1M C3D weights as converted by DavideA/c3d-pytorch (``c3d.pickle``): a torch state dict.

Keys ``conv1.weight`` .. ``conv5b.bias``, ``fc6.*``, ``fc7.*`` are the names of models/c3d.py and land
under ``backbone.``; ``fc8`` (487 Sports-1M classes) becomes ``Net.head`` (skipped, and reported, when
num_classes differs). Read with ``torch.load(weights_only=True)`` like every checkpoint.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.c3d import C3D
from weights.foreign import backbone_of


def matches(state: dict[str, Tensor]) -> bool:
    return {"conv3a.weight", "fc6.weight", "fc7.weight"} <= state.keys()


def convert(state: dict[str, Tensor], net: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    backbone_of(net, "C3D (c3d.pickle)", (C3D,))
    out = {}
    for key, value in state.items():
        out[("head." + key.removeprefix("fc8.")) if key.startswith("fc8.") else "backbone." + key] = value
    return out, []
