"""Checkpoints read back: as plain data only (``weights_only=True``), moved ``_target_``s renamed
(nets/renamed.py), their stored config built only from allowed classes at their own positions (writing them:
runs/checkpoint_io.py).

A stored config is code: instantiating it calls whatever its ``_target_``s name, with whatever arguments it
gives. A checkpoint from elsewhere may name anything, so before a stored config is built every ``_target_``
in it must be a class (or builder function without side effects) that conf/ places at that position
(``model.backbone``, ``data``, ``augment.train.transforms.*``, ...), one of ``DECLARED_TARGETS`` at its declared
positions, or an albumentations transform class inside an augment pipeline; so a backbone under ``augment``
or ``model.temporal`` is refused. Every argument given to it must be a named parameter of that constructor
(so nothing reaches a ``**kwargs``), ``WRITING_ARGUMENTS`` must be off, and so must the arguments the class
itself limits (``STORED_CONFIG_LIMITS``: a timm backbone's ``pretrained``, wherever it stands). Functions
that write files (``albumentations.core.serialization.save``, ``torch.save``) are never allowed.
"""

from __future__ import annotations

import functools
import inspect
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.utils import get_object

from nets.renamed import renamed_targets
from runs.console import UserError

# What a stored config may build, and where: every `_target_` that conf/ names, at the config positions
# where conf/ places it (derived below, so a new option of conf/ is loadable with no list to edit), and the
# classes conf/ does not name, declared here with their positions. A position is a key path; `*` is one key,
# `**` any number; the entries of a collection (COLLECTIONS) and list items count as `*`.
CONF = Path(__file__).resolve().parent.parent / "conf"
# conf/ groups whose objects are never stored in a checkpoint: Hydra's own, this machine's settings.
UNSTORED_GROUPS = ("hydra", "local")
# Keys whose entries the user names freely (`+callbacks.mine=...`, `+augment.train.transforms.blur=...`): a class
# conf/ places at one entry may stand at any entry of the same collection.
COLLECTIONS = ("callbacks", "logger", "augment.*.transforms", "trainer.plugins")
# Classes conf/ does not name that a stored config may build, and where.
DECLARED_TARGETS = {
    "torch.optim.Adam": ("optimizer",),
    "torch.optim.RMSprop": ("optimizer",),
    "pytorch_lightning.callbacks.TQDMProgressBar": ("callbacks.*",),
}
# Classes under these packages deriving from one of the given bases (checked on the imported class, not its
# name): albumentations' transforms and compositions, hundreds of them, none of which writes files when built,
# at any depth of an augment pipeline's transforms. Functions there (serialization.save, ...) never are.
ALLOWED_FAMILIES = {
    "albumentations.": (
        ("albumentations.core.transforms_interface.BasicTransform", "albumentations.core.composition.BaseCompose"),
        ("augment.*.transforms.**",),
    ),
}
# Arguments a callable passes on through its **kwargs to something that is not its base class: the names, or
# the import path of the class that takes them.
PASSED_ON_ARGUMENTS = {
    "pytorch_lightning.loggers.WandbLogger": ("group", "tags", "entity", "notes", "job_type", "mode"),  # wandb.init
    "runs.lightning_private.WandbLogger": ("group", "tags", "entity", "notes", "job_type", "mode"),  # wandb.init
    "models.roi.roi_head": "models.roi.ROIHead",
}
# Arguments that make any constructor write files: refused in a stored config unless false/null. What else a
# class may not take from a file it declares itself, beside its arguments: ``STORED_CONFIG_LIMITS`` (below).
WRITING_ARGUMENTS = ("download",)
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


