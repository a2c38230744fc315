"""Backbones: feature extractors that expose their stages by name.

Every backbone here is a ``StagedBackbone``: a stem followed by named stages, each a sequence of blocks.
``forward_stages`` returns the feature maps of the stages asked for, ``forward_pooled`` the pooled
embedding of the last stage. Extra modules can be run after any block (``insert_after``) without
changing the state_dict keys of the wrapped network, so pretrained weights still load.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tvm


class StagedBackbone(nn.Module):
    """A stem plus named stages of blocks; subclasses fill ``stem`` and the stage modules.

    Attributes set by subclasses:
        stage_names: stage names in forward order, e.g. ``["layer1", ..., "layer4"]``.
        stage_channels: output channels of each stage.
        stage_strides: spatial stride of each stage's output relative to the input.
        is_3d: True when the backbone consumes clips ``(B, C, T, H, W)`` itself.
        stem_names: the children that run before the first stage (``("stem",)`` unless the wrapped network
            keeps its stem layers apart, as torchvision's ResNet does to keep its state_dict keys).
        pool_names: the children that pool the last stage in ``forward_pooled`` in place of global pooling.

    Every child with parameters is a stage, an inserted block, or named in ``stem_names`` / ``pool_names``:
    fine-tuning (trainer/callbacks/finetune.py) groups parameters by these names and refuses one it cannot place.
    """

    stage_names: list[str]
    stage_channels: dict[str, int]
    stage_strides: dict[str, int]
    is_3d: bool = False
    stem_names: tuple[str, ...] = ("stem",)
    pool_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        # Modules run after block i of a stage, keyed "stage_i" (ModuleDict keys cannot hold dots). Kept
        # outside the stages so that the wrapped network's parameter names (and hence pretrained
        # checkpoints) are unchanged; the inserted modules only add keys under "inserted.".
        self.inserted = nn.ModuleDict()

    @property
    def num_features(self) -> int:
        return self.stage_channels[self.stage_names[-1]]

    def insert_after(self, stage: str, block: int, module: nn.Module) -> None:
        blocks = self.stage_blocks(stage)
        n = len(blocks)
        if not -n <= block < n:
            raise ValueError(f"stage {stage!r} has {n} blocks; cannot insert after block {block}")
        self.inserted[self.inserted_key(stage, block % n)] = module

    @staticmethod
    def inserted_key(stage: str, block: int) -> str:
        return f"{stage}_{block}"

    def stage_blocks(self, stage: str) -> nn.Sequential:
        if stage not in self.stage_names:
            raise ValueError(f"unknown stage {stage!r}; this backbone has {self.stage_names}")
        return getattr(self, stage)

    def forward_stages(self, x: Tensor, stages: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Feature maps of ``stages`` (all by default); computation stops after the last one needed."""
        wanted = list(stages) if stages is not None else list(self.stage_names)
        for s in wanted:
            self.stage_blocks(s)  # validates the name
        last = max(self.stage_names.index(s) for s in wanted)
        out = {}
        x = self.stem(x)
        for name in self.stage_names[: last + 1]:
            for i, block in enumerate(self.stage_blocks(name)):
                x = block(x)
                key = self.inserted_key(name, i)
                if key in self.inserted:
                    x = self.inserted[key](x)
            if name in wanted:
                out[name] = x
        return out

    def pool(self, fmap: Tensor) -> Tensor:
        """Global average pool of a stage map: ``(B, C, *spatial) -> (B, C)``."""
        return fmap.flatten(2).mean(-1)

    def forward_pooled(self, x: Tensor) -> Tensor:
        last = self.stage_names[-1]
        return self.pool(self.forward_stages(x, [last])[last])  # (B, num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pooled(x)


class LeNet(StagedBackbone):
    """The classic LeNet-5: conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc 120 -> fc 84.

    An adaptive pool to 5x5 before the fully connected layers makes it work for any input size
    (for 32x32 inputs it is the identity, as in the original).
    """

    stage_names = ["conv1", "conv2"]
    stage_channels = {"conv1": 6, "conv2": 16}
    stage_strides = {"conv1": 2, "conv2": 4}
    pool_names = ("fc",)

    def __init__(self, *, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Identity()
        self.conv1 = nn.Sequential(nn.Conv2d(in_chans, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True)
        )

    @property
    def num_features(self) -> int:
        return 84

    def forward_pooled(self, x: Tensor) -> Tensor:
        # The classic fully connected layers after the last stage take the place of global pooling.
        fmap = self.forward_stages(x, ["conv2"])["conv2"]  # (B, 16, h, w)
        return self.fc(F.adaptive_avg_pool2d(fmap, 5))  # (B, 84)


_RESNETS = {18: tvm.resnet18, 34: tvm.resnet34, 50: tvm.resnet50, 101: tvm.resnet101, 152: tvm.resnet152}


class ResNet(StagedBackbone):
    """torchvision ResNet without its classifier; stages ``layer1``..``layer4``.

    ``small_input=True`` swaps the 7x7 stride-2 stem and its max-pool for a 3x3 stride-1 conv, the usual
    choice for 32x32 images (CIFAR): the last stage then has stride 8 instead of 32.
    """

    stage_names = ["layer1", "layer2", "layer3", "layer4"]
    stem_names = ("conv1", "bn1", "relu", "maxpool")  # torchvision's names, which pretrained weights use

    def __init__(self, *, depth: int = 18, small_input: bool = False, in_chans: int = 3) -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"model.backbone.depth={depth} is not a ResNet depth; choose one of {sorted(_RESNETS)}")
        net = _RESNETS[depth](weights=None)
        if small_input:
            net.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.stage_channels = {f"layer{i + 1}": c * expansion for i, c in enumerate([64, 128, 256, 512])}
        s0 = 1 if small_input else 4
        self.stage_strides = {f"layer{i + 1}": s0 * 2**i for i in range(4)}

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


# torchvision's layer lists of vgg11/13/16/19 (configurations A, B, D, E).
_VGGS = {11: "A", 13: "B", 16: "D", 19: "E"}


class VGG(StagedBackbone):
    """torchvision VGG with batch norm; the five conv blocks (each ending in a max-pool) are the stages.

    The embedding is the global average of the last stage (512-d), as in CIFAR-style VGGs; the 4096-d
    fully connected classifier of the ImageNet model is not used.
    """

    stage_names = [f"stage{i}" for i in range(1, 6)]
    stage_channels = dict(zip(stage_names, [64, 128, 256, 512, 512], strict=True))
    stage_strides = dict(zip(stage_names, [2, 4, 8, 16, 32], strict=True))

    def __init__(self, *, depth: int = 11, in_chans: int = 3) -> None:
        super().__init__()
        if depth not in _VGGS:
            raise ValueError(f"model.backbone.depth={depth} is not a VGG depth; choose one of {sorted(_VGGS)}")
        # Only the conv layers: building the whole torchvision model would allocate (and initialise) its
        # 120M-parameter classifier just to throw it away. Same layers, same names, same init as torchvision.
        layers = list(tvm.vgg.make_layers(tvm.vgg.cfgs[_VGGS[depth]], batch_norm=True))
        if in_chans != 3:
            layers[0] = nn.Conv2d(in_chans, 64, 3, padding=1)
        for layer in layers:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        self.stem = nn.Identity()
        stage: list[nn.Module] = []
        names = iter(self.stage_names)
        for layer in layers:
            stage.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                setattr(self, next(names), nn.Sequential(*stage))
                stage = []


_VIDEO_RESNETS = {"r3d_18": tvm.video.r3d_18, "r2plus1d_18": tvm.video.r2plus1d_18, "mc3_18": tvm.video.mc3_18}


class VideoResNet(StagedBackbone):
    """torchvision's 3D video ResNets (r3d_18, r2plus1d_18, mc3_18) on clips ``(B, C, T, H, W)``."""

    stage_names = ["layer1", "layer2", "layer3", "layer4"]
    stage_channels = dict(zip(stage_names, [64, 128, 256, 512], strict=True))
    stage_strides = dict(zip(stage_names, [2, 4, 8, 16], strict=True))
    is_3d = True

    def __init__(self, *, arch: str = "r2plus1d_18") -> None:
        super().__init__()
        if arch not in _VIDEO_RESNETS:
            raise ValueError(
                f"model.backbone.arch={arch!r} is not a video ResNet; choose one of {sorted(_VIDEO_RESNETS)}"
            )
        net = _VIDEO_RESNETS[arch](weights=None)
        self.stem = net.stem
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
