"""Turning a composed config into a run: ``train(cfg)`` and ``evaluate(cfg)``.

Each reads like a table of contents: check the config, build the parts, fit/test, record the results.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from data.base import ClassificationDataModule
from nets.build import build_net, net_from_checkpoint
from nets.stored import BUILT_PARTS, load_checkpoint, stored_config
from nets.tta import checkpoint_tta
from runs.console import start_console
from runs.distributed import end_processes
from runs.inference_info import InferenceInfo, inference_info
from runs.lock import lock_run_dir
from runs.plots import plot_confusion
from runs.results import git_state, package_versions, run_tags, write_json
from trainer.callbacks.averaging import averaged_checkpoint
from trainer.callbacks.faults import ResumeState, SaveOnSignal
from trainer.callbacks.finetune import FineTune
from trainer.callbacks.history import History
from trainer.callbacks.log_interval import StepLogInterval
from trainer.callbacks.pruning import trial_callbacks
from trainer.callbacks.summary import ModelSummaryLine
from trainer.checks import (
    ConfigError,
    check_before_first_step,
    check_config,
    check_data_options,
    check_eval_config,
    check_precision,
    holds_out_no_validation,
)
from trainer.module import ClassificationModule, class_accuracies
from trainer.resume import resumed_config
from trainer.tuning import lr_range_test

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | None:
    """Fit and test the configured model; write results.json; return the metric named by ``optimized_metric``.

    The run dir is locked while the run uses it (runs/lock.py); a resumed run continues with its own saved
    config (trainer/resume.py)."""
    check_config(cfg)
    with lock_run_dir(cfg.paths.output_dir):
        return fit_and_test(resumed_config(cfg))


def fit_and_test(cfg: DictConfig) -> float | None:
    check_config(cfg)
    start_console(cfg)  # third-party noise filtered; the config tree (extras.print_config)
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)

    datamodule = build_datamodule(cfg.data, cfg.augment)
    fractional_epochs(cfg, datamodule)
    no_validation_without_split(cfg)
    net = build_net(cfg.model, compile=cfg.get("compile", False))
    finetune = instantiate(cfg.finetune) if cfg.get("finetune") else None
    if finetune is not None and finetune.is_plain:
        finetune = None  # nothing to freeze, one lr: two plain parameter groups, one callback fewer per hook
    module = build_module(cfg, net, finetune)
    history = History(output_dir=str(run_dir))
    faults = [SaveOnSignal(), ResumeState()]  # checkpoint and exit on SIGTERM/SIGUSR1; exact resumes
    extra = [history, *faults, *([finetune] if finetune else []), StepLogInterval(), ModelSummaryLine()]
    extra += trial_callbacks(cfg)
    trainer = build_trainer(cfg, extra_callbacks=extra)
    check_precision(net, trainer)
    if cfg.get("lr_find"):  # the range test instead of training (trainer/tuning.py)
        lr_range_test(trainer, module, datamodule, run_dir)
        return None
    skipped_eval = check_before_first_step(datamodule, trainer)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_seconds = time.perf_counter() - start
    fit_metrics = dict(trainer.callback_metrics)

    test_metrics: dict[str, Any] = {}
    tested = averaged_checkpoint(trainer) or best_path(trainer)  # callbacks=average: the mean of the top k
    if cfg.get("test", True):
        test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=tested, weights_only=True)[0]

    results = {
        **{k: v for k, v in fit_metrics.items() if k.startswith("val/")},
        **module.fit_totals,
        **test_metrics,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train_seconds": train_seconds,
        "checkpoints/best": best_path(trainer),
        "checkpoints/tested": tested if cfg.get("test", True) else None,
        "checkpoints/last": str(run_dir / "checkpoints" / "last.ckpt"),
        "data/skipped_eval": skipped_eval,
        **run_metadata(cfg, datamodule),
    }
    if trainer.is_global_zero:
        record(run_dir, results, module, datamodule)
    end_processes(trainer)
    return optimized_value(cfg, results)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test a checkpoint on the test split of the data config stored in it (or of the one given), with its
    test-time augmentation (or ``module.tta``), in a run dir of its own: locked, and refused if it holds another
    run (runs/lock.py)."""
    check_eval_config(cfg)
    with lock_run_dir(cfg.paths.output_dir, fresh=True):
        return evaluate_here(cfg)


def evaluate_here(cfg: DictConfig) -> dict[str, Any]:
    start_console(cfg)
    ckpt = load_checkpoint(cfg.ckpt_path)
    # A data config given whole (data=<name>) is the user's: the stored one is neither vetted nor built.
    replaced = "_target_" in (cfg.get("data") or {})
    parts = ("model", "augment") if replaced else BUILT_PARTS
    stored = OmegaConf.create(stored_config(ckpt, cfg.ckpt_path, parts=parts))
    data_cfg = merge_data_config(stored, cfg)
    info = inference_info(ckpt, cfg.ckpt_path)
    tta = eval_tta(cfg, ckpt, info)
    pl.seed_everything(stored.seed, workers=True)
    datamodule = build_datamodule(data_cfg, stored.augment)
    net = net_from_checkpoint(ckpt, cfg.ckpt_path, num_classes=datamodule.num_classes)
    if info.stored and list(datamodule.class_names) != info.class_names:
        log.warning(
            "the data's classes %s are not the checkpoint's %s; accuracy compares label numbers",
            list(datamodule.class_names),
            info.class_names,
        )
    run_config = ckpt["hyper_parameters"]["config"]
    module = ClassificationModule(net=net, run_config=run_config, tta=tta)  # no optimizer: test only
    trainer = build_trainer(cfg)
    skipped_eval = check_before_first_step(datamodule, trainer)
    metrics = trainer.test(module, datamodule=datamodule)[0]
    results = {
        **metrics,
        "ckpt_path": str(cfg.ckpt_path),
        "tta": tta,
        "data/skipped_eval": skipped_eval,
        **run_metadata(cfg, datamodule),
    }
    if trainer.is_global_zero:
        record(Path(cfg.paths.output_dir), results, module, datamodule)
    end_processes(trainer)
    return results


