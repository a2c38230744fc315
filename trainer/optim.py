"""Parameter groups and learning-rate schedules.

Schedules are built per optimizer step from ``total_steps`` (known only once the trainer has seen the
data) and scale every parameter group's own base lr by the same factor, so groups with different lrs
(fine-tuning) keep their ratios. Warmup is linear from 0 over ``warmup_epochs``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def no_decay_names(module: nn.Module) -> set[str]:
    """Names of biases and normalisation parameters: regularising them hurts more than it helps."""
    names = set()
    for mod_name, mod in module.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            if isinstance(mod, NORM_TYPES) or p_name == "bias":
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], *, skip: set[str], weight_decay: float, **group
) -> list[dict]:
    """Split parameters into a decayed group and an undecayed one (names in ``skip``); empty groups dropped."""
    decay, no_decay = [], []
    for name, p in named_params:
        (no_decay if name in skip else decay).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay, **group), dict(params=no_decay, weight_decay=0.0, **group)]
    return [g for g in groups if g["params"]]


def schedule(*, total_steps: int, warmup_steps: int, decay: Callable[[float], float]) -> Callable[[int], float]:
    """Multiplier of the base lr at an optimizer step: linear warmup, then ``decay`` of the progress in [0, 1].

    A plain function on purpose: LambdaLR checkpoints the ``__dict__`` of callable objects, which would
    put pickled code into checkpoints that must load with ``weights_only=True``.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return decay(min(1.0, (step - warmup_steps) / span))

    return factor


def _warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    if warmup_epochs < 0:
        raise ValueError(f"scheduler.warmup_epochs={warmup_epochs} must be >= 0")
    return min(total_steps, int(round(warmup_epochs * steps_per_epoch)))


def cosine(
    optimizer: Optimizer, *, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0, min_lr_ratio: float = 0.0
) -> LRScheduler:
    def decay(t: float) -> float:
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    warm = _warmup_steps(warmup_epochs, steps_per_epoch, total_steps)
    return LambdaLR(optimizer, schedule(total_steps=total_steps, warmup_steps=warm, decay=decay))


def multistep(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_epochs: float = 0,
) -> LRScheduler:
    """lr multiplied by ``gamma`` at each epoch in ``milestones``."""
    steps = sorted(m * steps_per_epoch for m in milestones)
    warm = _warmup_steps(warmup_epochs, steps_per_epoch, total_steps)
    span = max(1, total_steps - warm)

    def decay(t: float) -> float:
        step = warm + t * span
        return gamma ** sum(step >= s for s in steps)

    return LambdaLR(optimizer, schedule(total_steps=total_steps, warmup_steps=warm, decay=decay))


def constant(optimizer: Optimizer, *, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0) -> LRScheduler:
    warm = _warmup_steps(warmup_epochs, steps_per_epoch, total_steps)
    return LambdaLR(optimizer, schedule(total_steps=total_steps, warmup_steps=warm, decay=lambda t: 1.0))


def onecycle(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float | None = None,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> LRScheduler:
    """torch's OneCycleLR peaking at each group's lr; ``warmup_epochs`` (if given) sets the rising phase."""
    if warmup_epochs is not None:
        pct_start = min(0.99, max(1e-3, _warmup_steps(warmup_epochs, steps_per_epoch, total_steps) / total_steps))
    return OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )
