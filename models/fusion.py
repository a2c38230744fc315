"""Fusion necks: several backbone stage maps -> one map, which feeds the pooled head, the ROI head or the
temporal module (``Net`` asks the backbone for ``in_stages`` and hands the maps over as a dict).

    fpn       FPN top-down pathway (Lin et al., 2017): 1x1 laterals to ``channels``, coarser sums upsampled
              (nearest) into finer ones, a 3x3 conv on the result; output at the finest stage's stride.
    concat    every map average-pooled to the coarsest stage's size and concatenated along channels; its
              global average is the concatenation of the stages' pooled features.
    weighted  1x1 laterals to ``channels``, resized (bilinear / trilinear) to the finest stage, summed with
              learned non-negative weights normalised to sum to one (EfficientDet's "fast normalised fusion").

Maps are 2D ``(N, C, H, W)`` or 3D ``(N, C, T, H, W)`` after the backbone's ``is_3d``; ``stages=None``
takes the backbone's last three stages (all of them if it has fewer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones import StagedBackbone


class Fusion(nn.Module):
    """Stage selection and geometry shared by the necks; subclasses set ``out_channels``/``out_stride``."""

    out_channels: int
    out_stride: int

    def __init__(self, *, backbone: StagedBackbone, stages: Sequence[str] | None = None) -> None:
        super().__init__()
        names = list(stages) if stages is not None else backbone.stage_names[-3:]
        unknown = [s for s in names if s not in backbone.stage_names]
        if unknown:
            raise ValueError(
                f"model.fusion.stages names {unknown}; this backbone ({type(backbone).__name__}) "
                f"has stages {backbone.stage_names}"
            )
        if len(set(names)) < 2:
            raise ValueError(f"model.fusion.stages={names} must name at least two different stages")
        self.in_stages = sorted(set(names), key=backbone.stage_names.index)  # finest first
        self.in_channels = [backbone.stage_channels[s] for s in self.in_stages]
        self.in_strides = [backbone.stage_strides[s] for s in self.in_stages]
        self.is_3d = backbone.is_3d

    @property
    def out_features(self) -> int:
        return self.out_channels

    def conv(self, c_in: int, c_out: int, kernel: int) -> nn.Module:
        return (nn.Conv3d if self.is_3d else nn.Conv2d)(c_in, c_out, kernel, padding=kernel // 2)

    def ordered(self, maps: dict[str, Tensor]) -> list[Tensor]:
        missing = [s for s in self.in_stages if s not in maps]
        if missing:
            raise ValueError(f"fusion needs the maps of stages {self.in_stages}; missing {missing}")
        return [maps[s] for s in self.in_stages]

    def pool(self, fmap: Tensor) -> Tensor:
        return fmap.flatten(2).mean(-1)  # (N, C)


class FPNFusion(Fusion):
    def __init__(self, *, backbone: StagedBackbone, stages: Sequence[str] | None = None, channels: int = 128):
        super().__init__(backbone=backbone, stages=stages)
        self.laterals = nn.ModuleList([self.conv(c, channels, 1) for c in self.in_channels])
        self.smooth = self.conv(channels, channels, 3)
        self.out_channels, self.out_stride = channels, self.in_strides[0]

    def forward(self, maps: dict[str, Tensor]) -> Tensor:
        xs = self.ordered(maps)
        top = self.laterals[-1](xs[-1])
        for lateral, x in zip(reversed(self.laterals[:-1]), reversed(xs[:-1]), strict=True):
            top = lateral(x) + F.interpolate(top, size=x.shape[2:], mode="nearest")
        return self.smooth(top)  # (N, channels, *finest spatial)


class ConcatFusion(Fusion):
    def __init__(self, *, backbone: StagedBackbone, stages: Sequence[str] | None = None):
        super().__init__(backbone=backbone, stages=stages)
        self.out_channels, self.out_stride = sum(self.in_channels), self.in_strides[-1]

    def forward(self, maps: dict[str, Tensor]) -> Tensor:
        xs = self.ordered(maps)
        pool = F.adaptive_avg_pool3d if self.is_3d else F.adaptive_avg_pool2d
        size = xs[-1].shape[2:]
        return torch.cat([pool(x, size) for x in xs], dim=1)  # (N, sum C, *coarsest spatial)


class WeightedFusion(Fusion):
    def __init__(
        self,
        *,
        backbone: StagedBackbone,
        stages: Sequence[str] | None = None,
        channels: int = 128,
        eps: float = 1e-4,
    ):
        super().__init__(backbone=backbone, stages=stages)
        self.laterals = nn.ModuleList([self.conv(c, channels, 1) for c in self.in_channels])
        self.weights = nn.Parameter(torch.ones(len(self.in_stages)))
        self.eps = eps
        self.out_channels, self.out_stride = channels, self.in_strides[0]

    def normalized_weights(self) -> Tensor:
        w = F.relu(self.weights)
        return w / (w.sum() + self.eps)

    def forward(self, maps: dict[str, Tensor]) -> Tensor:
        xs = self.ordered(maps)
        size, mode = xs[0].shape[2:], "trilinear" if self.is_3d else "bilinear"
        resized = [
            F.interpolate(lat(x), size=size, mode=mode, align_corners=False) if x.shape[2:] != size else lat(x)
            for lat, x in zip(self.laterals, xs, strict=True)
        ]
        w = self.normalized_weights()
        return sum(w[i] * r for i, r in enumerate(resized))  # (N, channels, *finest spatial)
