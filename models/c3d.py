"""C3D (Tran et al., "Learning Spatiotemporal Features with 3D Convolutional Networks", ICCV 2015).

Eight 3x3x3 convolutions and five max-pools, then fc6 and fc7 (4096 each), as in the Sports-1M model:

    clip (B, 3, 16, 112, 112)
      conv1  conv1 64  -> pool1 1x2x2                  (B, 64, 16, 56, 56)
      conv2  conv2 128 -> pool2 2x2x2                  (B, 128, 8, 28, 28)
      conv3  conv3a/b 256 -> pool3                     (B, 256, 4, 14, 14)
      conv4  conv4a/b 512 -> pool4                     (B, 512, 2, 7, 7)
      conv5  conv5a/b 512 -> pool5 (padded 0,1,1)      (B, 512, 1, 4, 4)
      fc6    8192 -> 4096, ReLU, dropout               (B, 4096, 1, 1, 1)
      fc7    4096 -> 4096, ReLU, dropout               (B, 4096, 1, 1, 1)   the embedding; fc8 is Net's head

Module names are those of the widely used port (DavideA/c3d-pytorch, ``c3d.pickle``): ``conv1`` ..
``conv5b``, ``fc6``, ``fc7``, so its keys land unchanged under ``backbone.`` (weights/c3d.py).
fc6 and fc7 are stages whose maps are 1x1x1 cells, so ``extract.py layer=fc6`` gives the classic C3D
features (after the ReLU, as Caffe's in-place ReLU left them in the original feature extractor).
Two changes let the net take other clip sizes and leave the published 16x112x112 computation unchanged:
pools use ``ceil_mode`` (an 8-frame clip reaches pool5 with one frame left) and an adaptive average pool
to 1x4x4 feeds fc6 (the identity at 16x112x112; it averages longer clips over time).
ROI heads and fusion necks belong on the conv stages (``model.roi.stage=conv5``): fc6/fc7 have one cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from models.named_stages import NamedStages


class FullyConnected3d(nn.Linear):
    """``nn.Linear`` (same parameters and keys) between 1x1x1 maps: ``(B, C, ...) -> (B, out, 1, 1, 1)``."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(1))[:, :, None, None, None]  # (B, out, 1, 1, 1)


class C3D(NamedStages):
    stage_names = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    stage_channels = dict(zip(stage_names, [64, 128, 256, 512, 512, 4096, 4096], strict=True))
    # fc6/fc7: one cell for the whole clip; the stride of pool5 is the nearest meaningful number.
    stage_strides = dict(zip(stage_names, [2, 4, 8, 16, 32, 32, 32], strict=True))
    stage_modules = {
        "conv1": ["conv1", "relu", "pool1"],
        "conv2": ["conv2", "relu", "pool2"],
        "conv3": ["conv3a", "relu", "conv3b", "relu", "pool3"],
        "conv4": ["conv4a", "relu", "conv4b", "relu", "pool4"],
        "conv5": ["conv5a", "relu", "conv5b", "relu", "pool5"],
        "fc6": ["pool6", "fc6", "relu", "dropout"],
        "fc7": ["fc7", "relu", "dropout"],
    }
    is_3d = True

    def __init__(
        self,
        *,
        in_chans: int = 3,
        dropout: float = 0.5,
        width: float = 1.0,
        fc_dim: int = 4096,
        batch_norm: bool = False,
        pool_size: Sequence[int] = (1, 4, 4),
    ) -> None:
        """The published C3D with the defaults; ``width`` scales every conv's channels, ``fc_dim`` sizes fc6/fc7,
        ``batch_norm`` adds a BatchNorm3d after each conv (``conv1_bn`` ...: trains from scratch on little
        data), ``pool_size`` is the map fc6 reads (``[1, 1, 1]``: a global average, position-free)."""
        super().__init__()
        if not width > 0 or int(fc_dim) < 1:
            raise ValueError(f"model.backbone.width={width} and fc_dim={fc_dim} must be positive")
        if len(pool_size) != 3 or any(int(k) < 1 for k in pool_size):
            raise ValueError(f"model.backbone.pool_size={list(pool_size)} must be three positive sizes (T, H, W)")
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 128, 256, 512))
        self.stage_channels = dict(zip(self.stage_names, [c1, c2, c3, c4, c4, fc_dim, fc_dim], strict=True))
        self.stage_modules = {k: list(v) for k, v in C3D.stage_modules.items()}
        self.stem = nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        convs = {
            "conv1": (in_chans, c1), "conv2": (c1, c2), "conv3a": (c2, c3), "conv3b": (c3, c3),
            "conv4a": (c3, c4), "conv4b": (c4, c4), "conv5a": (c4, c4), "conv5b": (c4, c4),
        }  # fmt: skip
        for name, (c_in, c_out) in convs.items():
            setattr(self, name, nn.Conv3d(c_in, c_out, 3, padding=1, bias=not batch_norm))
            if batch_norm:  # conv -> bn -> relu: the BN goes right after its conv in the stage's order
                setattr(self, f"{name}_bn", nn.BatchNorm3d(c_out))
                stage = next(k for k, v in self.stage_modules.items() if name in v)
                names = self.stage_modules[stage]
                names.insert(names.index(name) + 1, f"{name}_bn")

        def pool(kernel: tuple[int, int, int], padding: tuple[int, int, int] = (0, 0, 0)) -> nn.MaxPool3d:
            return nn.MaxPool3d(kernel, stride=kernel, padding=padding, ceil_mode=True)

        self.pool1, self.pool2, self.pool3 = pool((1, 2, 2)), pool((2, 2, 2)), pool((2, 2, 2))
        self.pool4, self.pool5 = pool((2, 2, 2)), pool((2, 2, 2), (0, 1, 1))
        self.pool6 = nn.AdaptiveAvgPool3d(tuple(int(k) for k in pool_size))
        self.fc6 = FullyConnected3d(c4 * math.prod(int(k) for k in pool_size), fc_dim)
        self.fc7 = FullyConnected3d(fc_dim, fc_dim)
