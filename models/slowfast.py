"""SlowFast (Feichtenhofer et al., "SlowFast Networks for Video Recognition", ICCV 2019), ResNet pathways.

One clip ``(B, C, T, H, W)`` goes in; the net samples its two pathways itself: the Fast pathway sees every
frame with 1/beta of the channels, the Slow one every alpha-th frame. After the stem and each of res2..res4
a lateral connection (a time-strided conv, kernel ``fusion_kernel`` x1x1, stride alpha) carries Fast into
Slow, concatenated to Slow's channels. Layers and names follow PySlowFast (``s1.pathway0_stem.conv``,
``s2.pathway0_res0.branch2.a``, ``s1_fuse.conv_f2s``), so its ``.pyth`` checkpoints land unchanged under
``backbone.`` (weights/pyslowfast.py). SlowFast R50 4x16 (alpha 8, beta 1/8, 32 input frames):

    clip (B, 3, 32, 224, 224) -> slow (B, 3, 4, 224, 224), fast (B, 3, 32, 224, 224)
      s1  stems (slow 1x7x7, fast 5x7x7) + max-pool       slow (B, 64, 4, 56, 56)   fast (B, 8, 32, 56, 56)
      s2  s1_fuse, res2 (3 blocks)                        slow (B, 256, 4, 56, 56)  fast (B, 32, 32, 56, 56)
      s3  s2_fuse, res3 (4 blocks)                        slow (B, 512, 4, 28, 28)  fast (B, 64, 32, 28, 28)
      s4  s3_fuse, res4 (6 blocks)                        slow (B, 1024, 4, 14, 14) fast (B, 128, 32, 14, 14)
      s5  s4_fuse, res5 (3 blocks)                        slow (B, 2048, 4, 7, 7)   fast (B, 256, 32, 7, 7)

A stage's map is both pathways' outputs (before the next lateral fusion) concatenated on channels, Fast
averaged over each alpha frames to Slow's time steps: ``(B, C_slow + C_fast, T/alpha, H, W)``. Its global
average is the concatenation of the two pathways' pooled features (2048 + 256 for R50), PySlowFast's head
input, and ROI heads and fusion necks read it like any stage map. ``forward_pathways`` gives the two maps.
``fusion_norm=False`` drops the BN and ReLU after each lateral conv: MMAction2's SlowFast (``lateral_norm=False``,
its default and that of most of its published checkpoints) concatenates the bare conv output.
Temporal kernels are PySlowFast's "slowfast" basis: Slow 1 in the stem, res2 and res3, 3 in res4 and
res5; Fast 5 in the stem and 3 everywhere else. The Slow pathway takes every alpha-th frame (0, 8, 16, 24 of
32), as MMAction2 does; PySlowFast's loader spreads them by a linspace instead (0, 10, 20, 31).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones import StagedBackbone

_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
# Temporal kernel of the stem and of res2..res5, Slow and Fast (PySlowFast _TEMPORAL_KERNEL_BASIS["slowfast"]).
_TEMPORAL_KERNELS = ((1, 5), (1, 3), (1, 3), (3, 3), (3, 3))

Pathways = list[Tensor]  # [slow (B, C_s, T/alpha, H, W), fast (B, C_f, T, H, W)]


class Stem(nn.Module):
    """Conv (kt x 7 x 7, stride 1x2x2) -> BN -> ReLU -> max-pool 1x3x3 stride 1x2x2 (ResNetBasicStem)."""

    def __init__(self, c_in: int, c_out: int, kt: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, (kt, 7, 7), stride=(1, 2, 2), padding=(kt // 2, 3, 3), bias=False)
        self.bn = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.pool_layer = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool_layer(self.relu(self.bn(self.conv(x))))


class PathwayStems(nn.Module):
    """PySlowFast's VideoModelStem: one stem per pathway."""

    def __init__(self, c_in: int, widths: tuple[int, int], kernels: tuple[int, int]) -> None:
        super().__init__()
        self.pathway0_stem = Stem(c_in, widths[0], kernels[0])
        self.pathway1_stem = Stem(c_in, widths[1], kernels[1])

    def forward(self, x: Pathways) -> Pathways:
        return [self.pathway0_stem(x[0]), self.pathway1_stem(x[1])]


