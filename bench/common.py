"""Shared helpers of the bench scripts: device choice, synchronised timing, medians, tables, machine line.

Run every bench as a module from the repository root (``python -m bench.<name>``) so the project's
packages import without path tweaks.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch


def add_common_args(parser: argparse.ArgumentParser, *, repeats: int) -> argparse.ArgumentParser:
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=repeats,
        help=f"timed repeats; the median is reported (default {repeats})",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    return parser


def setup_device(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return device


def cpu_seconds() -> float:
    """CPU seconds used so far by this process (all threads) and its ended children (loader and decoding
    workers, subprocesses such as FFmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device | str) -> float:
    """Wall seconds of one call of ``fn``, with the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], device: torch.device | str, *, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def step_time(
    step: Callable[[], object], device: torch.device | str, *, steps: int, repeats: int, warmup: int = 2
) -> float:
    """Median over ``repeats`` of the mean seconds per call over ``steps`` calls (after ``warmup`` calls)."""
    for _ in range(warmup):
        step()

    def run() -> None:
        for _ in range(steps):
            step()

    return median_time(run, device, repeats=repeats, warmup=0) / steps


class LoopTimer(pl.Callback):
    """Seconds from ``on_train_start`` to ``on_train_end`` (the training loop with its validations and
    saves); the latest instance's figure is ``LoopTimer.seconds``. It lives here, not in a script, so that
    a config's ``_target_: bench.common.LoopTimer`` and the script see the same class."""

    seconds = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sync(pl_module.device)
        self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sync(pl_module.device)
        LoopTimer.seconds = time.perf_counter() - self.start


def machine(device: torch.device | str) -> str:
    """One line naming the machine, for the README's figures."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    line = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.device(device).type == "cuda":
        line += f", {torch.cuda.get_device_name()}"
    try:
        line += f", load average {os.getloadavg()[0]:.1f}"
    except OSError:
        pass
    return line


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (pastes into the README as is)."""
    cells = [[str(h) for h in headers]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([fmt(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |", *map(fmt, cells[1:])])


def train_step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, bf16: bool = False) -> Callable[[], None]:
    """One training step on fixed data: forward + cross-entropy (under bf16 autocast if asked, as Lightning's
    ``bf16-mixed`` runs them), backward, AdamW step."""
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def net_from_config(*overrides: str, run_dir, compile: bool = False) -> torch.nn.Module:
    """The net ``python train.py <overrides>`` would build (10 classes unless the data config says otherwise)."""
    from nets.build import build_net
    from runs.compose import compose_config

    cfg = compose_config(*overrides, output_dir=run_dir)
    return build_net(cfg.model, compile=compile)
