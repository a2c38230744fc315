"""Non-local block: shapes, identity at initialisation, agreement with a plain einsum reference, insertion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.backbones import ResNet, VideoResNet
from models.nonlocal_block import PAIRWISE, NonLocalBlock, add_non_local


def conv1x1(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    w = conv.weight.flatten(1)  # (O, C)
    return torch.einsum("oc,bc...->bo...", w, x) + conv.bias.view(1, -1, *([1] * (x.ndim - 2)))


def reference(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's formula written out with the full N x M affinity matrix (eval-mode BatchNorm)."""
    dim = x.ndim - 2

    def sub(t):
        if not isinstance(block.sub, torch.nn.Identity):
            return F.max_pool2d(t, 2, ceil_mode=True) if dim == 2 else F.max_pool3d(t, (1, 2, 2), ceil_mode=True)
        return t

    g = sub(conv1x1(block.g, x)).flatten(2)  # (B, C', M)
    if block.mode == "gaussian":
        q, k = x.flatten(2), sub(x).flatten(2)
    else:
        q, k = (
            conv1x1(block.theta, x).flatten(2),
            sub(conv1x1(block.phi, x)).flatten(2),
        )  # (B, Ck, N), (B, Ck, M)
    m = k.shape[-1]
    if block.mode in ("embedded_gaussian", "gaussian"):
        logits = torch.einsum("bcn,bcm->bnm", q, k)
        if block.scale:
            logits = logits / math.sqrt(q.shape[1])
        f = torch.exp(logits - logits.amax(-1, keepdim=True))
        f = f / f.sum(-1, keepdim=True)
    elif block.mode == "dot_product":
        f = torch.einsum("bcn,bcm->bnm", q, k) / m
    else:
        a = torch.einsum("c,bcn->bn", block.w_theta, q)
        b = torch.einsum("c,bcm->bm", block.w_phi, k)
        f = torch.relu(a[:, :, None] + b[:, None, :]) / m
    y = torch.einsum("bnm,bcm->bcn", f, g).reshape(x.shape[0], -1, *x.shape[2:])
    wy = conv1x1(block.out, y)
    bn = block.bn
    shape = (1, -1, *([1] * dim))
    z = (wy - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return x + z * bn.weight.view(shape) + bn.bias.view(shape)


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
