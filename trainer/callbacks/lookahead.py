"""Lookahead with an EMA as airbench uses it (``callbacks=airbench``; Jordan 2024, arXiv:2404.00498).

Every ``every`` optimizer steps the average moves towards the net, ``avg = decay * avg + (1 - decay) * net``,
and the net is reset to the average; the decay grows over training, ``decay = base * (step / total) ** power``
(airbench: 0.95 ** 5 and 3), so early steps follow the net and late ones average strongly. After the last step
the net is set to the average. Unlike ``trainer.callbacks.ema.EMA`` (a shadow copy used only for evaluation) this
changes the weights being trained. All floating-point state of the net takes part, BatchNorm statistics included.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor


class Lookahead(pl.Callback):
    def __init__(self, *, every: int = 5, base: float = 0.95**5, power: float = 3.0) -> None:
        if every < 1:
            raise ValueError(f"callbacks.lookahead.every={every} must be >= 1")
        if not 0.0 <= base <= 1.0:
            raise ValueError(f"callbacks.lookahead.base={base} must be in [0, 1]")
        self.every, self.base, self.power = int(every), float(base), float(power)
        self.average: dict[str, Tensor] | None = None

    def _state(self, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        return {k: v for k, v in pl_module.state_dict(keep_vars=True).items() if v.is_floating_point()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self._state(pl_module)
        if self.average is None:  # a resumed run brought its average (load_state_dict)
            self.average = {k: v.detach().clone() for k, v in state.items()}
        else:
            self.average = {k: self.average[k].to(v.device, v.dtype) for k, v in state.items()}

    @torch.no_grad()
    def update(self, pl_module: pl.LightningModule, decay: float) -> None:
        for name, value in self._state(pl_module).items():
            avg = self.average[name]
            avg.lerp_(value.detach(), 1 - decay)
            value.data.copy_(avg)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step, total = trainer.global_step, int(trainer.estimated_stepping_batches)
        if step % self.every == 0:
            self.update(pl_module, self.base * (step / total) ** self.power)
        if step >= total:
            self.update(pl_module, 1.0)  # the net becomes the average

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.average = state_dict.get("average")
