"""Checkpoints from elsewhere (issue 20, items 1 and 5): crafted files that would write files or run code
through a stored config or a CIFAR-10 pickle, files that are no checkpoint, overrides that would be dropped."""

from __future__ import annotations

import os
import pickle
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from data.cifar10 import read_batches
from nets.build import build_net
from nets.stored import NotACheckpointError, UnsafeConfigError, check_targets, load_checkpoint, stored_config
from runs.compose import compose_config
from tests.data_utils import write_cifar10
from trainer.checks import ConfigError, check_config
from trainer.run import evaluate


def run_config(tmp_path: Path, *overrides: str) -> dict:
    cfg = compose_config(*overrides, output_dir=tmp_path / "src")
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}


def write_ckpt(path: Path, config: dict, *, with_weights: bool = True) -> Path:
    state = {}
    if with_weights:
        net = build_net(OmegaConf.create(config["model"]), load_weights=False)
        state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}}, path)
    return path


def test_stored_augment_naming_a_file_writing_function_is_refused_and_writes_nothing(make_cfg, tmp_path):
    config = run_config(tmp_path, "data=cifar10", f"data.root={tmp_path}")
    target = tmp_path / "overwritten.txt"
    config["augment"]["eval"] = {
        "_target_": "albumentations.core.serialization.save",
        "transform": {"_target_": "albumentations.HorizontalFlip"},
        "filepath_or_buffer": str(target),
    }
    path = write_ckpt(tmp_path / "evil.ckpt", config)
    with pytest.raises(UnsafeConfigError, match=r"augment\.eval\._target_='albumentations\.core\.serialization\.save'"):
        evaluate(make_cfg(f"ckpt_path={path}", config_name="eval"))
    assert not target.exists()


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"_target_": "os.system", "command": "true"}, "not an allowed class"),
        ({"_target_": "torch.save", "obj": 1, "f": "/tmp/x"}, "not an allowed class"),
        ({"_target_": "data.cifar10.read_batches"}, "not an allowed class"),  # a function of an allowed module
        ({"_target_": "albumentations.core.serialization.save"}, "not a transform class"),
        ({"_target_": "albumentations.save"}, "not a transform class"),
        ({"_target_": "data.cifar10.CIFAR10DataModule", "root": "/x", "download": True}, "would make .* write files"),
        ({"_target_": "models.backbones.LeNet", "_args_": ["x"]}, "_args_ is not an argument"),
        ({"_target_": "data.cifar10.CIFAR10DataModule", "root": "/x", "evil": 1}, "evil is not an argument"),
    ],
)
def test_targets_and_arguments_outside_the_allowlist_are_refused(tmp_path, node, message):
    config = run_config(tmp_path)
    config["data"] = node
    path = write_ckpt(tmp_path / "evil.ckpt", config, with_weights=False)
    with pytest.raises(UnsafeConfigError, match=message):
        stored_config(load_checkpoint(path), path)


CONF = Path(__file__).resolve().parent.parent / "conf"
SYNTHETIC = {("data", "synthetic_video"), ("experiment", "video_synthetic")}  # refused from files, below
# Every option of the groups whose classes a run builds (found on disk, so a new option is checked too).
OPTIONS = [
    (group, path.stem)
    for group in ("data", "model", "augment", "callbacks", "logger", "optimizer", "scheduler", "finetune", "experiment")
    + tuple(f"model/{d.name}" for d in sorted((CONF / "model").iterdir()) if d.is_dir())
    for path in sorted((CONF / group).glob("*.yaml"))
    if not path.stem.startswith("_") and (group, path.stem) not in SYNTHETIC
]


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_shipped_config_passes_the_allowlist(tmp_path, group, option):
    """The allowlist is exact, so every class conf/ names must be in it (with arguments it declares)."""
    extra = ["data.num_classes=3"] if (group, option) in {("data", o) for o in NEEDS_NUM_CLASSES} else []
    check_targets(run_config(tmp_path, f"{group}={option}", *extra), "conf")


NEEDS_NUM_CLASSES = ("image_folder", "video_folder", "ucf101", "hmdb51", "kinetics", "ssv2", "video_list")


def test_synthetic_video_data_is_refused_from_a_file(tmp_path):
    """It writes its dataset under its root: a stored config may not make eval.py do that."""
    with pytest.raises(UnsafeConfigError, match="SyntheticVideoDataModule"):
        check_targets(run_config(tmp_path, "data=synthetic_video"), "x.ckpt")


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/visfeat-test-cifar-payload-ran")


def test_crafted_cifar_pickle_runs_nothing(make_cfg, tmp_path):
    """A stored data config pointing at crafted pickles: the payload is refused, naming the file."""
    MARKER.unlink(missing_ok=True)
    folder = write_cifar10(tmp_path / "cifar")
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": Payload(), "labels": [0]}, f, protocol=2)
    path = write_ckpt(tmp_path / "evil.ckpt", run_config(tmp_path, "data=cifar10", f"data.root={tmp_path / 'cifar'}"))
    with pytest.raises(ValueError, match=r"data_batch_1 is not a readable pickle batch .*posix\.system"):
        evaluate(make_cfg(f"ckpt_path={path}", config_name="eval"))
    assert not MARKER.exists()


