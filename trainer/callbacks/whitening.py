"""airbench's whitening initialisation of the first layer (``callbacks=airbench``)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


class WhiteningInit(pl.Callback):
    """airbench's patch-whitening first layer: set from ``num_images`` training images before the first step
    (``backbone.init_whitening``: normalised, not augmented, the first ones of the training split), its bias
    trained for the first ``bias_epochs`` epochs only. A resumed run, and a net fine-tuned from pretrained
    weights (``backbone.whitened`` is saved with them), keep the whitening they brought."""

    def __init__(self, *, num_images: int = 5000, eps: float = 5e-4, bias_epochs: int = 3) -> None:
        if num_images < 1 or bias_epochs < 0 or eps < 0:
            raise ValueError(
                f"callbacks.whitening: num_images={num_images} must be >= 1, bias_epochs={bias_epochs} and "
                f"eps={eps} >= 0"
            )
        self.num_images, self.eps, self.bias_epochs = int(num_images), float(eps), int(bias_epochs)

    @staticmethod
    def _backbone(pl_module: pl.LightningModule) -> Any:
        backbone = pl_module.net.backbone
        if not hasattr(backbone, "init_whitening"):
            raise ValueError(
                f"callbacks.whitening needs a backbone with a whitening layer (model=airbench); "
                f"{type(backbone).__name__} has none: remove callbacks.whitening"
            )
        return backbone

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._backbone(pl_module)  # fails before any work when the model has no whitening layer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        backbone = self._backbone(pl_module)
        if trainer.global_step > 0 or bool(backbone.whitened):
            return  # resumed, or pretrained: the weights hold the whitening they were trained with
        images = trainer.datamodule.train_images(self.num_images).to(pl_module.device)  # (N, C, H, W)
        backbone.init_whitening(images, eps=self.eps)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._backbone(pl_module).whiten.bias.requires_grad = trainer.current_epoch < self.bias_epochs
