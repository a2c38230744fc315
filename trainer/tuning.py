"""The learning-rate range test (``python train.py lr_find=true``): Lightning's ``Tuner.lr_find``.

Flow: the run's module, data and trainer as built for training -> ``num_training`` steps with the lr rising
exponentially from ``min_lr`` to ``max_lr`` (stopping early once the loss exceeds 4x its best), the weights put
back afterwards -> ``<run dir>/plots/lr_find.png`` (loss against lr, the suggestion marked) and
``<run dir>/lr_find.json`` (every lr and loss, the suggestion: the steepest descent of the loss). The run
then ends without training: train again with ``optimizer.lr=<suggestion>`` (or a little below it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.tuner import Tuner  # noqa: E402

from runs.atomic import atomic_open  # noqa: E402

log = logging.getLogger(__name__)


def lr_range_test(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    run_dir: Path,
    *,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    num_training: int = 100,
) -> dict[str, Any]:
    finder = Tuner(trainer).lr_find(
        module,
        datamodule=datamodule,
        min_lr=min_lr,
        max_lr=max_lr,
        num_training=num_training,
        update_attr=False,
    )
    suggestion = finder.suggestion() if finder is not None else None
    result = {
        "lr_find/suggestion": suggestion,
        "lr_find/lr": [float(x) for x in finder.results.get("lr", [])] if finder is not None else [],
        "lr_find/loss": [float(x) for x in finder.results.get("loss", [])] if finder is not None else [],
    }
    if trainer.is_global_zero and finder is not None:
        (run_dir / "plots").mkdir(parents=True, exist_ok=True)
        fig = finder.plot(suggest=suggestion is not None)
        with atomic_open(run_dir / "plots" / "lr_find.png", "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        with atomic_open(run_dir / "lr_find.json") as f:
            f.write(json.dumps(result, indent=1))
        log.info(
            "lr range test: %d steps, suggested lr %s -> %s (train with optimizer.lr=...)",
            len(result["lr_find/lr"]),
            "none (the loss did not fall)" if suggestion is None else f"{suggestion:.3g}",
            run_dir / "plots" / "lr_find.png",
        )
    return result
