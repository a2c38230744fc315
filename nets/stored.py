"""Checkpoints read back: as plain data only (``weights_only=True``), moved ``_target_``s renamed
(nets/renamed.py), their stored config built only from an allowlist of exact classes (writing them:
runs/checkpoint_io.py).

A stored config is code: instantiating it calls whatever its ``_target_``s name, with whatever arguments it
gives. A checkpoint from elsewhere may name anything, so before a stored config is built every ``_target_``
in it must be one of ``ALLOWED_TARGETS`` (exact import paths of classes, and of builder functions without
side effects) or an albumentations transform class, and every argument given to it must be a named
parameter of that constructor (so nothing reaches a ``**kwargs``) that is not one of ``WRITING_ARGUMENTS``.
Functions that write files (``albumentations.core.serialization.save``, ``torch.save``) are never allowed,
whatever package they live in.
"""

from __future__ import annotations

import inspect
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object

from nets.renamed import renamed_targets
from runs.console import UserError

# Exact import paths a stored config may build: the project's nets and net parts, DataModules and
# transforms, and the training parts a resume rebuilds (trainer/resume.py). Every `_target_` of conf/ is here
# (tests/test_reliability_checkpoints.py checks that), except data.video.datamodule.SyntheticVideoDataModule,
# which writes its dataset under its `root`: evaluate such a checkpoint with `data=synthetic_video` given.
ALLOWED_TARGETS = frozenset(
    {
        # nets and their parts (models/: plain nn.Modules, no file IO)
        "models.net.Net",
        "models.backbones.LeNet",
        "models.backbones.ResNet",
        "models.backbones.VGG",
        "models.backbones.VideoResNet",
        "models.temporal.MeanPool",
        "models.temporal.MaxPool",
        "models.temporal.LSTM",
        "models.temporal.GRU",
        "models.fusion.ConcatFusion",
        "models.fusion.FPNFusion",
        "models.fusion.WeightedFusion",
        "models.nonlocal_block.add_non_local",
        "models.roi.roi_head",
        "models.airbench.AirbenchNet",
        "models.c3d.C3D",
        "models.i3d.InceptionI3d",
        "models.i3d_resnet.I3DResNet",
        "models.slowfast.SlowFast",
        "models.x3d.X3D",
        "models.tsm.TSM",
        "models.tv_video.S3D",
        "models.tv_video.MViT",
        "models.tv_video.Swin3D",
        "models.timm_backbone.TimmBackbone",  # its pretrained / pretrained_file are refused (BACKBONE_WEIGHTS)
        # data: DataModules read files (CIFAR-10 pickles through a restricted unpickler), never write them
        "data.digits.DigitsDataModule",
        "data.multi_digits.MultiDigitsDataModule",
        "data.cifar10.CIFAR10DataModule",
        "data.image_folder.ImageFolderDataModule",
        "data.video.datamodule.VideoDataModule",
        "data.video.datamodule.HMDB51DataModule",
        "data.video.annotations.KineticsDataModule",
        "data.video.annotations.SSv2DataModule",
        "data.video.annotations.VideoListDataModule",
        "data.transforms.Pipeline",
        "data.randaugment.RandAugment",
        "data.mix.build_mixer",
        # training parts (a resume rebuilds the whole run)
        "trainer.module.ClassificationModule",
        "trainer.optim.constant",
        "trainer.optim.cosine",
        "trainer.optim.multistep",
        "trainer.optim.onecycle",
        "trainer.optim.triangle",
        "trainer.optim.decoupled_sgd",
        "trainer.callbacks.whitening.WhiteningInit",
        "trainer.callbacks.lookahead.Lookahead",
        "trainer.callbacks.finetune.FineTune",
        "trainer.callbacks.ema.EMA",
        "trainer.callbacks.averaging.AverageCheckpoints",
        "trainer.callbacks.checkpoint.ModelCheckpoint",
        "runs.checkpoint_io.AtomicCheckpointIO",
        "runs.distributed.DDPStrategy",
        "torch.optim.SGD",
        "torch.optim.Adam",
        "torch.optim.AdamW",
        "torch.optim.RMSprop",
        "pytorch_lightning.Trainer",
        "pytorch_lightning.callbacks.LearningRateMonitor",
        "pytorch_lightning.callbacks.RichProgressBar",
        "pytorch_lightning.callbacks.TQDMProgressBar",
        "pytorch_lightning.callbacks.EarlyStopping",
        "pytorch_lightning.loggers.CSVLogger",
        "pytorch_lightning.loggers.TensorBoardLogger",
        "pytorch_lightning.loggers.WandbLogger",
        "runs.lightning_private.WandbLogger",
    }
)
# Classes under these packages are allowed when they derive from one of the given bases (checked on the
# imported class, not its name): albumentations' transforms and compositions, hundreds of them, none of
# which writes files when built. Functions there (serialization.save, ...) never are.
ALLOWED_FAMILIES = {
    "albumentations.": (
        "albumentations.core.transforms_interface.BasicTransform",
        "albumentations.core.composition.BaseCompose",
    ),
}
# Arguments a callable passes on through its **kwargs to something that is not its base class: the names, or
# the import path of the class that takes them.
PASSED_ON_ARGUMENTS = {
    "pytorch_lightning.loggers.WandbLogger": ("group", "tags", "entity", "notes", "job_type", "mode"),  # wandb.init
    "runs.lightning_private.WandbLogger": ("group", "tags", "entity", "notes", "job_type", "mode"),  # wandb.init
    "models.roi.roi_head": "models.roi.ROIHead",
}
# Arguments that make a constructor write files: refused in a stored config unless false/null.
WRITING_ARGUMENTS = ("download",)
# A backbone's own weight loading (timm: a hub download, or a file read outside weights_only): refused in a
# stored config unless false/null; a net rebuilt from a checkpoint takes the checkpoint's weights anyway.
BACKBONE_WEIGHTS = ("pretrained", "pretrained_file")
# Keys of a config node that are not constructor arguments: Hydra's own, and nets/build.py's FRAMEWORK_KEYS
# of a model config (taken out before the net is built).
NOT_ARGUMENTS = (
    "_target_",
    "_partial_",
    "_recursive_",
    "_convert_",
    "pretrained",
    "pretrained_exclude",
    "pretrained_format",
    "channels_last",
)
# The parts of a run config that eval.py, extract.py and fine-tuning build from a checkpoint; the rest
# (trainer, callbacks, loggers, ...) is left out of ``stored_config``.
BUILT_PARTS = ("model", "data", "augment")


