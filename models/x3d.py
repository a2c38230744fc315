"""X3D (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020), with
PySlowFast's module names, so its ``.pyth`` checkpoints load key for key (weights/x3d.py).

    clip (B, 3, T, H, W)
      s1: stem    1x3x3 conv (stride 1,2,2) -> 5x1x1 depthwise conv -> BN -> ReLU        24 ch, stride 2
      s2..s5:     residual blocks: 1x1x1 -> 3x3x3 channel-wise (stride 1,2,2 in the first block) -> BN
                  -> SE (every other block) -> swish -> 1x1x1 -> BN, + shortcut, ReLU
                  24 / 48 / 96 / 192 ch at strides 4 / 8 / 16 / 32, 3 / 5 / 11 / 7 blocks
      head:       conv_5 1x1x1 (192 -> 432) -> BN -> ReLU -> average pool -> lin_5 1x1x1 (432 -> 2048) -> ReLU
                  = the (B, 2048) embedding; PySlowFast's ``head.projection`` is the Net's head

X3D-XS, -S and -M are one network (width factor 2, depth factor 2.2, bottleneck factor 2.25, c5 = 2048);
they differ in the clip they are trained on: XS 4 x 160^2, S 13 x 160^2, M 16 x 224^2 (``variant`` records
it in ``input_frames`` / ``input_size``; any clip size runs). PySlowFast pools the head over the training
clip's (T, H/32, W/32) with stride 1 and averages the softmax over the remaining positions at test time;
here the pool is global, which is the same at the training size.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import Tensor, nn

from models.backbones import StagedBackbone

# frames, crop size of each variant's recipe (PySlowFast configs/Kinetics/X3D_{XS,S,M}.yaml).
VARIANTS = {"xs": (4, 160), "s": (13, 160), "m": (16, 224)}


def round_width(width: float, multiplier: float, min_width: int = 1, divisor: int = 1) -> int:
    """PySlowFast's channel rounding: ``width * multiplier`` to a multiple of ``divisor``, never below 90 %."""
    width *= multiplier
    out = max(min_width or divisor, int(width + divisor / 2) // divisor * divisor)
    return int(out + divisor if out < 0.9 * width else out)


class SE(nn.Module):
    """Squeeze-excitation: global average -> 1x1x1 conv -> ReLU -> 1x1x1 conv -> sigmoid, scaling x."""

    def __init__(self, dim: int, ratio: float = 0.0625) -> None:
        super().__init__()
        inner = round_width(dim, ratio, min_width=8, divisor=8)
        self.avg_pool = nn.AdaptiveAvgPool3d(1)
        self.fc1 = nn.Conv3d(dim, inner, 1)
        self.fc1_act = nn.ReLU()
        self.fc2 = nn.Conv3d(inner, dim, 1)
        self.fc2_sig = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc2_sig(self.fc2(self.fc1_act(self.fc1(self.avg_pool(x)))))


def _bn(dim: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(dim, eps=1e-5, momentum=0.1)


class X3DTransform(nn.Module):
    """The residual branch: 1x1x1, channel-wise 3x3x3 (+ SE on even block indices), swish, 1x1x1."""

    def __init__(self, dim_in: int, dim_out: int, dim_inner: int, *, stride: int, use_se: bool) -> None:
        super().__init__()
        self.a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.a_bn = _bn(dim_inner)
        self.a_relu = nn.ReLU(inplace=True)
        self.b = nn.Conv3d(dim_inner, dim_inner, 3, stride=(1, stride, stride), padding=1, groups=dim_inner, bias=False)
        self.b_bn = _bn(dim_inner)
        self.se = SE(dim_inner) if use_se else nn.Identity()
        self.b_relu = nn.SiLU()  # swish
        self.c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.c_bn = _bn(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.se(self.b_bn(self.b(x))))
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, dim_inner: int, *, stride: int, use_se: bool) -> None:
        super().__init__()
        if dim_in != dim_out or stride != 1:
            self.branch1 = nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False)
            self.branch1_bn = _bn(dim_out)
        self.branch2 = X3DTransform(dim_in, dim_out, dim_inner, stride=stride, use_se=use_se)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.branch1_bn(self.branch1(x)) if hasattr(self, "branch1") else x
        return self.relu(shortcut + self.branch2(x))