class FuseFastToSlow(nn.Module):
    """Fast -> Slow lateral connection: conv (k x 1 x 1, stride alpha) [-> BN -> ReLU], concatenated to Slow."""

    def __init__(self, c_fast: int, *, ratio: int, kernel: int, alpha: int, norm: bool = True) -> None:
        super().__init__()
        self.conv_f2s = nn.Conv3d(
            c_fast, c_fast * ratio, (kernel, 1, 1), stride=(alpha, 1, 1), padding=(kernel // 2, 0, 0), bias=False
        )
        # PySlowFast: BN + ReLU after the conv; MMAction2 (lateral_norm=False): the bare conv.
        self.bn = nn.BatchNorm3d(c_fast * ratio) if norm else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Pathways) -> Pathways:
        slow, fast = x
        lateral = self.conv_f2s(fast)  # (B, ratio*C_f, T/alpha, H, W)
        if self.bn is not None:
            lateral = self.relu(self.bn(lateral))
        return [torch.cat([slow, lateral], dim=1), fast]


class BottleneckTransform(nn.Module):
    """kt x 1 x 1 -> 1 x 3 x 3 (stride) -> 1 x 1 x 1, each with BN (ReLU after the first two)."""

    def __init__(self, c_in: int, c_out: int, inner: int, *, kt: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Conv3d(c_in, inner, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.a_bn = nn.BatchNorm3d(inner)
        self.b = nn.Conv3d(inner, inner, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)
        self.b_bn = nn.BatchNorm3d(inner)
        self.c = nn.Conv3d(inner, c_out, 1, bias=False)
        self.c_bn = nn.BatchNorm3d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.a_bn(self.a(x)), inplace=True)
        x = F.relu(self.b_bn(self.b(x)), inplace=True)
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, inner: int, *, kt: int, stride: int) -> None:
        super().__init__()
        if c_in != c_out or stride != 1:
            self.branch1 = nn.Conv3d(c_in, c_out, 1, stride=(1, stride, stride), bias=False)
            self.branch1_bn = nn.BatchNorm3d(c_out)
        self.branch2 = BottleneckTransform(c_in, c_out, inner, kt=kt, stride=stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.branch1_bn(self.branch1(x)) if hasattr(self, "branch1") else x
        return self.relu(shortcut + self.branch2(x))


class ResStage(nn.Module):
    """The residual blocks of both pathways in one stage: ``pathway{p}_res{i}``."""

    def __init__(self, c_in, c_out, inner, *, blocks: int, kernels: tuple[int, int], stride: int) -> None:
        super().__init__()
        self.blocks = blocks
        for p in range(2):
            for i in range(blocks):
                block = ResBlock(
                    c_in[p] if i == 0 else c_out[p], c_out[p], inner[p], kt=kernels[p], stride=stride if i == 0 else 1
                )
                self.add_module(f"pathway{p}_res{i}", block)

    def forward(self, x: Pathways) -> Pathways:
        out = []
        for p, y in enumerate(x):
            for i in range(self.blocks):
                y = getattr(self, f"pathway{p}_res{i}")(y)
            out.append(y)
        return out


class SlowFast(StagedBackbone):
    stage_names = ["s1", "s2", "s3", "s4", "s5"]
    is_3d = True

    def __init__(
        self,
        *,
        depth: int = 50,
        in_chans: int = 3,
        alpha: int = 8,
        beta_inv: int = 8,
        fusion_conv_channel_ratio: int = 2,
        fusion_kernel: int = 5,
        fusion_norm: bool = True,
        width: int = 64,
    ) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"model.backbone.depth={depth} is not a SlowFast depth; choose one of {sorted(_DEPTHS)}")
        for name, value in (("alpha", alpha), ("beta_inv", beta_inv), ("fusion_kernel", fusion_kernel)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.backbone.{name}={value!r} must be a positive integer")
        if fusion_kernel % 2 == 0:
            raise ValueError(f"model.backbone.fusion_kernel={fusion_kernel} must be odd (centred in time)")
        if width % beta_inv:
            raise ValueError(f"model.backbone.beta_inv={beta_inv} must divide the width {width}")
        self.alpha = alpha
        lateral = fusion_conv_channel_ratio

        def fuse(c_fast: int) -> FuseFastToSlow:
            return FuseFastToSlow(c_fast, ratio=lateral, kernel=fusion_kernel, alpha=alpha, norm=fusion_norm)

        slow, fast = width, width // beta_inv
        self.s1 = PathwayStems(in_chans, (slow, fast), _TEMPORAL_KERNELS[0])
        out = {"s1": (slow, fast)}
        for i, blocks in enumerate(_DEPTHS[depth]):
            name, prev = f"s{i + 2}", f"s{i + 1}"
            setattr(self, f"{prev}_fuse", fuse(out[prev][1]))
            c_in = (out[prev][0] + lateral * out[prev][1], out[prev][1])
            scale = 2**i
            c_out = (width * 4 * scale, width * 4 * scale // beta_inv)
            inner = (width * scale, width * scale // beta_inv)
            stage = ResStage(
                c_in, c_out, inner, blocks=blocks, kernels=_TEMPORAL_KERNELS[i + 1], stride=1 if i == 0 else 2
            )
            setattr(self, name, stage)
            out[name] = c_out
        self.pathway_channels = out
        self.stage_channels = {s: sum(c) for s, c in out.items()}
        self.stage_strides = {"s1": 4, "s2": 4, "s3": 8, "s4": 16, "s5": 32}

    def stem(self, x: Tensor) -> Pathways:
        if x.ndim != 5:
            raise ValueError(f"SlowFast takes clips (B, C, T, H, W); got input of shape {tuple(x.shape)}")
        return [x[:, :, :: self.alpha], x]  # slow: every alpha-th frame; fast: all frames

    def stage_blocks(self, stage: str) -> nn.Sequential:
        # The lateral fusion feeding a stage opens it, so every stage ends with both pathways' own outputs.
        blocks = super().stage_blocks(stage)
        if stage == "s1":
            return nn.Sequential(blocks)
        return nn.Sequential(getattr(self, f"s{int(stage[1]) - 1}_fuse"), blocks)

    def insert_after(self, stage: str, block: int, module: nn.Module) -> None:
        raise ValueError(
            "non-local blocks are not supported in SlowFast here (its blocks carry two pathways of different "
            "widths); drop model/nonlocal, or use model=i3d_r50 for a non-local I3D"
        )

    def forward_pathways(self, x: Tensor, stages: Sequence[str] | None = None) -> dict[str, Pathways]:
        """Each stage's two maps ``[slow, fast]``, unmerged."""
        return super().forward_stages(x, stages)  # type: ignore[return-value]

    def forward_stages(self, x: Tensor, stages: Sequence[str] | None = None) -> dict[str, Tensor]:
        return {name: self.merge(maps) for name, maps in self.forward_pathways(x, stages).items()}

    @staticmethod
    def merge(maps: Pathways) -> Tensor:
        """``[slow, fast]`` -> ``(B, C_s + C_f, T_s, H, W)``, Fast averaged over time to Slow's steps."""
        slow, fast = maps
        fast = F.adaptive_avg_pool3d(fast, slow.shape[2:])  # (B, C_f, T_s, H, W)
        return torch.cat([slow, fast], dim=1)
