"""Every option of the small config groups composes and instantiates; the loggers write their files."""

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from tests.conftest import ROOT
from trainer.run import build_trainer, train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_options_step(make_cfg, optimizer, scheduler):
    cfg = make_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}", "optimizer.lr=0.01")
    w = torch.nn.Parameter(torch.ones(3))
    opt = instantiate(cfg.optimizer)([{"params": [w]}])
    sched = instantiate(cfg.scheduler)(opt, total_steps=10, steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(lr >= 0 for lr in lrs) and w.detach().abs().sum() < 3  # it moved towards 0


@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_callback_options_instantiate(make_cfg, callbacks):
    cfg = make_cfg(f"callbacks={callbacks}")
    built = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    assert built and all(isinstance(c, pl.Callback) for c in built)  # (the progress bar is removed by SMALL)


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_options_compose(make_cfg, trainer):
    cfg = make_cfg(f"trainer={trainer}")
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if trainer in ("default", "ddp_sim"):
        assert build_trainer(cfg).max_epochs == 1


def test_all_loggers_write_their_files_offline(make_cfg, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "run"))
    assert options("logger") == ["csv", "many", "tensorboard", "wandb"]
    cfg = make_cfg("logger=many")
    assert sorted(cfg.logger) == ["csv", "tensorboard", "wandb"]
    train(cfg)
    run = tmp_path / "run"
    assert (run / "csv" / "metrics.csv").stat().st_size > 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert list(run.rglob("offline-run-*"))
    out, err = capfd.readouterr()
    assert "wandb: Tracking run" in out + err  # wandb's own lines reach the console here (not WANDB_SILENT) ...
    assert "anonymous setting" not in out + err  # ... but not the deprecation Lightning's arguments caused


def test_help_lists_the_groups_without_internal_configs():
    """`python train.py --help`: every group and its options, but not model/_base (included by the models)."""
    from tests.conftest import run_script

    out = run_script("train.py", "--help").stdout
    groups = dict(line.split(": ", 1) for line in out.split("== Config ==")[0].splitlines() if ": " in line)
    assert groups["model"].split(", ")[:3] == ["airbench", "c3d", "cnn_gru"] and "_base" not in groups["model"]
    assert groups["model/temporal"] == "gru, lstm, max, mean" and "cifar10, digits" in groups["data"]
    assert not [g for g in groups if g.startswith("hydra")]
