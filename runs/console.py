"""What a run prints: our own lines, the progress bar and the result table, and, at the start, a few lines
saying what the run is (``extras.print_config``): the config groups chosen, the overrides and the values one
looks for first; the full composed config as a tree (lightning-hydra-template's ``print_config_tree``) goes to
``<run dir>/config_tree.txt``. An expected user error (a bad value, a missing file: ``USER_ERRORS``) ends the
entry script with its message, not a traceback (``user_errors``; ``HYDRA_FULL_ERROR=1`` shows it).

``start_console(cfg)`` (first thing in train() and evaluate()) installs, in this one place, the filters for
named third-party messages that say nothing about the run:

- Lightning's advertising tips (litlogger, litmodels) and its lines that only restate the obvious on a
  CPU machine (``GPU available: False, used: False``, no TPU/HPU), its seed line (the seed is in the config
  and results.json), "Loading `train_dataloader` to estimate number of stepping batches", the plain end of
  fit at ``max_epochs``, and the reload of best.ckpt for the test after fit. A resume from any other
  checkpoint is still announced. Filtered for every handler, train.log too: they carry nothing a reader needs.
- warnings raised inside third-party code that only its authors can fix, each by exact message and module
  (``THIRD_PARTY_WARNINGS``).

Causes of our own are fixed instead: ``StepLogInterval`` sets ``log_every_n_steps`` from the number of
training batches, so an epoch shorter than 50 steps no longer draws Lightning's warning.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# (logger name, message regex): records dropped wherever they would go.
THIRD_PARTY_LOG_LINES = (
    ("pytorch_lightning.utilities.rank_zero", r"💡 Tip: For seamless cloud (logging|uploads)"),
    ("pytorch_lightning.utilities.rank_zero", r"GPU available: False, used: False$"),
    ("pytorch_lightning.utilities.rank_zero", r"TPU available: False, using: 0 TPU cores$"),
    ("pytorch_lightning.utilities.rank_zero", r"HPU available: False, using: 0 HPUs$"),
    ("pytorch_lightning.utilities.rank_zero", r"Loading `train_dataloader` to estimate number of stepping batches\.$"),
    ("pytorch_lightning.utilities.rank_zero", r"`Trainer\.fit` stopped: `max_epochs=\d+` reached\.$"),
    (
        "pytorch_lightning.utilities.rank_zero",
        r"(Restoring states from|Loaded model weights from) the checkpoint (path )?at .*best\.ckpt$",
    ),
    ("lightning_fabric.utilities.seed", r"(\[rank: \d+\] )?Seed set to \d+$"),
)
# (category, message regex, module regex) for warnings.filterwarnings: raised in third-party code.
THIRD_PARTY_WARNINGS = (
    # Lightning 2.6 builds torch's LeafSpec, deprecated in torch 2.10+ (pytorch_lightning/utilities/_pytree.py).
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"pytorch_lightning\.utilities\._pytree"),
    # Lightning's advice on machines with more than 2 cores; wrong for in-memory data (data=digits: 0 workers),
    # and data.num_workers is in every data config for the rest.
    (UserWarning, r"The '\w+' does not have many workers", r"pytorch_lightning"),
)
# Top-level config keys printed first, in this order (the rest follow as composed).
TREE_ORDER = (
    "data",
    "model",
    "augment",
    "optimizer",
    "scheduler",
    "finetune",
    "module",
    "trainer",
    "callbacks",
    "logger",
    "paths",
    "extras",
)


class DropLines(logging.Filter):
    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_third_party() -> None:
    """Installs the filters above (once per process: calling it again changes nothing)."""
    by_logger: dict[str, list[str]] = {}
    for name, pattern in THIRD_PARTY_LOG_LINES:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLines) for f in logger.filters):
            logger.addFilter(DropLines(patterns))
    for category, message, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def start_console(cfg: DictConfig) -> None:
    """The console of a run: third-party noise filtered; with ``extras.print_config`` the config summary on
    the console and the full tree in the run dir."""
    quiet_third_party()
    extras = cfg.get("extras") or {}
    if extras.get("print_config") and is_rank_zero():
        tree = write_config_tree(cfg, Path(cfg.paths.output_dir) / "config_tree.txt")
        print(config_summary(cfg, tree), flush=True)


def is_rank_zero() -> bool:
    from runs.resolvers import is_rank_zero as rank_zero

    return rank_zero()


def config_tree(cfg: DictConfig) -> Any:
    """The composed config as a rich Tree: one branch per top-level key, its YAML inside."""
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in TREE_ORDER if k in cfg] + [k for k in cfg if k not in TREE_ORDER]
    for key in keys:
        value = cfg[key]
        branch = tree.add(str(key), style="bold", guide_style="dim")
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        branch.add(Syntax(text.rstrip(), "yaml", theme="ansi_dark", background_color="default"))
    return tree


def write_config_tree(cfg: DictConfig, path: Path) -> Path:
    """The full tree as plain text (no colours), written atomically."""
    from rich.console import Console

    from runs.atomic import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        Console(file=f, width=120, color_system=None, soft_wrap=True).print(config_tree(cfg))
    return path


# Values shown in the summary when the config has them: (label, dotted key).
SUMMARY_KEYS = (
    ("seed", "seed"),
    ("epochs", "trainer.max_epochs"),
    ("train_epochs", "train_epochs"),
    ("batch", "data.batch_size"),
    ("lr", "optimizer.lr"),
    ("precision", "trainer.precision"),
    ("devices", "trainer.devices"),
    ("data.root", "data.root"),
    ("ckpt_path", "ckpt_path"),
    ("tags", "tags"),
)
# Config groups not worth a word in the summary.
QUIET_GROUPS = ("hydra", "paths", "extras", "local")


def config_summary(cfg: DictConfig, tree: Path | None = None) -> str:
    """A few lines: the config groups chosen (Hydra's choices), the command line overrides, the main values."""
    lines = []
    choices, overrides = {}, []
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        chosen = [
            (k, v) for k, v in hydra_cfg.runtime.choices.items() if v is not None and not k.startswith(QUIET_GROUPS)
        ]
        order = {k: i for i, k in enumerate(TREE_ORDER)}  # data, model, ... as in the tree; nested groups after
        choices = dict(sorted(chosen, key=lambda kv: order.get(kv[0], len(order))))
        overrides = list(hydra_cfg.overrides.task)
    except ValueError:  # not in a Hydra run (a config built by hand)
        pass
    if choices:
        lines.append("config: " + " ".join(f"{k}={v}" for k, v in choices.items()))
    values = []
    for label, key in SUMMARY_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None:
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            text = "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
            values.append(f"{label}={text}")  # as it would be typed on the command line
    lines.append("  " + " ".join(values))
    if overrides:
        lines.append("  overrides: " + " ".join(overrides))
    if tree is not None:
        lines.append(f"  full config: {tree}")
    return "\n".join(lines)


# Errors a user makes and fixes (a bad value, a missing file or folder): the message says what and how.
class UserError(Exception):
    """Base of the errors whose message is the whole story for the user (entry scripts print it alone)."""


USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError)


@contextmanager
def user_errors() -> Iterator[None]:
    """Around an entry script's work: an expected user error prints ``error: <message>`` and exits 1, with
    no traceback. Within a multirun the error is raised as it is (the sweeper records the failed job), and
    ``HYDRA_FULL_ERROR=1`` shows the traceback as for any other error."""
    try:
        yield
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or in_multirun():
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