def is_checkpoint_file(path: str | Path) -> bool:
    """Whether ``torch.load`` would read ``path`` as saved data (a ``torch.save`` archive: ``<name>/data.pkl``),
    not as a TorchScript module (whose archive also holds ``code/``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names) and not any("/code/" in n for n in names)


def directory_message(path: str | Path) -> str:
    """What to say when a checkpoint path is a directory: the checkpoints inside it."""
    found = sorted(Path(path).rglob("*.ckpt"))
    inside = ", ".join(str(p) for p in found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
    return f"checkpoint {path} is a directory; give one checkpoint file: " + (
        f"it holds {inside}" if found else "it holds no .ckpt file (a run's are in <run dir>/checkpoints/)"
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's plain data (tensors and containers; ``weights_only=True``), its stored config's moved
    ``_target_``s renamed (nets/renamed.py). A file that is not one, or one holding other pickled objects, raises
    ``NotACheckpointError`` naming it: never a hint to load it unsafely (torch's own message suggests
    ``weights_only=False``, so it is not passed on)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(directory_message(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save's format since 1.6; Lightning writes nothing else
        with open(path, "rb") as f:
            begins_as_zip = f.read(4) == b"PK\x03\x04"
        if begins_as_zip:  # the zip's directory, at its end, is missing
            raise NotACheckpointError(
                f"{path} is not a readable checkpoint: truncated or corrupt (it begins as a file written by "
                f"torch.save but its end is missing, {path.stat().st_size} bytes). Use another checkpoint of the run "
                f"(checkpoints/best.ckpt, last.ckpt)."
            )
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


def check_targets(node: Any, path: str | Path, key: str = "", *, trusted: Any = None, at: tuple[str, ...] = ()) -> None:
    """Raise ``UnsafeConfigError`` naming the file, key and target of any ``_target_`` that is not allowed at its
    position or is given an argument it may not take from a file, and for any interpolation (stored configs are
    saved resolved; ``${...}`` would run a resolver). ``trusted``: the same node of a config the user gave now;
    a target the user names there at the same key is theirs (a resume of their own run with their own
    callbacks), not the file's. ``at``: the key path of ``node`` (``key`` spells it for messages)."""
    if isinstance(node, dict):
        target = node.get("_target_")
        same = isinstance(trusted, dict) and trusted.get("_target_") == target
        if target is not None and not same:
            obj = check_target(target, path, f"{key}._target_" if key else "_target_", at)
            check_arguments(obj, node, path, key)
        for k, v in node.items():
            if k != "_target_":
                here = f"{key}.{k}" if key else str(k)
                inner = trusted.get(k) if isinstance(trusted, dict) else None
                check_targets(v, path, here, trusted=inner, at=(*at, str(k)))
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            inner = trusted[i] if isinstance(trusted, list | tuple) and i < len(trusted) else None
            check_targets(v, path, f"{key}[{i}]", trusted=inner, at=(*at, str(i)))
    elif isinstance(node, str) and "${" in node:
        raise UnsafeConfigError(
            f"{path}: config value {key}={node!r} is an interpolation; stored configs are saved resolved"
        )


FIX = (
    "Load only checkpoints you trust; a class is allowed where a conf/ option places it, or where "
    "nets.stored.DECLARED_TARGETS says."
)


def check_target(target: Any, path: str | Path, key: str, at: tuple[str, ...]) -> Any:
    """The object ``target`` names, if it may stand at key path ``at``: a class conf/ places there or one of
    ``DECLARED_TARGETS`` (exact import paths), or a class of an ``ALLOWED_FAMILIES`` package deriving from one
    of its bases (checked on the imported class)."""
    if not isinstance(target, str):
        raise UnsafeConfigError(f"{path}: {key}={target!r} is not an import path. {FIX}")
    family = next((p for p in ALLOWED_FAMILIES if target.startswith(p)), None)
    positions = allowed_positions().get(target, frozenset()) | set(ALLOWED_FAMILIES[family][1] if family else ())
    if not positions:
        raise UnsafeConfigError(
            f"{path}: {key}={target!r} is not an allowed class (no conf/ option names it, nor "
            f"nets.stored.DECLARED_TARGETS). {FIX}"
        )
    try:
        obj = get_object(target)
    except Exception as e:
        raise UnsafeConfigError(f"{path}: {key}={target!r} cannot be imported: {e}") from e
    if family is not None:
        bases = tuple(get_object(b) for b in ALLOWED_FAMILIES[family][0])
        if not (inspect.isclass(obj) and issubclass(obj, bases)):
            raise UnsafeConfigError(
                f"{path}: {key}={target!r} is {obj!r}, not a transform class "
                f"({', '.join(ALLOWED_FAMILIES[family][0])}); only those may be built from {family}*. {FIX}"
            )
    here = position(at)
    if not any(matches(here, p) for p in positions):
        raise UnsafeConfigError(
            f"{path}: {key}={target!r} may not stand at {'.'.join(at) or 'the top level'}: it is allowed only at "
            f"{', '.join(sorted(positions))}. {FIX}"
        )
    return obj


