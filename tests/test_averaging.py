"""What timm and MMAction2 users reach for: the mean of the best checkpoints, an lr range test, a one-line
model summary."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from trainer.run import train


def test_the_top_k_checkpoints_are_averaged_and_the_average_is_tested(make_cfg, tmp_path):
    train(make_cfg("callbacks=average", "trainer.max_epochs=3", "trainer.limit_val_batches=4"))
    ckpts = tmp_path / "run" / "checkpoints"
    tops = sorted(ckpts.glob("top-*.ckpt"))
    assert [p.name for p in tops] == ["top-000.ckpt", "top-001.ckpt", "top-002.ckpt"]  # save_top_k=3
    averaged = torch.load(ckpts / "averaged.ckpt", weights_only=True)
    states = [torch.load(p, weights_only=True)["state_dict"] for p in tops]
    weights = [k for k, v in averaged["state_dict"].items() if k.startswith("net.") and v.is_floating_point()]
    assert weights
    for key in weights:
        mean = sum(s[key].double() for s in states) / 3
        assert torch.allclose(averaged["state_dict"][key].double(), mean, atol=1e-6), key
    assert not torch.equal(averaged["state_dict"][weights[0]], states[0][weights[0]])
    assert set(averaged["averaged_from"]) == {str(p) for p in tops}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["checkpoints/tested"] == str(ckpts / "averaged.ckpt") and "test/acc" in results


def test_averaging_needs_more_than_one_kept_checkpoint(make_cfg):
    with pytest.raises(ValueError, match=r"save_top_k > 1 .*callbacks.model_checkpoint.save_top_k=3"):
        train(make_cfg("callbacks=average", "callbacks.model_checkpoint.save_top_k=1"))


def test_lr_range_test_saves_its_plot_and_suggestion_and_trains_nothing(make_cfg, tmp_path):
    train(make_cfg("lr_find=true", "trainer.limit_train_batches=20"))
    run = tmp_path / "run"
    assert (run / "plots" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    found = json.loads((run / "lr_find.json").read_text())
    lrs = found["lr_find/lr"]
    assert len(lrs) >= 10 and lrs == sorted(lrs) and lrs[0] < 1e-4  # rising from min_lr
    assert found["lr_find/suggestion"] is None or lrs[0] <= found["lr_find/suggestion"] <= lrs[-1]
    assert not (run / "results.json").exists() and not list(run.glob("**/best.ckpt"))
    assert not list(run.glob(".lr_find_*.ckpt"))  # Lightning's temporary checkpoint removed


def test_a_fit_starts_with_a_one_line_model_summary(make_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="trainer.callbacks"):
        train(make_cfg("trainer.max_epochs=1", "test=false"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model: ")]
    # LeNet-5 on 3x32x32, 62006 parameters: conv1 456, conv2 2416, fc 48120 + 10164, head 850. Multiply-adds:
    # conv1 32*32*6*3*25 = 460800, conv2 12*12*16*6*25 = 345600, fc 400*120 + 120*84, head 84*10: 865320 (x2).
    assert lines == ["model: Net(LeNet): 62K parameters (62K trainable), 1.73M FLOPs per sample 3x32x32"]
