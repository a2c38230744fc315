"""Resuming a run with its own settings.

``python train.py resume=auto hydra.run.dir=<run dir>`` (what an interrupted run prints, and what a requeued
SLURM job runs again) continues from ``<run dir>/checkpoints/last.ckpt`` when it exists and starts the run
when it does not; ``ckpt_path=<file>`` continues from that checkpoint. Either way the run continues with the
config saved in the checkpoint (the run's fully resolved config: group choices, overrides, defaults of its
time), not with the defaults of this command line:

- a value this command sets that differs from the saved one is a conflict: refused, naming each key with
  both values, unless ``allow_resume_changes=true`` (then the given value wins, and is saved in the next
  checkpoints, so a later resume keeps it);
- the net itself never changes: a checkpoint of one net resumed with another model config fails naming both;
- ``paths`` come from this command (the run may have moved), and saved values under the checkpoint's old run
  dir are moved to the new one;
- every ``_target_`` restored from the file is checked against nets.stored's allowlist, unless this
  command's config names the same one at the same key.

Without ``resume`` or ``ckpt_path``, a run dir that already holds a run (``checkpoints/last.ckpt``) is
refused rather than overwritten. The original ``.hydra/`` stays; the resume's own config files go to
``.hydra-resume-<n>/`` (conf/hydra/default.yaml).
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nets.stored import NotACheckpointError, UnsafeConfigError, check_targets, load_checkpoint
from runs.checkpoint_io import PREVIOUS
from runs.console import UserError

log = logging.getLogger(__name__)

# How to resume, not what: never restored, never a conflict.
RESUME_KEYS = ("ckpt_path", "resume", "allow_resume_changes")
# Where the run is: always this command's.
LOCATION_KEYS = ("paths", "hydra")
CONF = Path(__file__).resolve().parent.parent / "conf"
MISSING = object()


class ResumeError(UserError, ValueError):
    pass


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint this run continues from, or None for a new run."""
    run_dir = Path(cfg.paths.output_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    mode = cfg.get("resume")
    if mode not in (None, "auto"):
        raise ResumeError(f"resume={mode!r}: use resume=auto (continue {last} if it exists), or ckpt_path=<file>")
    if cfg.get("ckpt_path"):
        return Path(cfg.ckpt_path)
    if mode == "auto":
        if last.is_file():
            return last
        log.info("resume=auto: no %s yet, starting the run", last)
        return None
    if last.is_file():
        raise ResumeError(
            f"run dir {run_dir} already holds a run ({last}). Continue it with resume=auto, or start a new run "
            f"in another dir: leave hydra.run.dir out (each run gets a new dir) or give a new one."
        )
    return None


def resumed_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` for a new run; for a resume, the checkpoint's saved config with this command's location, resume
    keys and (if allowed) changes, and ``ckpt_path`` set to the checkpoint."""
    path = resume_checkpoint(cfg)
    if path is None:
        return cfg
    if not path.exists():
        raise ResumeError(f"ckpt_path={path} does not exist; give the path of a .ckpt file to resume from")
    try:
        saved = load_checkpoint(path).get("hyper_parameters", {}).get("config")
    except NotACheckpointError as e:
        raise ResumeError(f"{e} {other_checkpoints(path, cfg)}") from None
    if not isinstance(saved, dict) or "model" not in saved:
        log.warning("%s holds no run config (an older checkpoint?): resuming with this command's config", path)
        return with_values(cfg, {"ckpt_path": str(path)})
    current = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }
    saved = moved({k: v for k, v in saved.items() if k not in LOCATION_KEYS}, saved, current)
    given = set_by_command(cfg, current)
    conflicts = {k: (lookup(saved, k), v) for k, v in given.items() if lookup(saved, k) != v}
    restored = OmegaConf.create(saved)
    for key, (_, value) in conflicts.items():
        if value is MISSING:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(restored, parent) if parent else restored
            if node is not None and leaf in node:
                del node[leaf]
        else:
            OmegaConf.update(restored, key, value, force_add=True)
    # The net never changes, allowed or not: said first, so allow_resume_changes is not offered for it.
    check_same_net(saved["model"], OmegaConf.to_container(restored.model, resolve=True), path)
    if conflicts and not cfg.get("allow_resume_changes"):
        shown = "; ".join(
            f"{k}: the run has {show(a)}, this command gives {show(b)}" for k, (a, b) in conflicts.items()
        )
        raise ResumeError(
            f"resuming {path} with settings that differ from the run's own: {shown}. A resume continues the run "
            f"with the config saved in its checkpoint; drop these overrides, or give allow_resume_changes=true "
            f"to change them from here on."
        )
    for key in (*LOCATION_KEYS, *RESUME_KEYS):
        if key in cfg:
            OmegaConf.update(restored, key, cfg[key], force_add=True)
    restored.ckpt_path = str(path)
    try:
        check_targets(
            {k: v for k, v in saved.items() if k not in (*LOCATION_KEYS, *RESUME_KEYS)}, path, trusted=current
        )
    except UnsafeConfigError as e:
        raise UnsafeConfigError(
            f"{e} A resume builds the whole saved config; if this is your own run, name that class on the command "
            f"line again (the same key and _target_) to vouch for it."
        ) from None
    if conflicts:
        log.warning("resuming %s with changed settings (allow_resume_changes): %s", path, sorted(conflicts))
    log.info("resuming %s with the run's own config", path)
    return restored


def other_checkpoints(path: Path, cfg: DictConfig) -> str:
    """What to resume from instead of a damaged ``path``: the checkpoints beside it that load, as commands."""
    run_dir = shlex.quote(f"hydra.run.dir={cfg.paths.output_dir}")
    usable = []
    for other in (path.with_name(PREVIOUS), path.with_name("best.ckpt")):
        if other != path and other.is_file():
            try:
                load_checkpoint(other)
            except NotACheckpointError:
                continue
            usable.append(f"python train.py {shlex.quote(f'ckpt_path={other}')} {run_dir}")
    if not usable:
        return "No other checkpoint of the run loads: start the run again in a new dir."
    what = "the state one save earlier (previous.ckpt) or the best epoch's (best.ckpt)"
    return f"Resume from {what} instead: {' or '.join(usable)}"


def with_values(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    out = cfg.copy()
    for key, value in values.items():
        OmegaConf.update(out, key, value, force_add=True)
    return out


def moved(node: Any, saved: dict[str, Any], current: dict[str, Any]) -> Any:
    """``node`` with strings under the saved run dir re-rooted to this run's dir."""
    old, new = saved.get("paths", {}).get("output_dir"), current.get("paths", {}).get("output_dir")
    if not old or not new or old == new:
        return node

    def move(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        if isinstance(v, list):
            return [move(x) for x in v]
        if isinstance(v, str) and (v == old or v.startswith(old.rstrip("/") + "/")):
            return new + v[len(old) :]
        return v

    return move(node)


def set_by_command(cfg: DictConfig, current: dict[str, Any]) -> dict[str, Any]:
    """Dotted key -> value (``MISSING`` where deleted) of everything this command's overrides change: the
    config composed with them against the one composed without them (groups, experiments and ``~key`` alike)."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    kept = [o for o in overrides if override_key(o) in RESUME_KEYS or override_key(o).split(".")[0] in LOCATION_KEYS]
    if len(kept) == len(overrides):
        return {}
    baseline = compose_config(hc.job.config_name, kept)
    before, after = flatten(baseline), flatten({k: v for k, v in current.items() if k not in LOCATION_KEYS})
    changed = {
        k: after.get(k, MISSING)
        for k in before.keys() | after.keys()
        if before.get(k, MISSING) != after.get(k, MISSING)
    }
    return {k: v for k, v in changed.items() if k.split(".")[0] not in (*RESUME_KEYS, *LOCATION_KEYS)}


def override_key(override: str) -> str:
    key = override.split("=", 1)[0].lstrip("+~")
    return key.replace("/", ".")


def compose_config(config_name: str, overrides: list[str]) -> dict[str, Any]:
    """The resolved config (without ``hydra``) for ``overrides``, composed by the running app's Hydra, or from
    conf/ where none is initialised (tests)."""
    if GlobalHydra.instance().is_initialized():
        composed = compose(config_name, overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            composed = compose(config_name, overrides=overrides)
    composed = OmegaConf.to_container(composed, resolve=True)
    return {k: v for k, v in composed.items() if k not in LOCATION_KEYS}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf (lists are leaves)."""
    if not isinstance(node, dict) or not node:
        return {prefix: node} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def lookup(node: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def show(value: Any) -> str:
    return "nothing" if value is MISSING else repr(value)


def check_same_net(saved: dict[str, Any], given: dict[str, Any], path: Path) -> None:
    """A resume loads the checkpoint's weights into the net: its classes (every ``_target_`` of the model
    config) must be the checkpoint's."""
    a = {k: v for k, v in flatten(saved).items() if k.endswith("_target_")}
    b = {k: v for k, v in flatten(given).items() if k.endswith("_target_")}
    if a != b:
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        shown = ", ".join(f"model.{k}: {show(a.get(k, MISSING))} vs {show(b.get(k, MISSING))}" for k in differ)
        raise ResumeError(
            f"{path} holds a {net_name(saved)} net, but this run's model config builds a {net_name(given)} "
            f"({shown}). A resume continues the same net; to train a {net_name(given)} from a checkpoint, start "
            f"a new run with model.pretrained={path}."
        )


def net_name(model: dict[str, Any]) -> str:
    backbone = model.get("backbone")
    target = backbone.get("_target_") if isinstance(backbone, dict) else model.get("_target_")
    return str(target).rsplit(".", 1)[-1]