def position(at: tuple[str, ...]) -> str:
    """Key path ``at`` as a position: list items and the entries of ``COLLECTIONS`` become ``*``."""
    out: list[str] = []
    for part in at:
        entry = part.isdigit() or any(matches(".".join(out), c) for c in COLLECTIONS)
        out.append("*" if entry else part)
    return ".".join(out)


def matches(here: str, pattern: str) -> bool:
    """Whether position ``here`` is one of ``pattern``'s (``*``: one key, ``**``: any number of keys)."""
    return match_keys(here.split(".") if here else [], pattern.split(".") if pattern else [])


def match_keys(here: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not here
    if pattern[0] == "**":
        return any(match_keys(here[i:], pattern[1:]) for i in range(len(here) + 1))
    return bool(here) and pattern[0] in ("*", here[0]) and match_keys(here[1:], pattern[1:])


@functools.cache
def allowed_positions() -> dict[str, frozenset[str]]:
    """Every ``_target_`` of conf/ (outside ``UNSTORED_GROUPS``) with the positions conf/ gives it, and
    ``DECLARED_TARGETS``. A file's position is its Hydra package: its group (``model/temporal`` ->
    ``model.temporal``) unless a ``# @package`` line says otherwise."""
    found: dict[str, set[str]] = {t: set(p) for t, p in DECLARED_TARGETS.items()}
    for file in sorted(CONF.rglob("*.yaml")):
        group = file.parent.relative_to(CONF).parts
        if group[:1] and group[0] in UNSTORED_GROUPS:
            continue
        text = file.read_text()
        header = re.search(r"^#\s*@package\s+(\S+)", text, re.MULTILINE)
        package = header.group(1) if header else "_group_"
        base = () if package == "_global_" else group if package == "_group_" else tuple(package.split("."))
        for target, at in targets_in(yaml.safe_load(text), base):
            if at[:1] and at[0] in UNSTORED_GROUPS:  # hydra.callbacks... of a _global_ file
                continue
            found.setdefault(target, set()).add(position(at))
    return {t: frozenset(p) for t, p in found.items()}


def targets_in(node: Any, at: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """(``_target_``, key path) of every object in a config file (its Hydra ``defaults`` list aside)."""
    out = []
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            out.append((node["_target_"], at))
        for k, v in node.items():
            if k != "defaults" or at:
                out += targets_in(v, (*at, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += targets_in(v, (*at, str(i)))
    return out


def check_arguments(obj: Any, node: dict[str, Any], path: str | Path, key: str) -> None:
    """Every argument of the node must be a named parameter of the constructor (not one swallowed by a
    ``**kwargs`` that nobody declares); ``WRITING_ARGUMENTS`` must be off, and so must what the class's own
    ``STORED_CONFIG_LIMITS`` limits (an argument -> ``False``/``None``: off; a ``range``: within it)."""
    passed_on = PASSED_ON_ARGUMENTS.get(node["_target_"], ())
    accepted = named_parameters(obj) | (
        named_parameters(get_object(passed_on)) if isinstance(passed_on, str) else set(passed_on)
    )
    limits = getattr(obj, "STORED_CONFIG_LIMITS", {}) if inspect.isclass(obj) else {}
    where = key or "config"
    for name, value in node.items():
        if name in limits and not within(value, limits[name]):
            limit = limits[name]
            allowed = f"within [{limit.start}, {limit.stop - 1}]" if isinstance(limit, range) else "off"
            raise UnsafeConfigError(
                f"{path}: {where}.{name}={value!r} is refused from a stored config: {node['_target_']} would "
                f"download, read or write files with it (a stored config may give it only {allowed}; "
                f"{obj.__name__}.STORED_CONFIG_LIMITS; a rebuilt net takes the checkpoint's weights). {FIX}"
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


def within(value: Any, limit: Any) -> bool:
    if isinstance(limit, range):
        return isinstance(value, int) and not isinstance(value, bool) and value in limit
    return not value


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
