"""The framework's overhead: the default recipe trained through ``train()`` vs a careful hand-written loop.

    python -m bench.overhead [--epochs 20] [--batch-size 128] [--repeats 5] [--device cpu|cuda] [overrides ...]

The sides train the default recipe's model (``python train.py``: LeNet on the digits, AdamW, per-step
cosine schedule) for the same number of optimizer steps at the same batch size, in this process, one
after the other in each repeat (so slow drifts of a shared machine hit all alike). Timed, each:

- ours: one ``trainer.run.train(cfg)`` call on the config ``train.py`` composes for ``data.batch_size=<B>
  trainer.max_epochs=<E> test=false [overrides]``: builds the datamodule (digits loaded and split), the
  net, the LightningModule and the Trainer with the default callbacks (best+last checkpoints, LR monitor,
  progress bar, History with its metrics.csv and plots) and logger (CSV); runs Lightning's sanity check
  (2 val batches), E epochs of training with validation after each, then writes results.json.
- hand: loads and splits the digits the same way (same datamodule class), moves the uint8 images to the
  device once and normalises them by the same mean/std, builds the same net, the same AdamW parameter groups
  (no decay on norms and biases) and the same cosine schedule; per epoch a seeded random permutation cut into
  full batches (drop_last, as ours), zero_grad/backward/step/scheduler step, the mean train loss kept on the
  device; then a no-grad pass over the val split (loss and top-1 accuracy, one host sync per epoch), and the
  model + optimizer state saved when val accuracy improves (best) and at the end (last).
- lightning: the hand loop's work (same tensors, net, optimizer groups, schedule, validation and saves) as
  a minimal LightningModule under a Trainer with logger, checkpointing, progress bar, model summary and
  sanity check off: what Lightning's loop itself costs, the floor for any framework built on it.

Besides the whole call, each side's training loop alone is timed (ours and lightning: from
``on_train_start`` to ``on_train_end``; hand: from its first epoch to its last save): the difference is
what a run pays once (composing and building, the sanity check, plots, results.json), whatever its length.
The last line is ``ratio=<ours / hand>`` of the medians of the whole calls (the line before it gives the
ratio of each repeat, whose sides ran back to back, and their median); ``--profile`` adds a cProfile of one
``train()``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from bench.common import LoopTimer, add_common_args, machine, setup_device, sync, table
from nets.build import build_net
from runs.compose import compose_config
from trainer.optim import no_decay_names, param_groups


def compose(args: argparse.Namespace, run_dir: Path, *extra: str) -> DictConfig:
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    return compose_config(
        f"data.batch_size={args.batch_size}",
        f"trainer.max_epochs={args.epochs}",
        "test=false",
        f"trainer.accelerator={accelerator}",
        *args.overrides,
        *extra,
        output_dir=run_dir,
    )


def run_ours(args: argparse.Namespace, run_dir: Path) -> tuple[float, float, dict]:
    """(seconds of the train() call, seconds of its training loop, results.json)."""
    from trainer.run import train

    cfg = compose(args, run_dir, "+callbacks.loop_timer._target_=bench.common.LoopTimer")
    sync(args.device)
    start = time.perf_counter()
    train(cfg)
    sync(args.device)
    seconds = time.perf_counter() - start
    return seconds, LoopTimer.seconds, json.loads((run_dir / "results.json").read_text())


@dataclass
class Parts:
    """What the hand loop and the bare Lightning module share: the default recipe's tensors, net, optimizer
    and schedule, built the way train() builds them."""

    cfg: DictConfig
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_epoch: int


def build_parts(cfg: DictConfig, device: torch.device) -> Parts:
    torch.manual_seed(cfg.seed)
    dm = instantiate(cfg.data, in_memory=False)  # only its uint8 arrays are used
    dm.setup()
    mean = torch.tensor(cfg.data.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(cfg.data.std, device=device).view(1, -1, 1, 1) * 255

    def tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(split.images).to(device).permute(0, 3, 1, 2).float()  # (N, C, H, W)
        return ((x - mean) / std).contiguous(), torch.as_tensor(split.targets).to(device)

    (x_train, y_train), (x_val, y_val) = tensors(dm.train_set), tensors(dm.val_set)
    net = build_net(cfg.model).to(device)
    optimizer = instantiate(cfg.optimizer)(
        param_groups(net.named_parameters(), skip=no_decay_names(net), weight_decay=cfg.optimizer.weight_decay)
    )
    b, n = cfg.data.batch_size, len(x_train)
    per_epoch = n // b if n > b else 1
    total = per_epoch * cfg.trainer.max_epochs
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=total, steps_per_epoch=per_epoch)
    return Parts(cfg, x_train, y_train, x_val, y_val, net, optimizer, scheduler, per_epoch)


def run_hand(args: argparse.Namespace, run_dir: Path, device: torch.device) -> tuple[float, float, int]:
    """The careful hand-written loop (see the module docstring); returns (seconds, loop seconds, steps)."""
    cfg = compose(args, run_dir)  # as for ours, composing the config is not timed
    sync(device)
    start = time.perf_counter()
    p = build_parts(cfg, device)
    net, optimizer, scheduler, b, n = p.net, p.optimizer, p.scheduler, p.cfg.data.batch_size, len(p.x_train)
    generator = torch.Generator().manual_seed(p.cfg.seed)
    best, steps, history = -1.0, 0, []
    loop_start = time.perf_counter()
    for epoch in range(p.cfg.trainer.max_epochs):
        net.train()
        train_loss = torch.zeros((), device=device)
        for idx in torch.randperm(n, generator=generator)[: p.per_epoch * b].view(p.per_epoch, -1).to(device):
            loss = F.cross_entropy(net(p.x_train[idx]), p.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            train_loss += loss.detach()
            steps += 1
        val_loss, acc = validate(net, p.x_val, p.y_val, b)
        history.append(
            {"epoch": epoch, "train/loss": train_loss.item() / p.per_epoch, "val/acc": acc, "val/loss": val_loss}
        )
        if acc > best:
            best = acc
            torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict()}, run_dir / "best.pt")
    torch.save(
        {"net": net.state_dict(), "optimizer": optimizer.state_dict(), "history": history},
        run_dir / "last.pt",
    )
    sync(device)
    end = time.perf_counter()
    return end - start, end - loop_start, steps


def validate(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean loss and top-1 accuracy over a split, one host sync."""
    net.eval()
    loss, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    with torch.no_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            logits = net(xb)
            loss += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
    net.train()
    return loss.item() / len(y), correct.item() / len(y)


