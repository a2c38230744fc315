"""Writing checkpoints: atomically, and only with finite weights.

Reading them back (``weights_only=True``) and vetting their stored config is the net assembly's job
(nets/stored.py); ``last.ckpt`` kept fresh is trainer/callbacks/checkpoint.py's ``ModelCheckpoint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from runs.atomic import atomic_open
from runs.nonfinite import NonFiniteError, nonfinite_names


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer (``trainer.plugins``), made atomic and finite-only.

    The checkpoint goes to ``<file>.tmp`` in the same directory, is flushed and fsynced, then renamed over
    ``<file>`` (``os.replace`` is atomic on POSIX and Windows): a save that fails half way (disk full, an
    exception, a kill) leaves the previous ``last.ckpt`` / ``best.ckpt`` as they were. A checkpoint whose
    weights hold NaN or inf is refused with an error, so it never replaces a good one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote file systems: no rename there; Lightning's own writer
            check_finite_weights(checkpoint, path)
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        check_finite_weights(checkpoint, path)
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


def check_finite_weights(checkpoint: dict[str, Any], path: str | Path) -> None:
    """The net's parameters and buffers (``net.*``) must be finite; metric states (a max starts at -inf) may not be."""
    state = checkpoint.get("state_dict", {})
    bad = nonfinite_names(
        {k: v for k, v in state.items() if k.startswith("net.") and torch.is_tensor(v) and v.is_floating_point()}
    )
    if bad:
        raise NonFiniteError(
            f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}"
            f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}. The previous checkpoint is kept. "
            f"Training diverged: lower optimizer.lr or set trainer.gradient_clip_val."
        )
