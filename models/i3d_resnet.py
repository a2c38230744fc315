"""I3D ResNet (the "I3D R50" of MMAction2 and PySlowFast): a ResNet bottleneck network inflated to 3D.

Layers and names follow MMAction2's ``ResNet3d`` (``conv1.conv``, ``conv1.bn``, ``layer1.0.conv1.conv``,
``layer1.0.downsample.conv`` ...), so its checkpoints' ``backbone.`` keys land unchanged (weights/mmaction.py);
PySlowFast's I3D keys are renamed onto the same layers (weights/pyslowfast.py). Defaults: MMAction2's
``configs/_base_/models/i3d_r50.py``:

    clip (B, 3, T, 224, 224)
      stem    conv1 5x7x7 stride (2, 2, 2), max-pool 1x3x3 stride (2, 2, 2)   (B, 64, T/4, 56, 56)
      layer1  3 bottlenecks, then pool2 2x1x1 stride 2 (in time)              (B, 256, T/8, 56, 56)
      layer2  4 bottlenecks                                                   (B, 512, T/8, 28, 28)
      layer3  6 bottlenecks                                                   (B, 1024, T/8, 14, 14)
      layer4  3 bottlenecks                                                   (B, 2048, T/8, 7, 7)

A bottleneck with ``inflate`` 1 has a 3x1x1 first conv (``inflate_style="3x1x1"``; ``"3x3x3"`` inflates the
second conv instead); ``inflate`` lists one flag per block and stage ((1,1,1), (1,0,1,0), (1,0,1,0,1,0),
(0,1,0) as in the paper's I3D R50). The stride sits on the 3x3 conv (MMAction2's "pytorch" style).
MMAction2 reports layer1's output after pool2, and so does the ``layer1`` stage (its last block is pool2).
Non-local blocks go after bottlenecks as for the 2D ResNets (conf/model/nonlocal/*).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.backbones import StagedBackbone

_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
INFLATE_R50 = ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))


class ConvBN(nn.Module):
    """Conv3d (no bias) -> BatchNorm3d [-> ReLU]: MMAction2's ``ConvModule`` with the same child names."""

    def __init__(self, c_in: int, c_out: int, kernel, *, stride=1, padding=0, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm3d(c_out)
        self.activate = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class Bottleneck3d(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, *, stride: int, inflate: bool, inflate_style: str) -> None:
        super().__init__()
        t1, t2 = (3, 1) if inflate and inflate_style == "3x1x1" else (1, 3) if inflate else (1, 1)
        c_out = planes * self.expansion
        self.conv1 = ConvBN(c_in, planes, (t1, 1, 1), padding=(t1 // 2, 0, 0))
        self.conv2 = ConvBN(planes, planes, (t2, 3, 3), stride=(1, stride, stride), padding=(t2 // 2, 1, 1))
        self.conv3 = ConvBN(planes, c_out, 1, relu=False)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = ConvBN(c_in, c_out, 1, stride=(1, stride, stride), relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class I3DResNet(StagedBackbone):
    stage_names = ["layer1", "layer2", "layer3", "layer4"]
    stage_channels = dict(zip(stage_names, [256, 512, 1024, 2048], strict=True))
    stage_strides = dict(zip(stage_names, [4, 8, 16, 32], strict=True))
    is_3d = True

    def __init__(
        self,
        *,
        depth: int = 50,
        in_chans: int = 3,
        conv1_kernel: Sequence[int] = (5, 7, 7),
        conv1_stride_t: int = 2,
        pool1_stride_t: int = 2,
        with_pool2: bool = True,
        inflate: Sequence[Sequence[int]] = INFLATE_R50,
        inflate_style: str = "3x1x1",
    ) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"model.backbone.depth={depth} is not a ResNet3d depth; choose one of {sorted(_DEPTHS)}")
        if inflate_style not in ("3x1x1", "3x3x3"):
            raise ValueError(f"model.backbone.inflate_style={inflate_style!r}: choose 3x1x1 or 3x3x3")
        blocks = _DEPTHS[depth]
        inflate = [[int(f) for f in flags] for flags in inflate]
        if [len(f) for f in inflate] != list(blocks):
            raise ValueError(
                f"model.backbone.inflate={inflate} needs one 0/1 flag per block: {list(blocks)} blocks per stage "
                f"for depth {depth}"
            )
        kt, kh, kw = conv1_kernel
        self.conv1 = ConvBN(
            in_chans, 64, (kt, kh, kw), stride=(conv1_stride_t, 2, 2), padding=(kt // 2, kh // 2, kw // 2)
        )
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(pool1_stride_t, 2, 2), padding=(0, 1, 1))
        self.pool2 = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1)) if with_pool2 else None
        c_in = 64
        for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            layer = []
            for b in range(n):
                stride = 2 if i > 0 and b == 0 else 1
                flag = bool(inflate[i][b])
                layer.append(Bottleneck3d(c_in, planes, stride=stride, inflate=flag, inflate_style=inflate_style))
                c_in = planes * Bottleneck3d.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.conv1(x))  # (B, 64, T/4, H/4, W/4)

    def stage_blocks(self, stage: str) -> nn.Sequential:
        blocks = super().stage_blocks(stage)
        if stage == "layer1" and self.pool2 is not None:
            return nn.Sequential(*blocks, self.pool2)  # a container over the same modules: keys unchanged
        return blocks
