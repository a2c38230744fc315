"""Exponential moving average of the weights (``callbacks=ema``).

Flow:
- train start: an fp32 shadow copy of every parameter and persistent buffer of the LightningModule.
- after each optimizer step: ``shadow = d * shadow + (1 - d) * weights`` with ``d = decay``, or with
  ``warmup`` ``d = min(decay, (1 + n) / (10 + n))`` after n updates, so early averages are not dominated
  by the random initialisation; integer buffers (BatchNorm's step count) are copied.
- validation during fit: the shadow is swapped in, the raw weights back out afterwards, so ``val/*``
  metrics, ``val/acc_best`` and the choice of ``best.ckpt`` are those of the EMA weights.
- checkpoints: ``state_dict`` holds the EMA weights (what eval.py, fine-tuning, extraction and
  ``trainer.test(ckpt_path=...)`` load), the raw weights sit in this callback's state, and resuming
  (``ckpt_path=last.ckpt``) puts the raw weights back into the model and the EMA into the shadow, so a
  resumed run continues exactly. All of it is plain tensors and numbers (``weights_only`` loading works).
- fit end: the EMA weights stay in the model, so testing after fit without a checkpoint also uses them.

A checkpoint written with ``save_weights_only`` holds the raw weights: Lightning skips callback hooks then.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor


class EMA(pl.Callback):
    def __init__(self, *, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.ema.decay={decay} must be in [0, 1), e.g. 0.999")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.shadow: dict[str, Tensor] | None = None  # fp32, on the weights' device
        self.num_updates = 0
        self._raw: dict[str, Tensor] | None = None  # the training weights while the shadow is swapped in
        self._last_step = -1

    # --- averaging ----------------------------------------------------------------------------------
    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, pl_module: pl.LightningModule) -> None:
        weights = live_tensors(pl_module)
        floats = [k for k, v in weights.items() if v.is_floating_point()]
        torch._foreach_lerp_(
            [self.shadow[k] for k in floats],
            [weights[k].detach().float() for k in floats],
            1.0 - self.current_decay(),
        )
        for k, v in weights.items():
            if not v.is_floating_point():
                self.shadow[k].copy_(v)
        self.num_updates += 1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after any checkpoint restore (some strategies restore after moving the model to its device).
        weights = live_tensors(pl_module)
        if self.shadow is None:
            self.shadow = averageable_copy(weights)
        missing = weights.keys() - self.shadow.keys()
        if missing:
            raise ValueError(f"EMA: the checkpoint's averages lack {sorted(missing)[:5]}; resume without callbacks=ema")
        self.shadow = {k: self.shadow[k].to(weights[k].device) for k in weights}
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # Once per optimizer step, also under gradient accumulation (several batches per step).
        if trainer.global_step > self._last_step:
            self._last_step = trainer.global_step
            self.update(pl_module)

    # --- evaluation with the EMA weights ------------------------------------------------------------
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self.shadow is not None:
            self._raw = snapshot(pl_module)
            load_into(pl_module, self.shadow)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._raw is not None:
            load_into(pl_module, self._raw)
            self._raw = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.shadow is not None:
            load_into(pl_module, self.shadow)

    # --- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.shadow is None:
            return
        state_dict = checkpoint["state_dict"]
        raw = self._raw if self._raw is not None else live_tensors(pl_module)
        keys = [k for k in state_dict if k in self.shadow]
        checkpoint["callbacks"][self.state_key]["raw"] = {k: raw[k].detach().clone().cpu() for k in keys}
        for k in keys:
            state_dict[k] = self.shadow[k].to(dtype=state_dict[k].dtype, device="cpu").clone()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # testing/validating a checkpoint: its state_dict (the EMA weights) is what to score
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if state is None or "raw" not in state:
            # A checkpoint without EMA: start averaging from its weights.
            self.shadow, self.num_updates = None, 0
            return
        self.num_updates = int(state["num_updates"])
        weights = live_tensors(pl_module)
        self.shadow = averageable_copy({k: v for k, v in checkpoint["state_dict"].items() if k in weights})
        load_into(pl_module, state["raw"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict["num_updates"])


def live_tensors(pl_module: torch.nn.Module) -> dict[str, Tensor]:
    """The module's parameters and persistent buffers themselves (not copies), by state_dict key.

    Not ``state_dict()``: that also holds metric states (e.g. a running max of -inf), which are no weights.
    """
    tensors = dict(pl_module.named_parameters())
    for key, buf in pl_module.named_buffers():
        owner, _, name = key.rpartition(".")
        if name not in pl_module.get_submodule(owner)._non_persistent_buffers_set:
            tensors[key] = buf
    return tensors


def averageable_copy(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached copies, floating point ones in fp32 (a low-precision average would stall at small steps)."""
    return {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone() for k, v in tensors.items()}


def snapshot(pl_module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in live_tensors(pl_module).items()}


@torch.no_grad()
def load_into(pl_module: torch.nn.Module, tensors: dict[str, Tensor]) -> None:
    """Copies ``tensors`` into the module's weights in place, so optimizers keep pointing at them."""
    for k, v in live_tensors(pl_module).items():
        if k in tensors:
            v.copy_(tensors[k])