def test_official_cifar_layout_still_reads(tmp_path):
    folder = write_cifar10(tmp_path, n_per_batch=7)
    images, labels = read_batches(folder, ["data_batch_1", "data_batch_2"])
    assert images.shape == (14, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (14,)


def test_zero_byte_cifar_pickle_names_the_file(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"")
    with pytest.raises(ValueError, match=r"CIFAR-10 batch .*test_batch is empty \(0 bytes\)"):
        read_batches(folder, ["test_batch"])


def full_message(excinfo) -> str:
    return "".join(traceback.format_exception(excinfo.value))


@pytest.mark.parametrize("content", [os.urandom(4096), b"", b"PK\x03\x04" + os.urandom(100)])
def test_a_file_that_is_no_checkpoint_says_so_and_never_suggests_unsafe_loading(tmp_path, content):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(NotACheckpointError, match=r"model\.ckpt is not a (readable )?checkpoint") as excinfo:
        load_checkpoint(path)
    assert "weights_only" not in full_message(excinfo)


def test_a_checkpoint_holding_code_names_it_and_never_suggests_unsafe_loading(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}, "x": Payload()}, path)
    with pytest.raises(NotACheckpointError, match=r"holds a pickled posix\.system .* could run code") as excinfo:
        load_checkpoint(path)
    assert "weights_only" not in full_message(excinfo)


@pytest.mark.parametrize("override", ["+trainer.callbacks.fault._target_=tests.faults.RaiseAt", "+trainer.logger=x"])
def test_callbacks_or_logger_under_trainer_are_an_error_naming_the_key(make_cfg, override):
    key = override.split("=")[0].lstrip("+").removesuffix("._target_")
    with pytest.raises(ConfigError, match=rf"{key}: the Trainer's .* would be dropped"):
        check_config(make_cfg(override))


def test_a_stored_timm_backbone_may_not_fetch_weights(tmp_path):
    config = run_config(tmp_path)
    config["model"]["backbone"] = {
        "_target_": "models.timm_backbone.TimmBackbone",
        "name": "resnet18",
        "pretrained": True,
    }
    with pytest.raises(UnsafeConfigError, match=r"model.backbone.pretrained=True would make .*TimmBackbone download"):
        check_targets(config, "x.ckpt")


# --- checkpoints written before a class moved (nets/renamed.py) ------------------------------------------------

# The `_target_`s as train.py wrote them into checkpoints before the restructuring of issue 26.
BEFORE_THE_MOVES = {
    ("callbacks", "model_checkpoint"): "runs.checkpoint.ModelCheckpoint",
    ("trainer", "plugins", 0): "runs.checkpoint.AtomicCheckpointIO",
    ("callbacks", "ema"): "trainer.ema.EMA",
    ("finetune",): "trainer.finetune.FineTune",
}


def test_a_checkpoint_written_with_old_import_paths_still_loads_and_resumes(make_cfg, tmp_path):
    from hydra.utils import instantiate

    from nets.build import net_from_checkpoint
    from runs.checkpoint_io import AtomicCheckpointIO
    from trainer.callbacks.checkpoint import ModelCheckpoint
    from trainer.callbacks.ema import EMA
    from trainer.callbacks.finetune import FineTune
    from trainer.resume import resumed_config

    config = run_config(tmp_path, "callbacks=ema", "finetune=linear_probe")
    for keys, old in BEFORE_THE_MOVES.items():
        node = config
        for key in keys:
            node = node[key]
        node["_target_"] = old
    path = write_ckpt(tmp_path / "old.ckpt", config)
    assert "trainer.ema.EMA" in str(torch.load(path, weights_only=True)["hyper_parameters"])  # really the old paths

    ckpt = load_checkpoint(path)
    config = ckpt["hyper_parameters"]["config"]
    assert config["callbacks"]["ema"]["_target_"] == "trainer.callbacks.ema.EMA"
    assert config["finetune"]["_target_"] == "trainer.callbacks.finetune.FineTune"
    net_from_checkpoint(ckpt, path)  # eval / extract / export rebuild the net from it

    cfg = resumed_config(make_cfg(f"ckpt_path={path}", "callbacks=ema", "finetune=linear_probe", small=False))
    assert isinstance(instantiate(cfg.callbacks.ema), EMA)
    assert isinstance(instantiate(cfg.callbacks.model_checkpoint), ModelCheckpoint)
    assert isinstance(instantiate(cfg.trainer.plugins[0]), AtomicCheckpointIO)
    assert isinstance(instantiate(cfg.finetune), FineTune)


def test_the_renamed_targets_table_is_true_and_conf_uses_only_new_paths():
    from hydra.utils import get_object

    from nets.renamed import RENAMED_TARGETS
    from nets.stored import ALLOWED_TARGETS

    for old, new in RENAMED_TARGETS.items():
        with pytest.raises(ImportError):
            get_object(old)  # the old path is gone: otherwise it needs no entry
        get_object(new)
        assert new not in RENAMED_TARGETS  # one step: a second move edits the first entry's new path
    stored = {old for old, new in RENAMED_TARGETS.items() if new in ALLOWED_TARGETS}
    assert stored >= set(BEFORE_THE_MOVES.values())
    in_conf = {
        line.split("_target_:")[1].strip()
        for p in CONF.rglob("*.yaml")
        for line in p.read_text().splitlines()
        if "_target_:" in line
    }
    assert not in_conf & set(RENAMED_TARGETS), "conf/ names an old path: give it its new one"