class Batches(torch.utils.data.Dataset):
    """In-memory tensors fetched a whole batch at a time (the DataLoader passes a batch's indices)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, device=self.x.device)
        return self.x[idx], self.y[idx]


class BareModule(pl.LightningModule):
    """The hand loop's work as a LightningModule with Lightning's own validation loop: the least a
    Lightning-based trainer runs per step and per epoch (one logged value, val/acc, per epoch)."""

    def __init__(self, p: Parts, run_dir: Path) -> None:
        super().__init__()
        self.p, self.net, self.run_dir, self.best = p, p.net, run_dir, -1.0
        self.val_sums = torch.zeros(3, device=p.x_train.device)  # loss sum, correct, count

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.val_sums += torch.stack(
            [F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum(), torch.tensor(len(y))]
        )

    def on_validation_epoch_end(self) -> None:
        loss, correct, count = self.val_sums.tolist()
        self.val_sums.zero_()
        acc = correct / count
        self.log("val/acc", acc)
        if acc > self.best:
            self.best = acc
            torch.save(
                {"net": self.net.state_dict(), "optimizer": self.p.optimizer.state_dict()}, self.run_dir / "best.pt"
            )

    def on_train_end(self) -> None:
        torch.save({"net": self.net.state_dict(), "optimizer": self.p.optimizer.state_dict()}, self.run_dir / "last.pt")

    def configure_optimizers(self) -> dict:
        return {"optimizer": self.p.optimizer, "lr_scheduler": {"scheduler": self.p.scheduler, "interval": "step"}}


def run_lightning(args: argparse.Namespace, run_dir: Path, device: torch.device) -> tuple[float, float, int]:
    """The hand loop's work under a bare Lightning Trainer; returns (seconds, loop seconds, steps)."""
    cfg = compose(args, run_dir)
    sync(device)
    start = time.perf_counter()
    p = build_parts(cfg, device)
    b = p.cfg.data.batch_size
    train_loader = torch.utils.data.DataLoader(
        Batches(p.x_train, p.y_train),
        batch_size=b,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(p.cfg.seed),
        collate_fn=lambda batch: batch,
    )
    val_loader = torch.utils.data.DataLoader(Batches(p.x_val, p.y_val), batch_size=b, collate_fn=lambda batch: batch)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=p.cfg.trainer.max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[LoopTimer()],
    )
    trainer.fit(BareModule(p, run_dir), train_dataloaders=train_loader, val_dataloaders=val_loader)
    sync(device)
    return time.perf_counter() - start, LoopTimer.seconds, trainer.global_step