class UnsafeConfigError(UserError, ValueError):
    pass


class NotACheckpointError(UserError, ValueError):
    pass


# --- reading ----------------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's plain data (tensors and containers; ``weights_only=True``), its stored config's moved
    ``_target_``s renamed (nets/renamed.py). A file that is not one, or one holding other pickled objects, raises
    ``NotACheckpointError`` naming it: never a hint to load it unsafely (torch's own message suggests
    ``weights_only=False``, so it is not passed on)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save's format since 1.6; Lightning writes nothing else
        raise NotACheckpointError(
            f"{path} is not a checkpoint ({path.stat().st_size} bytes, not a file written by torch.save); "
            f"give the .ckpt file of a run (<run dir>/checkpoints/last.ckpt or best.ckpt)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"a pickled {found.group(1)}" if found else "pickled objects"
        raise NotACheckpointError(
            f"{path} holds {what} besides tensors and plain containers; not loaded, since unpickling it could "
            f"run code. Checkpoints written by train.py hold none: this file was not written by visfeat."
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise NotACheckpointError(
            f"{path} is not a readable checkpoint: truncated or corrupt ({type(e).__name__}). Use another "
            f"checkpoint of the run (checkpoints/best.ckpt, last.ckpt)."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise NotACheckpointError(f"{path} is not a visfeat/Lightning checkpoint: no 'state_dict' in it")
    hparams = ckpt.get("hyper_parameters")
    if isinstance(hparams, dict) and isinstance(hparams.get("config"), dict):
        hparams["config"] = renamed_targets(hparams["config"])  # written before a class moved (nets/renamed.py)
    return ckpt


def stored_config(ckpt: dict[str, Any], path: str | Path, *, parts: tuple[str, ...] = BUILT_PARTS) -> dict[str, Any]:
    """The parts of the run config saved in the checkpoint that are built from it (``parts``: by default
    ``BUILT_PARTS``; ``("model",)`` where only the net is rebuilt) and its plain top-level values (``seed``,
    ...), checked against the allowlist before anyone builds them."""
    config = ckpt.get("hyper_parameters", {}).get("config")
    if not config or "model" not in config:
        raise ValueError(
            f"{path} holds no visfeat run config (hyper_parameters.config.model); was it written by train.py?"
        )
    kept = {k: v for k, v in config.items() if k in parts or not isinstance(v, dict | list)}
    check_targets(kept, path)
    return kept


def check_targets(node: Any, path: str | Path, key: str = "", *, trusted: Any = None) -> None:
    """Raise ``UnsafeConfigError`` naming the file, key and target of any ``_target_`` that is not allowed or is
    given an argument it may not take from a file, and for any interpolation (stored configs are saved
    resolved; ``${...}`` would run a resolver). ``trusted``: the same node of a config the user gave now;
    a target the user names there at the same key is theirs (a resume of their own run with their own
    callbacks), not the file's."""
    if isinstance(node, dict):
        target = node.get("_target_")
        same = isinstance(trusted, dict) and trusted.get("_target_") == target
        if target is not None and not same:
            obj = check_target(target, path, f"{key}._target_" if key else "_target_")
            check_arguments(obj, node, path, key)
        for k, v in node.items():
            if k != "_target_":
                here = f"{key}.{k}" if key else str(k)
                check_targets(v, path, here, trusted=trusted.get(k) if isinstance(trusted, dict) else None)
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            inner = trusted[i] if isinstance(trusted, list | tuple) and i < len(trusted) else None
            check_targets(v, path, f"{key}[{i}]", trusted=inner)
    elif isinstance(node, str) and "${" in node:
        raise UnsafeConfigError(
            f"{path}: config value {key}={node!r} is an interpolation; stored configs are saved resolved"
        )


FIX = "Load only checkpoints you trust; if this one is, add its class to nets.stored.ALLOWED_TARGETS."


def check_target(target: Any, path: str | Path, key: str) -> Any:
    """The object ``target`` names, if it is allowed: one of ``ALLOWED_TARGETS`` exactly, or a class of an
    ``ALLOWED_FAMILIES`` package deriving from one of its bases (checked on the imported class)."""
    if not isinstance(target, str):
        raise UnsafeConfigError(f"{path}: {key}={target!r} is not an import path. {FIX}")
    family = next((p for p in ALLOWED_FAMILIES if target.startswith(p)), None)
    if target not in ALLOWED_TARGETS and family is None:
        raise UnsafeConfigError(
            f"{path}: {key}={target!r} is not an allowed class (nets.stored.ALLOWED_TARGETS). {FIX}"
        )
    try:
        obj = get_object(target)
    except Exception as e:
        raise UnsafeConfigError(f"{path}: {key}={target!r} cannot be imported: {e}") from e
    if family is not None:
        bases = tuple(get_object(b) for b in ALLOWED_FAMILIES[family])
        if not (inspect.isclass(obj) and issubclass(obj, bases)):
            raise UnsafeConfigError(
                f"{path}: {key}={target!r} is {obj!r}, not a transform class ({', '.join(ALLOWED_FAMILIES[family])}); "
                f"only those may be built from {family}*. {FIX}"
            )
    return obj


def check_arguments(obj: Any, node: dict[str, Any], path: str | Path, key: str) -> None:
    """Every argument of the node must be a named parameter of the constructor (not one swallowed by a
    ``**kwargs`` that nobody declares), and ``WRITING_ARGUMENTS`` must be off."""
    passed_on = PASSED_ON_ARGUMENTS.get(node["_target_"], ())
    accepted = named_parameters(obj) | (
        named_parameters(get_object(passed_on)) if isinstance(passed_on, str) else set(passed_on)
    )
    where = key or "config"
    for name, value in node.items():
        if name in BACKBONE_WEIGHTS and value and key.endswith("backbone"):
            raise UnsafeConfigError(
                f"{path}: {where}.{name}={value!r} would make {node['_target_']} download or read weights; a "
                f"stored config may not (the checkpoint holds the weights). {FIX}"
            )
        if name in NOT_ARGUMENTS:
            continue
        if name not in accepted:
            raise UnsafeConfigError(
                f"{path}: {where}.{name} is not an argument of {node['_target_']} "
                f"(it takes {', '.join(sorted(accepted)) or 'none'}). {FIX}"
            )
        if name in WRITING_ARGUMENTS and value:
            raise UnsafeConfigError(
                f"{path}: {where}.{name}={value!r} would make {node['_target_']} write files; a stored config may "
                f"not. Give the data config on the command line (data=<name>) to do that."
            )


def named_parameters(obj: Any) -> set[str]:
    """The keyword parameters ``obj(...)`` names, following ``**kwargs`` up a class's bases (``_args_``,
    positional arguments, is never among them)."""
    functions = [c.__init__ for c in inspect.getmro(obj) if "__init__" in vars(c)] if inspect.isclass(obj) else [obj]
    names: set[str] = set()
    for fn in functions:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # a builtin: nothing to learn from it
            return names
        names |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def net_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The net's weights out of a LightningModule state_dict (keys prefixed ``net.``)."""
    return {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
