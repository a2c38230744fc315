"""The framework's overhead: the default recipe trained through ``train()`` vs a careful hand-written loop.

    python -m bench.overhead [--epochs 20] [--batch-size 128] [--repeats 3] [--device cpu|cuda] [overrides ...]

Both sides train the default recipe's model (``python train.py``: LeNet on the digits, AdamW, per-step
cosine schedule) for the same number of optimizer steps at the same batch size, in this process, one
after the other in each repeat (so slow drifts of a shared machine hit both alike). Timed, each:

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

The last line is ``ratio=<ours / hand>`` of the medians; ``--profile`` adds a cProfile of one ``train()``.
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
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from bench.common import add_common_args, machine, setup_device, sync
from tests.conftest import compose_config
from trainer.build import build_net
from trainer.optim import no_decay_names, param_groups


def compose(args: argparse.Namespace, run_dir: Path) -> DictConfig:
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    return compose_config(
        f"data.batch_size={args.batch_size}",
        f"trainer.max_epochs={args.epochs}",
        "test=false",
        f"trainer.accelerator={accelerator}",
        *args.overrides,
        output_dir=run_dir,
    )


def run_ours(args: argparse.Namespace, run_dir: Path) -> tuple[float, dict]:
    from trainer.run import train

    cfg = compose(args, run_dir)
    sync(args.device)
    start = time.perf_counter()
    train(cfg)
    sync(args.device)
    seconds = time.perf_counter() - start
    return seconds, json.loads((run_dir / "results.json").read_text())


def run_hand(args: argparse.Namespace, run_dir: Path, device: torch.device) -> tuple[float, int]:
    """The careful hand-written loop (see the module docstring); returns (seconds, optimizer steps)."""
    cfg = compose(args, run_dir)
    sync(device)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    dm = instantiate(cfg.data, in_memory=False)  # only its uint8 arrays are used
    dm.setup()
    mean = torch.tensor(cfg.data.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(cfg.data.std, device=device).view(1, -1, 1, 1) * 255

    def tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(split.images).to(device).permute(0, 3, 1, 2).float()  # (N, C, H, W)
        return (x - mean) / std, torch.as_tensor(split.targets).to(device)

    (x_train, y_train), (x_val, y_val) = tensors(dm.train_set), tensors(dm.val_set)
    net = build_net(cfg.model).to(device)
    optimizer = instantiate(cfg.optimizer)(
        param_groups(net.named_parameters(), skip=no_decay_names(net), weight_decay=cfg.optimizer.weight_decay)
    )
    b, n = cfg.data.batch_size, len(x_train)
    per_epoch = n // b if n > b else 1
    total = per_epoch * cfg.trainer.max_epochs
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=total, steps_per_epoch=per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed)
    best, steps, history = -1.0, 0, []
    for epoch in range(cfg.trainer.max_epochs):
        net.train()
        train_loss = torch.zeros((), device=device)
        for idx in torch.randperm(n, generator=generator)[: per_epoch * b].view(per_epoch, -1).to(device):
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            train_loss += loss.detach()
            steps += 1
        net.eval()
        val_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        with torch.no_grad():
            for xb, yb in zip(x_val.split(b), y_val.split(b), strict=True):
                logits = net(xb)
                val_loss += F.cross_entropy(logits, yb, reduction="sum")
                correct += (logits.argmax(1) == yb).sum()
        acc = correct.item() / len(y_val)
        history.append(
            {
                "epoch": epoch,
                "train/loss": train_loss.item() / per_epoch,
                "val/acc": acc,
                "val/loss": val_loss.item() / len(y_val),
            }
        )
        if acc > best:
            best = acc
            torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict()}, run_dir / "best.pt")
    torch.save(
        {"net": net.state_dict(), "optimizer": optimizer.state_dict(), "history": history},
        run_dir / "last.pt",
    )
    sync(device)
    return time.perf_counter() - start, steps


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
    parser.add_argument("--epochs", type=int, default=20, help="epochs of both sides (default 20, the recipe's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one train() call")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for our side, e.g. data.in_memory=false")
    add_common_args(parser, repeats=3)
    args = parser.parse_args()
    device = setup_device(args)
    ours, hand, fit = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up of both (imports, allocator, first-call costs), not timed.
        run_ours(args, Path(tmp) / "warm_ours")
        run_hand(args, Path(tmp) / "warm_hand", device)
        for r in range(args.repeats):
            seconds, results = run_ours(args, Path(tmp) / f"ours{r}")
            ours.append(seconds)
            fit.append(results["train_seconds"])
            seconds, steps = run_hand(args, Path(tmp) / f"hand{r}", device)
            hand.append(seconds)
            if steps != results["global_step"]:
                raise SystemExit(f"step counts differ: ours {results['global_step']}, hand {steps}")
        profile = profile_ours(args, Path(tmp) / "profile") if args.profile else ""
    print(profile)
    med_ours, med_hand, med_fit = (statistics.median(v) for v in (ours, hand, fit))
    print(f"machine: {machine(device)}")
    print(
        f"default recipe (LeNet, digits), batch {args.batch_size}, {args.epochs} epochs = {steps} optimizer steps, "
        f"device {args.device}, overrides {args.overrides}"
    )
    print(
        f"ours  train():   median {med_ours:.3f} s  (trainer.fit alone {med_fit:.3f} s)  "
        f"runs {[round(s, 3) for s in ours]}"
    )
    print(f"hand  loop:      median {med_hand:.3f} s  runs {[round(s, 3) for s in hand]}")
    print(f"per step: ours {1e3 * med_ours / steps:.2f} ms, hand {1e3 * med_hand / steps:.2f} ms")
    print(f"ratio={med_ours / med_hand:.3f}")


if __name__ == "__main__":
    main()
