"""last.ckpt: current at the end of every fit, at most ``last_every_s`` behind during it, and a hard link to
best.ckpt (no second serialisation) when both hold the same state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import trainer.run
from trainer.callbacks.checkpoint import ModelCheckpoint

FOUR_EPOCHS = ["trainer.max_epochs=4", "trainer.limit_train_batches=2", "test=false"]


class RecordLast(pl.Callback):
    """Reads checkpoints/last.ckpt's global_step at the start of every epoch (after the previous one's saves)."""

    def __init__(self, *, path: str) -> None:
        self.path, self.steps = Path(path), []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self.steps.append(torch.load(self.path, weights_only=True)["global_step"] if self.path.exists() else None)


@pytest.fixture
def run(make_cfg, tmp_path, monkeypatch):
    """``run(*overrides)`` -> (last.ckpt's global_step seen at each epoch start after the first, checkpoint dir)."""

    def _run(*overrides: str) -> tuple[list, Path]:
        ckpts = tmp_path / "run" / "checkpoints"
        recorder = RecordLast(path=str(ckpts / "last.ckpt"))
        build = trainer.run.build_trainer  # the recorder joins the callbacks train() adds
        monkeypatch.setattr(
            trainer.run, "build_trainer", lambda cfg, extra_callbacks=(): build(cfg, [*extra_callbacks, recorder])
        )
        trainer.run.train(make_cfg(*FOUR_EPOCHS, *overrides))
        return recorder.steps, ckpts

    return _run


def test_last_is_written_every_epoch_with_no_interval_and_is_final_at_the_end(run):
    # monitor=step, mode=min: best.ckpt is written after the first epoch only, so last.ckpt needs its own saves.
    steps, ckpts = run(
        "callbacks.model_checkpoint.monitor=step",
        "callbacks.model_checkpoint.mode=min",
        "callbacks.model_checkpoint.last_every_s=0",
    )
    assert steps == [2, 4, 6]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 8
    assert torch.load(ckpts / "best.ckpt", weights_only=True)["global_step"] == 2


def test_last_waits_for_its_interval_but_is_final_at_the_end(run):
    steps, ckpts = run(
        "callbacks.model_checkpoint.monitor=step",
        "callbacks.model_checkpoint.mode=min",
        "callbacks.model_checkpoint.last_every_s=3600",
    )
    assert steps == [2, 2, 2]  # linked to best.ckpt after epoch 0, then not due again
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 8


def test_last_is_a_hard_link_to_best_when_best_was_just_written(run):
    # monitor=step, mode=max: every epoch improves, so every epoch's last.ckpt is the best.ckpt just written.
    steps, ckpts = run("callbacks.model_checkpoint.monitor=step", "callbacks.model_checkpoint.mode=max")
    assert steps == [2, 4, 6]
    last, best = os.stat(ckpts / "last.ckpt"), os.stat(ckpts / "best.ckpt")
    assert (last.st_ino, last.st_dev) == (best.st_ino, best.st_dev)
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 8
    # No temporary files left; the last.ckpt before the final save is kept (a resume's fallback).
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt", "previous.ckpt"]
    assert torch.load(ckpts / "previous.ckpt", weights_only=True)["global_step"] == 6


def test_resume_from_last_continues_after_the_final_epoch(run, make_cfg, tmp_path):
    _, ckpts = run("callbacks.model_checkpoint.last_every_s=3600")
    more = make_cfg(
        "trainer.max_epochs=5",
        "trainer.limit_train_batches=2",
        "test=false",
        f"ckpt_path={ckpts / 'last.ckpt'}",
        "allow_resume_changes=true",  # a longer run from the finished one's last.ckpt
        output_dir=tmp_path / "more",
    )
    trainer.run.train(more)
    assert torch.load(tmp_path / "more" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10


def test_negative_interval_is_refused():
    with pytest.raises(ValueError, match=r"last_every_s=-1 must be >= 0"):
        ModelCheckpoint(last_every_s=-1)


def test_a_checkpoint_without_a_newer_metric_state_resumes_one_without_net_weights_does_not(run, make_cfg, tmp_path):
    """Checkpoints written before train/acc was logged (no train_acc.* state) still resume: torchmetrics fills
    a missing metric state; a missing net tensor still fails strict loading."""
    _, ckpts = run("callbacks.model_checkpoint.last_every_s=3600")
    ckpt = torch.load(ckpts / "last.ckpt", weights_only=True)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("train_acc.")}
    old = tmp_path / "old.ckpt"  # as written before train/acc was logged
    torch.save(ckpt, old)

    def resume(path: Path, name: str) -> None:
        trainer.run.train(
            make_cfg(
                "trainer.max_epochs=5",
                "trainer.limit_train_batches=2",
                "test=false",
                f"ckpt_path={path}",
                "allow_resume_changes=true",
                output_dir=tmp_path / name,
            )  # fmt: skip
        )

    resume(old, "old")
    assert torch.load(tmp_path / "old" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    ckpt["state_dict"].pop(next(k for k in ckpt["state_dict"] if k.startswith("net.")))
    torch.save(ckpt, old)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"net\."):
        resume(old, "broken")