# --- building ---------------------------------------------------------------------------------------------


def build_datamodule(data_cfg: DictConfig, augment_cfg: DictConfig | None) -> ClassificationDataModule:
    """The DataModule with its transforms; fails here, before any training, if the data is missing."""
    transforms = {}
    if augment_cfg is not None:
        transforms = {
            "train_transform": instantiate(augment_cfg.train),
            "eval_transform": instantiate(augment_cfg.eval),
        }
    datamodule = instantiate(data_cfg, **transforms)
    datamodule.check()
    data_cfg.num_classes = datamodule.check_num_classes()  # data.num_classes=null: from the data, before the net
    return datamodule


def fractional_epochs(cfg: DictConfig, datamodule: ClassificationDataModule) -> None:
    """``train_epochs=9.9``: ``trainer.max_epochs`` = 10 and ``trainer.max_steps`` = ceil(9.9 * batches per
    epoch of one process), so the schedule and the stop follow the fractional budget."""
    epochs = cfg.get("train_epochs")
    if epochs is None:
        return
    if not isinstance(epochs, int | float) or isinstance(epochs, bool) or epochs <= 0:
        raise ValueError(f"train_epochs={epochs!r} must be a positive number of epochs, e.g. train_epochs=9.9")
    datamodule.setup("fit")
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    processes = (devices if isinstance(devices, int) else 1) * (nodes if isinstance(nodes, int) else 1)
    per_process = math.ceil(len(datamodule.train_set) / max(1, processes))
    batches = per_process // datamodule.batch_size if per_process > datamodule.batch_size else 1  # drop_last
    with open_dict(cfg):
        cfg.trainer.max_epochs = math.ceil(epochs)
        cfg.trainer.max_steps = math.ceil(epochs * batches)


def no_validation_without_split(cfg: DictConfig) -> None:
    """``data.val_size=0`` (every training image trains, as airbench does): ``trainer.limit_val_batches=0``, so
    Lightning skips the validation loop instead of building an empty loader and warning about it, and best.ckpt
    holds the latest weights (nothing to monitor; check_config refused every other ``val/`` need)."""
    if not holds_out_no_validation(cfg):
        return
    with open_dict(cfg):
        cfg.trainer.limit_val_batches = 0
        if (cfg.get("callbacks") or {}).get("model_checkpoint") is not None:
            cfg.callbacks.model_checkpoint.monitor = None


def build_module(cfg: DictConfig, net: torch.nn.Module, finetune: FineTune | None = None) -> ClassificationModule:
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    mixer = instantiate(cfg.augment.mixer) if cfg.augment.get("mixer") else None
    # Partial first: keyword arguments given to instantiate() would themselves be instantiated, and the
    # plain run config is full of `_target_`s that must stay data.
    module = instantiate(cfg.module, _partial_=True)
    return module(
        net=net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler,
        mixer=mixer,
        group_params=finetune.param_groups if finetune else None,
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )


def build_trainer(cfg: DictConfig, extra_callbacks: list[pl.Callback] = ()) -> pl.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    return instantiate(cfg.trainer, callbacks=[*callbacks, *extra_callbacks], logger=loggers or False)


def eval_tta(cfg: DictConfig, ckpt: dict[str, Any], info: InferenceInfo) -> str:
    """``module.tta`` given to eval.py, else the checkpoint's run's; refused for nets that take clips."""
    given = (cfg.get("module") or {}).get("tta")
    try:
        return checkpoint_tta(given, ckpt["hyper_parameters"]["config"], clips=info.is_video, ckpt_path=cfg.ckpt_path)
    except ValueError as e:
        raise ConfigError(f"{e}; its input is {list(info.input_shape)}") from None


def merge_data_config(stored: DictConfig, cfg: DictConfig) -> DictConfig:
    """The checkpoint's data config, replaced by ``data=<name>`` or patched by ``+data.<key>=<value>``."""
    given = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
    given = OmegaConf.create({k: v for k, v in given.items() if v is not None})  # null: an option left unset
    merged = given if "_target_" in given else OmegaConf.merge(stored.data, given)
    check_data_options(merged, given)
    return merged


# --- recording --------------------------------------------------------------------------------------------


def best_path(trainer: pl.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    return cb.best_model_path or None if cb is not None else None


def run_metadata(cfg: DictConfig, datamodule: ClassificationDataModule) -> dict[str, Any]:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return {
        "seed": cfg.get("seed"),
        "tags": run_tags(cfg.get("tags")),
        "overrides": overrides,
        "run_dir": str(cfg.paths.output_dir),
        "versions": package_versions(),
        "data/num_classes": datamodule.num_classes,
        "data/test_is_val": bool(getattr(datamodule, "test_is_val", False)),
        **git_state(),
    }


def record(run_dir: Path, results: dict[str, Any], module: ClassificationModule, datamodule) -> None:
    if module.test_confusion is not None:
        confusion, names = module.test_confusion.numpy(), datamodule.class_names
        results = {**results, "test/acc_per_class": class_accuracies(module.test_confusion, names)}
        plot_confusion(confusion, names, run_dir / "plots" / "confusion.png")
    path = write_json(run_dir / "results.json", results)
    log.info("results: %s", path)


def optimized_value(cfg: DictConfig, results: dict[str, Any]) -> float | None:
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in results:
        raise KeyError(f"optimized_metric={name!r} is not among the run's metrics: {sorted(results)}")
    return float(results[name])
