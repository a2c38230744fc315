"""Fine-tuning schedules: which parts of the net train in each epoch, and at which learning rate.

The net is cut into groups, each from declared names (``net_groups``): ``stem`` (what the backbone runs
before its first stage), one per backbone stage (with the blocks inserted after its residual blocks, and,
for LeNet, the layers pooling its last stage), and ``head`` (everything after the backbone: fusion neck,
ROI head, temporal module, classifier).
Depth counts from the top: head 0, last stage 1, ..., stem N+1.

* The optimizer gets every group from the start (``param_groups``), each with
  lr = optimizer.lr * backbone_lr_mult (backbone groups only) * layer_decay ** depth, and split into a
  decayed and an undecayed part (norms, biases). Schedulers (LambdaLR, OneCycle) therefore see the whole
  list once and scale every group by the same factor; unfreezing never changes the list.
* Freezing a group sets requires_grad False on its parameters: they get no gradient, so no optimizer
  touches them (weight decay included). With ``freeze_bn`` its BatchNorm layers also stay in eval mode,
  so their running statistics stay the pretrained ones.

Modes (``finetune.mode``), by epoch e:
    none                  everything trains (discriminative lrs still apply)
    linear_probe          the backbone stays frozen; only the head trains
    freeze_then_unfreeze  backbone frozen while e < unfreeze_at_epoch, then all of it trains
    gradual               frozen while e < unfreeze_at_epoch; then the top stage, and one more stage
                          (towards the stem) every ``unfreeze_every`` epochs

Under DDP, freezing after the model is wrapped needs ``trainer.strategy=ddp_find_unused_parameters_true``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import nn

from models.net import Net
from runs.plots import plot_finetune
from trainer.optim import param_groups

log = logging.getLogger(__name__)

BATCH_NORMS = nn.modules.batchnorm._BatchNorm
MODES = ("none", "linear_probe", "freeze_then_unfreeze", "gradual")


@dataclass
class Group:
    name: str
    depth: int  # 0 for the head, growing towards the stem
    modules: list[nn.Module]
    in_backbone: bool

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]


def net_groups(net: nn.Module) -> list[Group]:
    """The net's groups from stem to head (empty ones dropped); every parameter is in exactly one.

    Named, not inferred: the backbone's ``stem_names``, its ``stage_names`` (with the blocks inserted after
    their blocks, and ``pool_names`` joining the last stage) and ``Net.post_backbone_names`` for the head.
    Any other net is one group."""
    if not isinstance(net, Net):
        return [Group("net", 0, [net], in_backbone=False)]
    backbone = net.backbone
    stages = list(backbone.stage_names)
    members: dict[str, list[nn.Module]] = {s: [backbone.stage_blocks(s)] for s in stages}
    members[stages[-1]] += _children(backbone, backbone.pool_names)
    for key, module in backbone.inserted.items():
        members[key.rsplit("_", 1)[0]].append(module)
    n = len(stages)
    groups = [
        Group("stem", n + 1, _children(backbone, backbone.stem_names), in_backbone=True),
        *(Group(s, n - i, members[s], in_backbone=True) for i, s in enumerate(stages)),
        Group("head", 0, _children(net, net.post_backbone_names), in_backbone=False),
    ]
    groups = [g for g in groups if g.parameters()]
    _check_partition(net, groups)
    return groups


def _children(module: nn.Module, names: tuple[str, ...]) -> list[nn.Module]:
    """The declared children of ``module`` (optional parts left out, None, are skipped)."""
    children = [getattr(module, name) for name in names]
    for name, child in zip(names, children, strict=True):
        if child is not None and not isinstance(child, nn.Module):
            raise TypeError(f"{type(module).__name__}.{name} is a {type(child).__name__}, not a module")
    return [c for c in children if c is not None]


def _check_partition(net: nn.Module, groups: list[Group]) -> None:
    counts: dict[int, int] = {}
    for g in groups:
        for p in g.parameters():
            counts[id(p)] = counts.get(id(p), 0) + 1
    named = list(net.named_parameters())
    missing = [n for n, p in named if id(p) not in counts]
    if missing:
        raise RuntimeError(
            f"parameters in no fine-tuning group: {missing[:5]}{' ...' if len(missing) > 5 else ''}; name their "
            "module in the backbone's stem_names or pool_names (models/backbones.py) or in Net.post_backbone_names"
        )
    shared = [n for n, p in named if counts[id(p)] > 1]
    if shared:
        raise RuntimeError(f"parameters in two or more fine-tuning groups: {shared[:5]}")


class FineTune(pl.Callback):
    """Builds the optimizer's named parameter groups and freezes/unfreezes them epoch by epoch.

    Each epoch logs ``finetune/trainable/<group>`` (0/1) and ``lr/<group>`` and draws them in
    ``<output_dir>/plots/finetune.png`` at the end of fitting. ``trainer.run.train`` leaves a plain
    schedule (``is_plain``: everything trains at one lr) out altogether: the optimizer then gets the two
    usual groups instead of two per net group, which makes each optimizer step cheaper.
    """

    def __init__(
        self,
        *,
        mode: str = "none",
        unfreeze_at_epoch: int = 0,
        unfreeze_every: int = 1,
        backbone_lr_mult: float = 1.0,
        layer_decay: float = 1.0,
        freeze_bn: bool = False,
        output_dir: str | None = None,
        plot: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"finetune.mode={mode!r} is not one of {MODES}")
        if mode in ("freeze_then_unfreeze", "gradual") and int(unfreeze_at_epoch) < 1:
            raise ValueError(f"finetune.unfreeze_at_epoch={unfreeze_at_epoch} must be >= 1 for mode={mode}")
        if int(unfreeze_every) < 1:
            raise ValueError(
                f"finetune.unfreeze_every={unfreeze_every} must be >= 1 (epochs between unfreezing stages)"
            )
        if not backbone_lr_mult > 0:
            raise ValueError(
                f"finetune.backbone_lr_mult={backbone_lr_mult} must be > 0; freeze with finetune=linear_probe"
            )
        if not 0 < layer_decay <= 1:
            raise ValueError(f"finetune.layer_decay={layer_decay} must be in (0, 1] (1: no layer-wise decay)")
        self.mode = mode
        self.unfreeze_at_epoch, self.unfreeze_every = int(unfreeze_at_epoch), int(unfreeze_every)
        self.backbone_lr_mult, self.layer_decay = float(backbone_lr_mult), float(layer_decay)
        self.freeze_bn = freeze_bn
        self.output_dir = Path(output_dir) if output_dir else None
        self.plot = plot
        self.rows: list[dict[str, float]] = []
        self._frozen_norms: list[nn.Module] = []
        self._last_trainable: list[str] | None = None

    # --- learning rates -----------------------------------------------------------------------------
    def lr_mult(self, group: Group) -> float:
        return (self.backbone_lr_mult if group.in_backbone else 1.0) * self.layer_decay**group.depth

    def param_groups(self, net: nn.Module, *, lr: float, weight_decay: float, skip: set[str]) -> list[dict]:
        """Optimizer groups, two per net group (decayed, undecayed), each named for the lr monitor and
        tagged ``group`` with the net group's name."""
        names = {id(p): n for n, p in net.named_parameters()}
        out = []
        for g in net_groups(net):
            named = [(names[id(p)], p) for p in g.parameters()]
            for pg in param_groups(named, skip=skip, weight_decay=weight_decay, lr=lr * self.lr_mult(g), group=g.name):
                pg["name"] = f"{g.name}/no_wd" if names[id(pg["params"][0])] in skip else g.name
                out.append(pg)
        return out

    # --- freezing -----------------------------------------------------------------------------------
    def unfrozen_stages(self, epoch: int, n: int) -> int:
        """How many backbone groups, counted from the top, train during ``epoch``."""
        if self.mode == "none":
            return n
        if self.mode == "linear_probe" or epoch < self.unfreeze_at_epoch:
            return 0
        if self.mode == "freeze_then_unfreeze":
            return n
        return min(n, 1 + (epoch - self.unfreeze_at_epoch) // self.unfreeze_every)

    def trainable(self, groups: list[Group], epoch: int) -> dict[str, bool]:
        backbone = [g for g in groups if g.in_backbone]  # stem first
        k = self.unfrozen_stages(epoch, len(backbone))
        unfrozen = {g.name for g in backbone[len(backbone) - k :]}
        return {g.name: not g.in_backbone or g.name in unfrozen for g in groups}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = net_groups(pl_module.net)
        if self.mode != "none" and not any(g.in_backbone for g in groups):
            raise ValueError(f"finetune.mode={self.mode} needs a net with a staged backbone (models.net.Net)")
        max_epochs = trainer.max_epochs or 0
        if self.mode in ("freeze_then_unfreeze", "gradual") and self.unfreeze_at_epoch >= max_epochs > 0:
            log.warning(
                "finetune.unfreeze_at_epoch=%d >= trainer.max_epochs=%d: the backbone never unfreezes",
                self.unfreeze_at_epoch,
                max_epochs,
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = net_groups(pl_module.net)
        trainable = self.trainable(groups, trainer.current_epoch)
        if self.mode != "none":
            for m in self._frozen_norms:
                m.train()
            self._frozen_norms = []
            for g in groups:
                for p in g.parameters():
                    p.requires_grad_(trainable[g.name])
                if self.freeze_bn and not trainable[g.name]:
                    self._frozen_norms += [m for mod in g.modules for m in mod.modules() if isinstance(m, BATCH_NORMS)]
        self._keep_norms_frozen()
        self._log(trainer, pl_module, groups, trainable)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._keep_norms_frozen()  # Lightning puts the whole module back in train mode after validation

    def _keep_norms_frozen(self) -> None:
        for m in self._frozen_norms:
            m.eval()

    # --- recording ----------------------------------------------------------------------------------
    def _log(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        groups: list[Group],
        trainable: dict[str, bool],
    ) -> None:
        lrs = {}
        for pg in trainer.optimizers[0].param_groups if trainer.optimizers else []:
            lrs.setdefault(pg.get("group", pg.get("name")), float(pg["lr"]))
        row = {"epoch": float(trainer.current_epoch)}
        for g in groups:
            row[f"trainable/{g.name}"] = float(trainable[g.name])
            pl_module.log(
                f"finetune/trainable/{g.name}",
                float(trainable[g.name]),
                on_step=False,
                on_epoch=True,
                batch_size=1,
            )
            if g.name in lrs:
                row[f"lr/{g.name}"] = lrs[g.name]
                pl_module.log(f"lr/{g.name}", lrs[g.name], on_step=False, on_epoch=True, batch_size=1)
        self.rows.append(row)
        names = [g for g, t in trainable.items() if t]
        if names != self._last_trainable:
            log.info(
                "epoch %d: training %s (frozen: %s)",
                trainer.current_epoch,
                names,
                [g for g, t in trainable.items() if not t] or "none",
            )
            self._last_trainable = names

    @property
    def is_plain(self) -> bool:
        """Everything trains at one lr from the start: plots/lr.png already says all there is."""
        return self.mode == "none" and self.backbone_lr_mult == 1.0 and self.layer_decay == 1.0

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.plot and self.output_dir is not None and self.rows and not self.is_plain:
            plot_finetune(self.rows, self.output_dir / "plots" / "finetune.png")

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])
