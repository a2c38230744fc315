"""Stored import paths are forever: the ``_target_``s of modules that moved (old -> new).

A checkpoint holds its run config with every ``_target_`` as the code spelled it when the checkpoint was
written. When a class moves, its old path is added here (never removed); ``nets.stored.load_checkpoint``
rewrites a stored config through this table before anything reads it, so checkpoints written before a move
still evaluate, extract, export and resume. The allowlist (``nets.stored.ALLOWED_TARGETS``) names only the
new paths.
"""

from __future__ import annotations

from typing import Any

RENAMED_TARGETS = {
    # the restructuring of issue 26: Lightning callbacks in trainer/callbacks/, sweeps in sweeps/, the
    # checkpoint writer in runs/checkpoint_io.py
    "runs.checkpoint.ModelCheckpoint": "trainer.callbacks.checkpoint.ModelCheckpoint",
    "runs.checkpoint.AtomicCheckpointIO": "runs.checkpoint_io.AtomicCheckpointIO",
    "trainer.callbacks.WhiteningInit": "trainer.callbacks.whitening.WhiteningInit",
    "trainer.lookahead.Lookahead": "trainer.callbacks.lookahead.Lookahead",
    "trainer.finetune.FineTune": "trainer.callbacks.finetune.FineTune",
    "trainer.ema.EMA": "trainer.callbacks.ema.EMA",
    "runs.sweep.SweepSummary": "sweeps.summary.SweepSummary",
    "runs.sweep.EnforceTags": "sweeps.summary.EnforceTags",
}


def renamed_targets(node: Any) -> Any:
    """``node`` (a stored config: dicts, lists, plain values) with every renamed ``_target_`` given its new path."""
    if isinstance(node, dict):
        return {
            k: RENAMED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str) else renamed_targets(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [renamed_targets(v) for v in node]
    return node
