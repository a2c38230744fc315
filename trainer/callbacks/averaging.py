"""The mean of the best checkpoints' weights (``callbacks=average``), as timm's ``avg_checkpoints.py``.

Flow: ``callbacks.model_checkpoint.save_top_k`` (3) checkpoints kept by ``val/acc`` -> at the end of fit, the
element-wise mean of their ``state_dict`` tensors (parameters and BatchNorm statistics; integer buffers such
as BatchNorm's step count are taken from the best) -> ``checkpoints/averaged.ckpt``: the best checkpoint with
the averaged weights and ``averaged_from`` (the files and their scores), written through the trainer's
checkpoint IO (atomic, finite weights only). The test after fit then uses it (results.json:
``checkpoints/tested``); eval.py, extract.py and export.py take it as any other checkpoint.

Lightning's ``StochasticWeightAveraging`` is not used: it replaces the lr schedule for its last epochs and
holds the average only in memory at the end of fit, so best.ckpt, the test after fit and a resumed run
would not see it. ``callbacks=ema`` is the other average (of every step, in memory and in checkpoints).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class AverageCheckpoints(pl.Callback):
    def __init__(self, *, filename: str = "averaged.ckpt") -> None:
        self.filename = filename
        self.path: str | None = None  # set once written

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        cb = trainer.checkpoint_callback
        if stage == "fit" and (cb is None or cb.save_top_k in (0, 1) or cb.monitor is None):
            raise ValueError(
                "callbacks.average averages the checkpoints kept by callbacks.model_checkpoint: it needs "
                "save_top_k > 1 (or -1) and a monitored metric, e.g. callbacks.model_checkpoint.save_top_k=3"
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cb = trainer.checkpoint_callback
        if trainer.fast_dev_run or not cb.best_k_models:
            return
        reverse = cb.mode == "max"
        ranked = sorted(cb.best_k_models.items(), key=lambda kv: float(kv[1]), reverse=reverse)  # best first
        path = str(Path(cb.dirpath) / self.filename)
        if trainer.is_global_zero:
            checkpoint = average_checkpoints([p for p, _ in ranked])
            checkpoint["averaged_from"] = {str(p): float(score) for p, score in ranked}
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)
            log.info("averaged %d checkpoints (%s %s) -> %s", len(ranked), cb.monitor, "best first", path)
        trainer.strategy.barrier()
        self.path = path


def average_checkpoints(paths: list[str | Path]) -> dict[str, Any]:
    """The first checkpoint with every floating ``state_dict`` tensor replaced by the mean over all of them."""
    first = torch.load(paths[0], map_location="cpu", weights_only=True)
    state = first["state_dict"]
    sums = {k: v.double().clone() for k, v in state.items() if v.is_floating_point()}
    for path in paths[1:]:
        other = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        if other.keys() != state.keys():
            raise ValueError(f"{path} holds other weights than {paths[0]}: they cannot be averaged")
        for k in sums:
            sums[k] += other[k].double()
    first["state_dict"] = {k: (sums[k] / len(paths)).to(v.dtype) if k in sums else v for k, v in state.items()}
    return first


def averaged_checkpoint(trainer: pl.Trainer) -> str | None:
    """The averaged checkpoint this fit wrote, if any."""
    return next((cb.path for cb in trainer.callbacks if isinstance(cb, AverageCheckpoints) and cb.path), None)