class X3DStem(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, temporal_kernel: int = 5) -> None:
        super().__init__()
        self.conv_xy = nn.Conv3d(dim_in, dim_out, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
        self.conv = nn.Conv3d(
            dim_out, dim_out, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), groups=dim_out, bias=False
        )
        self.bn = _bn(dim_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(self.conv_xy(x))))


class X3DHead(nn.Module):
    """The head up to its pre-logits: conv_5 -> BN -> ReLU -> global average -> lin_5 -> ReLU: (B, dim_out)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int) -> None:
        super().__init__()
        self.conv_5 = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.conv_5_bn = _bn(dim_inner)
        self.conv_5_relu = nn.ReLU(inplace=True)
        self.avg_pool = nn.AdaptiveAvgPool3d(1)
        self.lin_5 = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.lin_5_relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avg_pool(self.conv_5_relu(self.conv_5_bn(self.conv_5(x))))  # (B, dim_inner, 1, 1, 1)
        return self.lin_5_relu(self.lin_5(x)).flatten(1)  # (B, dim_out)


class X3D(StagedBackbone):
    """X3D backbone; stages ``s2``..``s5``; the embedding is the head's 2048-d pre-logits."""

    stage_names = ["s2", "s3", "s4", "s5"]
    is_3d = True

    def __init__(
        self,
        *,
        variant: str = "m",
        width_factor: float = 2.0,
        depth_factor: float = 2.2,
        bottleneck_factor: float = 2.25,
        dim_c1: int = 12,
        dim_c5: int = 2048,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(
                f"model.backbone.variant={variant!r} is not an X3D variant; choose one of {list(VARIANTS)}"
            )
        self.variant = variant
        self.input_frames, self.input_size = VARIANTS[variant]
        dim_res1 = round_width(dim_c1, width_factor)
        self.s1 = nn.Sequential(OrderedDict(pathway0_stem=X3DStem(in_chans, dim_res1)))
        # Stage widths before the width factor: 12, 24, 48, 96 (res2 not scaled, then x2 per stage).
        widths = [dim_c1]
        for _ in range(3):
            widths.append(round_width(widths[-1], 2.0, divisor=8))
        dim_in, channels, strides = dim_res1, {}, {}
        for i, (name, blocks, width) in enumerate(zip(self.stage_names, [1, 2, 5, 3], widths, strict=True)):
            dim_out = round_width(width, width_factor)
            dim_inner = int(bottleneck_factor * dim_out)
            layers = OrderedDict()
            for j in range(int(math.ceil(depth_factor * blocks))):
                layers[f"pathway0_res{j}"] = ResBlock(
                    dim_in if j == 0 else dim_out, dim_out, dim_inner, stride=2 if j == 0 else 1, use_se=j % 2 == 0
                )
            setattr(self, name, nn.Sequential(layers))
            dim_in = dim_out
            channels[name], strides[name] = dim_out, 4 * 2**i
        self.stage_channels, self.stage_strides = channels, strides
        self.head = X3DHead(dim_out, dim_inner, dim_c5)
        self._num_features = dim_c5
        self._init_weights()

    def _init_weights(self) -> None:
        # PySlowFast's init_helper: MSRA fill for convs, BN scale 1 and bias 0, except the last BN of each
        # residual branch, which starts at 0 (RESNET.ZERO_INIT_FINAL_BN) so every block starts as identity.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, X3DTransform):
                nn.init.zeros_(m.c_bn.weight)

    def stem(self, x: Tensor) -> Tensor:
        return self.s1(x)

    @property
    def num_features(self) -> int:
        return self._num_features

    def forward_pooled(self, x: Tensor) -> Tensor:
        return self.head(self.forward_stages(x, ["s5"])["s5"])  # (B, 2048)
