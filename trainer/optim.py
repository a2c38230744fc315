"""Parameter groups and learning-rate schedules.

Schedules are built per optimizer step from ``total_steps`` (known only once the trainer has seen the
data) and scale every parameter group's own base lr by the same factor, so groups with different lrs
(fine-tuning) keep their ratios. Warmup is linear from 0 over ``warmup_epochs``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
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


def norm_names(module: nn.Module) -> set[str]:
    """Names of the parameters of normalisation layers."""
    return {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, mod in module.named_modules()
        if isinstance(mod, NORM_TYPES)
        for p_name, _ in mod.named_parameters(recurse=False)
    }


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    *,
    skip: set[str],
    weight_decay: float,
    norm: set[str] = frozenset(),
    **group,
) -> list[dict]:
    """Split parameters into a decayed group and an undecayed one (names in ``skip``); names in ``norm`` go to
    groups of their own, marked ``norm: True`` (airbench's higher lr for BatchNorm biases); empty groups dropped."""
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {(n, s): [] for n in (False, True) for s in (False, True)}
    for name, p in named_params:
        buckets[(name in norm, name in skip)].append(p)
    groups = [
        dict(params=ps, weight_decay=0.0 if undecayed else weight_decay, **({"norm": True} if is_norm else {}), **group)
        for (is_norm, undecayed), ps in buckets.items()
    ]
    return [g for g in groups if g["params"]]


def decoupled_sgd(
    groups: list[dict],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    norm_lr_scale: float = 1.0,
    nesterov: bool = True,
) -> torch.optim.SGD:
    """Nesterov SGD with airbench's decoupled hyperparameters (Jordan 2024; Page, "How to train your ResNet 5").

    ``lr`` and ``weight_decay`` are per 1024 examples and independent of the momentum: with time-constant
    gradients a step moves ``lr`` times the gradient of 1024 examples, whatever ``momentum`` and the batch size,
    and the decay per step is ``weight_decay * batch_size / 1024 / (1 + 1 / (1 - momentum))`` whatever ``lr``.
    airbench sums the loss over the batch; the loss here is a mean, so the lr carries the batch size instead
    (the same update). Groups marked ``norm`` (BatchNorm parameters) get ``norm_lr_scale`` times the lr
    (airbench's bias_scaler, 64) and the same decay per step. A group's ``weight_decay`` of 0 stays 0; a group
    that brings its own ``lr`` (fine-tuning groups) gets that multiple of the decoupled lr.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"optimizer.momentum={momentum} must be in [0, 1)")
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    base_lr = lr / kilostep_scale * batch_size  # per-example lr of a summed loss, times the batch of a mean one
    decay_per_step = weight_decay * batch_size / kilostep_scale
    for g in groups:
        # A group's own lr (fine-tuning's per-stage multipliers) scales the decoupled one by the same ratio.
        g_lr = base_lr * g.get("lr", lr) / lr * (norm_lr_scale if g.get("norm") else 1.0)
        g["lr"] = g_lr
        g["weight_decay"] = decay_per_step / g_lr if g.get("weight_decay", weight_decay) else 0.0
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum, nesterov=nesterov)


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


def triangle(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    start: float = 0.2,
    peak: float = 0.23,
    end: float = 0.07,
) -> LRScheduler:
    """airbench's schedule: linear from ``start`` to 1 at ``peak`` of the steps, then linear to ``end``."""
    top = int(peak * total_steps)

    def factor(step: int) -> float:
        step = min(step, total_steps)
        if step < top:
            return start + (1 - start) * step / top
        return 1 + (end - 1) * (step - top) / max(1, total_steps - top)

    return LambdaLR(optimizer, factor)


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
