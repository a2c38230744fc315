"""Batch-level mixup (Zhang et al., 2018) and cutmix (Yun et al., 2019), with soft targets.

``MixupCutmix(x, y) -> (x_mixed, soft_y)`` runs on the device in the training step. Per batch: with
probability ``prob`` it mixes, choosing cutmix with probability ``switch_prob`` when both are enabled
(alpha > 0). Each sample is paired with another of the batch (a random permutation); ``lam ~ Beta(alpha,
alpha)`` is the weight of the sample's own image and label. Cutmix pastes one box covering ``1 - lam`` of
the image (the same box for every frame of a clip) and then sets ``lam`` to the exact area kept. Targets
come back as ``(B, num_classes)`` probabilities that sum to 1, also for batches left unmixed; label
smoothing is applied on top by the loss. All draws use torch's generator, so ``seed`` reproduces them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class MixupCutmix:
    def __init__(
        self,
        *,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        check_mix_args(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob)
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError("MixupCutmix needs augment.mixup_alpha > 0 or augment.cutmix_alpha > 0")
        if int(num_classes) < 2:
            raise ValueError(f"MixupCutmix: num_classes={num_classes} must be >= 2")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        soft = F.one_hot(y, self.num_classes).to(torch.float32)  # (B, K)
        if len(x) < 2 or torch.rand(()).item() >= self.prob:
            return x, soft
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or torch.rand(()).item() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(x)).to(x.device)
        if use_cutmix:
            x, lam = cutmix(x, x[perm], lam)
        else:
            x = x * lam + x[perm] * (1.0 - lam)
        return x, soft * lam + soft[perm] * (1.0 - lam)

    def __repr__(self) -> str:
        return (
            f"MixupCutmix(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
            f"prob={self.prob}, switch_prob={self.switch_prob}, num_classes={self.num_classes})"
        )


def cutmix(x: Tensor, other: Tensor, lam: float) -> tuple[Tensor, float]:
    """``x`` with a box of ``other`` pasted in (last two dims: H, W), and the area share left to ``x``."""
    h, w = x.shape[-2:]
    cut = (1.0 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, ()).item()), int(torch.randint(w, ()).item())
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2 + ch % 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2 + cw % 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]  # (B, C, [T,] H, W): same box for every frame
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def check_mix_args(*, mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float) -> None:
    for key, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if value < 0:
            raise ValueError(f"augment.{key}={value} must be >= 0 (0 disables it)")
    for key, value in (("mix_prob", prob), ("switch_prob", switch_prob)):
        if not 0 <= value <= 1:
            raise ValueError(f"augment.{key}={value} must be a probability in [0, 1]")


def build_mixer(
    *, num_classes: int, mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float
) -> MixupCutmix | None:
    """The mixer the ``augment`` config asks for, or None when mixing is off (both alphas 0 or ``prob`` 0),
    so that training runs no mixing code at all then."""
    check_mix_args(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob)
    if (mixup_alpha == 0 and cutmix_alpha == 0) or prob == 0:
        return None
    return MixupCutmix(
        num_classes=num_classes,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=switch_prob,
    )
