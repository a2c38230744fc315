"""What a run records about itself: results.json (metrics plus what tells two runs apart)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from runs.atomic import atomic_open

PACKAGES = (
    "torch",
    "torchvision",
    "pytorch-lightning",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "albumentations",
    "av",
    "numpy",
)
REPO = Path(__file__).resolve().parent.parent


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """Commit of the code that ran and whether the working tree differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"git_sha": None, "git_dirty": None}
    return {"git_sha": sha, "git_dirty": dirty}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def to_plain(value: Any) -> Any:
    """Tensors and numpy scalars to Python numbers, recursively, for JSON."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def write_json(path: Path, obj: Any) -> Path:
    """Atomic write: a reader never sees a half-written file (and a crash never leaves one)."""
    with atomic_open(path) as f:
        json.dump(to_plain(obj), f, indent=2, sort_keys=True)
    return path


def run_tags(tags: Any) -> list[str]:
    """``tags`` of the config as a list of strings for results.json: ``[a, b]``, or one tag ``a``."""
    if tags is None:
        return []
    if isinstance(tags, str):
        return [tags]
    if not all(isinstance(t, str | int | float) and not isinstance(t, bool) for t in tags):
        raise ValueError(f"tags={tags!r}: give a list of words, e.g. tags='[lr_sweep,lenet]'")
    return [str(t) for t in tags]
