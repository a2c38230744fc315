"""Mixup / cutmix: soft targets, the mixed pixels, reproducibility, configuration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from data.mix import MixupCutmix, build_mixer, cutmix

K = 5


def batch(shape=(8, 3, 16, 16)):
    g = torch.Generator().manual_seed(1)
    return torch.rand(shape, generator=g), torch.randint(K, (shape[0],), generator=g)


def label_images(shape):
    """Inputs whose channel c is 1 where the label is c: a sample's per-channel pixel mean is its target."""
    y = torch.randint(K, (shape[0],), generator=torch.Generator().manual_seed(1))
    x = F.one_hot(y, K).float().reshape(shape[0], K, *[1] * (len(shape) - 2)).expand(shape[0], K, *shape[2:])
    return x.contiguous(), y


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "both"])
@pytest.mark.parametrize("shape", [(8, K, 16, 16), (6, K, 4, 16, 12)])
def test_soft_targets_sum_to_one_and_match_the_mixed_pixels(mode, shape):
    """Soft targets equal the share of each label in the mixed input (mixup weights, cutmix box areas)."""
    alphas = {"mixup": (0.4, 0.0), "cutmix": (0.0, 1.0), "both": (0.4, 1.0)}[mode]
    mixer = MixupCutmix(num_classes=K, mixup_alpha=alphas[0], cutmix_alpha=alphas[1])
    x, y = label_images(shape)
    mixed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        xm, soft = mixer(x, y)
        assert xm.shape == x.shape and soft.shape == (len(x), K) and soft.dtype == torch.float32
        torch.testing.assert_close(soft.sum(1), torch.ones(len(x)))
        assert (soft >= 0).all()
        torch.testing.assert_close(soft, xm.flatten(2).mean(-1), atol=1e-5, rtol=0)
        mixed += int((soft.max(1).values < 1).sum())
    assert mixed > 0


def test_cutmix_uses_one_box_for_all_frames():
    x, _ = batch((4, 3, 5, 16, 16))  # (B, C, T, H, W)
    other = torch.zeros_like(x)
    out, lam = cutmix(x, other, 0.5)
    pasted = (out == 0).all(dim=1)  # (B, T, H, W)
    assert pasted.any()
    assert (pasted == pasted[:, :1]).all(), "frames of a clip got different boxes"
    torch.testing.assert_close(1 - pasted[0, 0].float().mean().item(), lam)


def test_unmixed_batches_get_one_hot_targets():
    x, y = batch()
    mixer = MixupCutmix(num_classes=K, mixup_alpha=1.0, prob=1e-9)
    torch.manual_seed(0)
    xm, soft = mixer(x, y)
    assert torch.equal(xm, x)
    assert torch.equal(soft, F.one_hot(y, K).float())


def test_mixing_is_reproducible_under_a_seed():
    x, y = batch()
    mixer = MixupCutmix(num_classes=K, mixup_alpha=0.4, cutmix_alpha=1.0, prob=0.8)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append([mixer(x, y) for _ in range(5)])
    for (a, sa), (b, sb) in zip(*runs, strict=True):
        assert torch.equal(a, b) and torch.equal(sa, sb)
    torch.manual_seed(124)
    assert not torch.equal(mixer(x, y)[1], runs[0][0][1])


def test_both_modes_are_used_when_both_are_on():
    x, y = batch()
    mixer = MixupCutmix(num_classes=K, mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.5)
    torch.manual_seed(0)
    kinds = set()
    for _ in range(20):
        xm, _ = mixer(x, y)
        exact = ((xm.unsqueeze(1) == x.unsqueeze(0)).flatten(2).float().mean(-1) > 0.02).any(1)  # some pixels copied
        kinds.add("cutmix" if exact.all() else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_build_mixer_is_none_when_off_and_rejects_bad_values():
    assert build_mixer(num_classes=K, mixup_alpha=0, cutmix_alpha=0, prob=1, switch_prob=0.5) is None
    assert build_mixer(num_classes=K, mixup_alpha=0.2, cutmix_alpha=0, prob=0, switch_prob=0.5) is None
    assert isinstance(build_mixer(num_classes=K, mixup_alpha=0.2, cutmix_alpha=0, prob=1, switch_prob=0.5), MixupCutmix)
    with pytest.raises(ValueError, match="augment.cutmix_alpha=-1"):
        build_mixer(num_classes=K, mixup_alpha=0.2, cutmix_alpha=-1, prob=1, switch_prob=0.5)
    with pytest.raises(ValueError, match="augment.mix_prob=1.5"):
        build_mixer(num_classes=K, mixup_alpha=0.2, cutmix_alpha=0, prob=1.5, switch_prob=0.5)


def test_loss_accepts_soft_targets_with_label_smoothing():
    """The module's loss on one-hot targets equals the loss on class indices (smoothing included)."""
    logits = torch.randn(6, K)
    y = torch.randint(K, (6,))
    hard = F.cross_entropy(logits, y, label_smoothing=0.1)
    soft = F.cross_entropy(logits, F.one_hot(y, K).float(), label_smoothing=0.1)
    torch.testing.assert_close(hard, soft)
