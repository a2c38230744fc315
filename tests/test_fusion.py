"""Fusion necks: output shapes for 2D and 3D maps, what they compute, stage validation, use inside Net."""

from __future__ import annotations

import functools

import pytest
import torch

from models.backbones import ResNet, VideoResNet
from models.fusion import ConcatFusion, FPNFusion, WeightedFusion
from models.net import Net


@pytest.fixture(scope="module")
def resnet():
    return ResNet(depth=18, small_input=True)


def maps_2d(n: int = 2, size: int = 16) -> dict[str, torch.Tensor]:
    # ResNet-18 with small_input on size x size images: layer2..4 at strides 2, 4, 8.
    return {
        "layer2": torch.randn(n, 128, size // 2, size // 2),
        "layer3": torch.randn(n, 256, size // 4, size // 4),
        "layer4": torch.randn(n, 512, size // 8, size // 8),
    }


@pytest.mark.parametrize(
    ("cls", "kwargs", "shape", "stride"),
    [
        (FPNFusion, {"channels": 32}, (2, 32, 8, 8), 2),
        (ConcatFusion, {}, (2, 128 + 256 + 512, 2, 2), 8),
        (WeightedFusion, {"channels": 24}, (2, 24, 8, 8), 2),
    ],
)
def test_shapes_2d(resnet, cls, kwargs, shape, stride):
    fusion = cls(backbone=resnet, **kwargs)
    assert fusion.in_stages == ["layer2", "layer3", "layer4"]  # default: the last three stages
    out = fusion(maps_2d())
    assert out.shape == shape
    assert (fusion.out_channels, fusion.out_features, fusion.out_stride) == (shape[1], shape[1], stride)
    assert fusion.pool(out).shape == shape[:2]


@pytest.mark.parametrize(("cls", "channels"), [(FPNFusion, 16), (ConcatFusion, 64 + 128), (WeightedFusion, 16)])
def test_shapes_3d(cls, channels):
    backbone = VideoResNet(arch="r3d_18")
    fusion = cls(backbone=backbone, stages=["layer2", "layer1"], **({} if cls is ConcatFusion else {"channels": 16}))
    assert fusion.in_stages == ["layer1", "layer2"]  # put in backbone order
    maps = {"layer1": torch.randn(2, 64, 4, 8, 8), "layer2": torch.randn(2, 128, 2, 4, 4)}
    out = fusion(maps)
    spatial = (2, 4, 4) if cls is ConcatFusion else (4, 8, 8)
    assert out.shape == (2, channels, *spatial)
    assert fusion.pool(out).shape == (2, channels)


def test_concat_pools_to_concatenated_pooled_features(resnet):
    maps = maps_2d()
    fusion = ConcatFusion(backbone=resnet)
    expected = torch.cat([m.mean((2, 3)) for m in maps.values()], 1)
    torch.testing.assert_close(fusion.pool(fusion(maps)), expected)


def test_weighted_is_normalised_weighted_sum(resnet):
    fusion = WeightedFusion(backbone=resnet, stages=["layer3", "layer4"], channels=8)
    with torch.no_grad():
        fusion.weights.copy_(torch.tensor([3.0, -1.0]))  # a negative weight counts as zero
    w = fusion.normalized_weights()
    torch.testing.assert_close(w, torch.tensor([3.0, 0.0]) / (3.0 + fusion.eps))
    maps = maps_2d()
    torch.testing.assert_close(fusion(maps), w[0] * fusion.laterals[0](maps["layer3"]))


def test_fpn_top_down(resnet):
    fusion = FPNFusion(backbone=resnet, stages=["layer3", "layer4"], channels=8)
    maps = maps_2d()
    top = fusion.laterals[1](maps["layer4"]).repeat_interleave(2, 2).repeat_interleave(2, 3)  # nearest x2
    torch.testing.assert_close(fusion(maps), fusion.smooth(fusion.laterals[0](maps["layer3"]) + top))


def test_errors(resnet):
    with pytest.raises(ValueError, match=r"names \['res4'\].*has stages \['layer1'"):
        FPNFusion(backbone=resnet, stages=["layer3", "res4"])
    with pytest.raises(ValueError, match="at least two different stages"):
        ConcatFusion(backbone=resnet, stages=["layer4", "layer4"])
    with pytest.raises(ValueError, match=r"missing \['layer2'\]"):
        ConcatFusion(backbone=resnet)({"layer3": torch.randn(1, 256, 2, 2), "layer4": torch.randn(1, 512, 1, 1)})


@pytest.mark.parametrize("cls", [FPNFusion, ConcatFusion, WeightedFusion])
def test_net_with_fusion_trains(resnet, cls):
    net = Net(backbone=ResNet(depth=18, small_input=True), num_classes=3, fusion=functools.partial(cls))
    assert net.num_features == net.fusion.out_features
    out = net(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in net.fusion.parameters())
