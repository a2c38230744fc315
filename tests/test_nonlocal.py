"""Non-local block: shapes, identity at initialisation, agreement with a plain einsum reference, insertion."""

from __future__ import annotations

import importlib

import pytest
import torch

from models.backbones import ResNet, VideoResNet
from models.nonlocal_block import PAIRWISE, NonLocalBlock, add_non_local

# The einsum reference lives beside the benchmark that also times it (`nonlocal` is a keyword: no plain import).
reference = importlib.import_module("bench.nonlocal").reference


def randomise_bn(block: NonLocalBlock) -> None:
    """Non-trivial BN parameters so that the block's output depends on everything before it."""
    with torch.no_grad():
        block.bn.weight.uniform_(0.5, 1.5)
        block.bn.bias.uniform_(-0.5, 0.5)
        block.bn.running_mean.uniform_(-0.2, 0.2)
        block.bn.running_var.uniform_(0.5, 2.0)


CASES = [(mode, dim, subsample) for mode in PAIRWISE for dim in (2, 3) for subsample in (False, True)]


@pytest.mark.parametrize(("mode", "dim", "subsample"), CASES)
def test_matches_einsum_reference(mode, dim, subsample):
    torch.manual_seed(0)
    block = NonLocalBlock(in_channels=6, dim=dim, mode=mode, subsample=subsample, chunk_size=7).double().eval()
    randomise_bn(block)
    shape = (2, 6, 5, 7) if dim == 2 else (2, 6, 3, 5, 6)
    x = torch.randn(*shape, dtype=torch.float64)
    out = block(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference(block, x), rtol=1e-10, atol=1e-10)
    assert (out - x).abs().mean() > 1e-2  # the block does something once gamma is non-zero


@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian"])
def test_scaled_softmax_matches_reference(mode):
    torch.manual_seed(1)
    block = NonLocalBlock(in_channels=8, dim=2, mode=mode, scale=True).double().eval()
    randomise_bn(block)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64) * 3
    torch.testing.assert_close(block(x), reference(block, x), rtol=1e-10, atol=1e-10)
    unscaled = NonLocalBlock(in_channels=8, dim=2, mode=mode).double().eval()
    unscaled.load_state_dict(block.state_dict())
    assert not torch.allclose(unscaled(x), block(x))


@pytest.mark.parametrize("mode", PAIRWISE)
@pytest.mark.parametrize("dim", [2, 3])
def test_identity_at_init_in_train_mode(mode, dim):
    block = NonLocalBlock(in_channels=4, dim=dim, mode=mode, subsample=True).train()
    x = torch.randn(3, 4, *((3, 5) if dim == 2 else (2, 3, 5)))
    out = block(x)
    assert out.shape == x.shape
    assert torch.equal(out, x)


def test_inner_channels_and_errors():
    block = NonLocalBlock(in_channels=10, mode="embedded_gaussian")
    assert block.theta.out_channels == 5 and block.out.out_channels == 10
    assert NonLocalBlock(in_channels=10, inner_channels=3).g.out_channels == 3
    with pytest.raises(ValueError, match="mode='cosine' is unknown"):
        NonLocalBlock(in_channels=4, mode="cosine")
    with pytest.raises(ValueError, match="scale=True only applies"):
        NonLocalBlock(in_channels=4, mode="dot_product", scale=True)
    with pytest.raises(ValueError, match="needs a 4-d map"):
        NonLocalBlock(in_channels=4)(torch.randn(1, 4, 2, 3, 3))


def test_insertion_keeps_keys_and_function():
    torch.manual_seed(0)
    plain = ResNet(depth=18, small_input=True).eval()
    with_nl = ResNet(depth=18, small_input=True)
    add_non_local(backbone=with_nl, stages={"layer2": [0], "layer3": [-2, 1]}, mode="dot_product")
    # Pretrained weights of the plain network load; only the inserted blocks are new.
    missing, unexpected = with_nl.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("inserted.") for k in missing)
    assert sorted(with_nl.inserted.keys()) == ["layer2_0", "layer3_0", "layer3_1"]
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(with_nl.eval()(x), plain(x))  # identity at init


def test_video_backbone_gets_3d_blocks():
    backbone = VideoResNet(arch="r3d_18")
    add_non_local(backbone=backbone, stages={"layer3": [0]}, mode="gaussian")
    block = backbone.inserted["layer3_0"]
    assert block.dim == 3 and isinstance(block.sub, torch.nn.MaxPool3d) and block.g.in_channels == 256
    out = backbone.forward_stages(torch.randn(1, 3, 4, 16, 16), ["layer3"])["layer3"]
    assert out.shape == (1, 256, 1, 2, 2)


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ({"layer5": [0]}, r"names stage 'layer5'.*has stages \['layer1'"),
        ({"layer3": [2]}, r"stage 'layer3' has 2 blocks, so indices must be in \[-2, 1\]"),
        ({"layer3": [0, -2]}, "block 0 already has a module after it"),
        ({"layer3": []}, "must be a non-empty list"),
        ({}, "must map stage names to block indices"),
    ],
)
def test_insertion_errors(stages, match):
    backbone = ResNet(depth=18, small_input=True)
    with pytest.raises(ValueError, match=match):
        add_non_local(backbone=backbone, stages=stages)
    assert len(backbone.inserted) == 0  # nothing inserted when any entry is bad
