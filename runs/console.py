"""What a run prints: our own lines, the progress bar and the result table, and, at the start, the
composed config as a tree (``extras.print_config``, as lightning-hydra-template's ``print_config_tree``).

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
import re
import warnings
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
    """The console of a run: third-party noise filtered; the config tree printed if ``extras.print_config``."""
    quiet_third_party()
    extras = cfg.get("extras") or {}
    if extras.get("print_config") and is_rank_zero():
        print_config_tree(cfg)


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


def print_config_tree(cfg: DictConfig) -> None:
    import rich

    rich.print(config_tree(cfg))
