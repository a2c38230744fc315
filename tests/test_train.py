"""The foundation end to end: the default recipe learns, every model and experiment config runs a step,
bad input fails early with a clear message."""

import json
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from tests.conftest import ROOT, run_script
from tests.data_utils import write_cifar10, write_image_folder
from trainer.checks import ConfigError
from trainer.run import train

IMAGE_MODELS = ["lenet", "resnet", "vgg"]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_default_recipe_learns_digits_and_records_the_run(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_epochs=4", "~callbacks.progress_bar", small=False)
    value = train(cfg)
    run = tmp_path / "run"
    res = results(run)
    assert res["test/acc"] > 0.7  # chance is 0.1
    assert value == pytest.approx(res["val/acc_best"])
    assert res["epochs"] == 4 and res["seed"] == 0 and res["train_seconds"] > 0
    assert {"git_sha", "git_dirty", "versions", "overrides"} <= res.keys()
    assert res["versions"]["torch"]
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    for png in ("loss.png", "acc.png", "lr.png", "confusion.png"):
        assert (run / "plots" / png).stat().st_size > 1000
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and "val/acc" in rows[0]


def test_train_accuracy_and_learning_rates_have_one_name_in_every_log(make_cfg, tmp_path):
    """train/acc is logged and plotted beside val/acc; the learning rates are lr/<group> in metrics.csv, the
    CSV logger's file and TensorBoard alike."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_logger = "+logger.csv={_target_: pytorch_lightning.loggers.CSVLogger, save_dir: ${paths.output_dir}, name: csv}"
    train(make_cfg("trainer.max_epochs=2", "logger=tensorboard", csv_logger))
    run = tmp_path / "run"
    ours = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/acc" in ours and "val/acc" in ours
    lrs = sorted(k for k in ours if k.startswith("lr"))
    assert lrs == ["lr/net"]  # one lr for the decayed and the undecayed parameters
    csv_logged = next((run / "csv").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert sorted(k for k in csv_logged if k.startswith("lr")) == lrs and "train/acc" in csv_logged
    tags = {
        t
        for f in (run / "tensorboard").rglob("events.out.tfevents.*")
        for t in EventAccumulator(str(f)).Reload().Tags()["scalars"]
    }
    assert sorted(t for t in tags if t.startswith("lr")) == lrs and "train/acc" in tags
    rows = [
        dict(zip(ours, line.split(","), strict=True)) for line in (run / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert all(0.0 <= float(r["train/acc"]) <= 1.0 for r in rows)


def test_no_validation_split_runs_no_validation_loop(make_cfg, tmp_path, recwarn):
    with pytest.raises(ConfigError, match=r"optimized_metric=val/acc_best needs a validation split.*test/acc"):
        train(make_cfg("data.val_size=0"))  # before any work: the default metric is a validation one
    with pytest.raises(ConfigError, match=r"callbacks.early_stopping.monitor=val/acc .*~callbacks.early_stopping"):
        train(make_cfg("data.val_size=0", "optimized_metric=test/acc", "callbacks=early_stopping"))
    cfg = make_cfg("data.val_size=0", "trainer.max_epochs=2", "optimized_metric=test/acc")
    assert train(cfg) > 0.1
    assert cfg.trainer.limit_val_batches == 0 and cfg.callbacks.model_checkpoint.monitor is None
    messages = [str(w.message) for w in recwarn]
    assert not [m for m in messages if "across ranks is zero" in m or "monitored key" in m], messages
    res = results(tmp_path / "run")
    assert res["epochs"] == 2 and "test/acc" in res and not any(k.startswith("val/") for k in res)
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_every_image_model_trains_a_step(make_cfg, model):
    cfg = make_cfg(f"model={model}", "trainer.fast_dev_run=true", "data.batch_size=8")
    train(cfg)


@pytest.mark.parametrize("depth", [34, 50])
def test_resnet_depths_and_vgg_depths_build(make_cfg, depth):
    import torch

    from nets.build import build_net

    cfg = make_cfg("model=resnet", f"model.backbone.depth={depth}")
    net = build_net(cfg.model)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert net.num_features == (2048 if depth == 50 else 512)


def test_cifar10_recipe_runs_a_step_on_a_tiny_copy(make_cfg, tmp_path):
    write_cifar10(tmp_path / "cifar10", n_per_batch=20, n_test=16)
    cfg = make_cfg(
        "experiment=cifar10_resnet18",
        f"data.root={tmp_path / 'cifar10'}",
        "data.val_size=10",
        "data.batch_size=8",
        "trainer.fast_dev_run=true",
        "trainer.accelerator=cpu",
        "data.persistent_workers=false",
    )
    assert cfg.optimizer.lr == 0.1 and cfg.model.backbone.small_input and cfg.scheduler._target_.endswith("onecycle")
    train(cfg)


def test_image_folder_trains(make_cfg, tmp_path):
    write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=4)
    cfg = make_cfg(
        "data=image_folder",
        f"data.root={tmp_path / 'imgs'}",
        "data.num_classes=3",
        "data.image_size=16",
        "data.batch_size=4",
        "data.persistent_workers=false",
    )
    train(cfg)
    assert results(tmp_path / "run")["data/num_classes"] == 3


def test_train_py_and_eval_py_as_a_user_runs_them(tmp_path):
    run_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    run_script("train.py", "trainer.max_epochs=2", "~callbacks.progress_bar", f"hydra.run.dir={run_dir}")
    res = results(run_dir)
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.model.backbone._target_ == "models.backbones.LeNet"
    run_script("eval.py", f"ckpt_path={res['checkpoints/best']}", f"hydra.run.dir={eval_dir}")
    assert results(eval_dir)["test/acc"] == pytest.approx(res["test/acc"], abs=1e-6)


# --- bad input ------------------------------------------------------------------------------------------


def test_unknown_group_option_lists_the_choices(make_cfg):
    with pytest.raises(ConfigCompositionException) as e:
        make_cfg("model=resnett")
    assert "resnett" in str(e.value) and "resnet" in str(e.value).replace("resnett", "")


@pytest.mark.parametrize(
    ("override", "key"), [("optimizer.lr=0", "optimizer.lr"), ("data.batch_size=-4", "data.batch_size")]
)
def test_non_positive_values_fail_before_training(make_cfg, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        train(make_cfg(override))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_dataset_fails_before_training_with_the_path(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        train(make_cfg("data=cifar10", f"data.root={tmp_path / 'absent'}"))
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "results.json").exists()


def test_checkpoint_with_other_classes_is_rejected_by_eval(make_cfg, tmp_path):
    train(make_cfg())
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=2)
    proc = run_script(
        "eval.py",
        f"ckpt_path={ckpt}",
        "data=image_folder",
        f"data.root={tmp_path / 'imgs'}",
        "data.num_classes=3",
        f"hydra.run.dir={tmp_path / 'eval'}",
        check=False,
    )
    assert proc.returncode != 0
    assert "trained for 10 classes but the data has 3" in proc.stderr


def test_readme_commands_are_the_first_two(tmp_path):
    lines = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines()]
    commands = [ln for ln in lines if ln.startswith("python3 dev.py")]
    assert commands[:2] == ["python3 dev.py train", "python3 dev.py test"]