def profile_ours(args: argparse.Namespace, run_dir: Path) -> str:
    prof = cProfile.Profile()
    prof.enable()
    run_ours(args, run_dir)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(25)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of every side (default 20, the recipe's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one train() call")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for our side, e.g. data.in_memory=false")
    add_common_args(parser, repeats=5)
    args = parser.parse_args()
    device = setup_device(args)
    sides = {"ours": run_ours, "lightning": run_lightning, "hand": run_hand}
    total: dict[str, list[float]] = {k: [] for k in sides}
    loop: dict[str, list[float]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(-1, args.repeats):  # repeat -1 warms up (imports, allocator, first calls) and is not kept
            steps = {}
            for name, run in sides.items():
                out = (
                    run(args, Path(tmp) / f"{name}{r}")
                    if name == "ours"
                    else run(args, Path(tmp) / f"{name}{r}", device)
                )
                steps[name] = out[2]["global_step"] if name == "ours" else out[2]
                if r >= 0:
                    total[name].append(out[0])
                    loop[name].append(out[1])
            if len(set(steps.values())) != 1:
                raise SystemExit(f"optimizer step counts differ: {steps}")
        profile = profile_ours(args, Path(tmp) / "profile") if args.profile else ""
    print(profile)
    med = {k: statistics.median(v) for k, v in total.items()}
    med_loop = {k: statistics.median(v) for k, v in loop.items()}
    n = steps["hand"]
    print(f"machine: {machine(device)}")
    print(
        f"default recipe (LeNet, digits), batch {args.batch_size}, {args.epochs} epochs = {n} optimizer steps, "
        f"device {args.device}, overrides {args.overrides}, median of {args.repeats}"
    )
    print(
        table(
            ["side", "whole call s", "training loop s", "once per run s", "loop ms/step", "loop vs hand"],
            [
                [k, med[k], med_loop[k], med[k] - med_loop[k], 1e3 * med_loop[k] / n, med_loop[k] / med_loop["hand"]]
                for k in sides
            ],
        )
    )
    for k in sides:
        print(f"{k:9s} runs {[round(s, 3) for s in total[k]]}  loops {[round(s, 3) for s in loop[k]]}")
    # The sides of one repeat ran back to back: their ratio is less hit by the machine's slow drifts.
    paired = [o / h for o, h in zip(total["ours"], total["hand"], strict=True)]
    print(f"ours/hand per repeat {[round(r, 3) for r in paired]}, median {statistics.median(paired):.3f}")
    print(f"ratio={med['ours'] / med['hand']:.3f}")


if __name__ == "__main__":
    main()
