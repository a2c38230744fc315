"""Data loading: per-sample albumentations pipeline vs the whole set in memory with whole-batch augmentation.

    python -m bench.loading [--device cpu|cuda] [--batch-size 128] [--batches 60] [--workers 0 2] [--repeats 3]
    python -m bench.loading --image-folder DIR [--images 10000] [--epochs 10] [--batch-size 64] [--repeats 3]
    python -m bench.loading --video DIR [--frames 8] [--crop 64] [--short-side 72] [--epochs 2] [--repeats 3]

What is timed: producing ``--batches`` training batches that are ready for the model, i.e. augmented,
normalised float ``(B, 3, 32, 32)`` on ``--device``, with the CIFAR recipe (``augment=cifar``: pad 4
reflect, random 32x32 crop, horizontal flip), for

- ``per-sample, W workers``: the default path (``data.in_memory=false``): ``ArrayDataset`` + the
  albumentations ``Pipeline`` per image, ``collate``, pinned when on CUDA, copied to the device;
- ``in-memory``: ``data.in_memory=true``: a batch indexed from the uint8 tensor, copied to the device as
  uint8, then ``BatchAugment`` (data/in_memory.py) on the device.

Data: the digits (1437 train images, real) and a CIFAR-10-sized array (50000 random uint8 images; the
content does not change the speed). Loaders are built by the datamodule (``_loader``) as in training.

``--image-folder DIR`` (class folders of small images, e.g. the real CIFAR-10 JPEGs of ``../shared/data``
unpacked by its ``cifar10_dev.py``: ``DIR=<out>/dev``) times whole training runs instead, from the files to
the trained model: ``--images`` images of ``DIR/train`` (the first of each class, the same count from each)
and ``--val-images`` of ``DIR/val`` (else ``DIR/test``, else the next files of ``DIR/train``), linked into
a temporary ``train/`` and ``val/``, trained on for ``--epochs`` with ``--batch-size``, validated after each
epoch, on two sides run in turn (A B A B ..., in this process, after one untimed 1-epoch run of each):

- ours: ``trainer.run.train(cfg)`` on the config ``train.py`` composes for ``data=image_folder
  data.in_memory=auto data.image_size=<S> model=lenet augment=cifar test=false`` (the default callbacks:
  checkpoints, LR monitor, progress bar, History; the CSV logger): decoding (``data.num_workers`` processes),
  the sanity check, training and validation, results.json;
- plain: PIL decodes every file into one uint8 tensor (one process), then per epoch a seeded permutation cut
  into full batches, each augmented as ``augment=cifar`` (reflect-pad 4, a random 32x32 crop and a horizontal
  flip drawn per image, normalised by the same mean/std), the same net (same init), the same AdamW groups
  and cosine schedule, a no-grad pass over the val images, best/last saves.

It prints each run (wall and CPU seconds: this process's threads and its ended children, the decoding
workers), the median and range of each side, the ratio of each A B pair, ``cpu_ratio=`` (of the median CPU
seconds: the figure to trust when other processes share the cores) and last ``ratio=<median ours / median
plain>`` (wall seconds).

``--video DIR`` (class folders of videos, e.g. the real ARID clips of ``../shared/data``) times the video path
instead: training clips/s of our loader (per-clip decoding and the decoded-clip cache) against a plain PyAV loop,
and decode frames/s against FFmpeg's own; bench/video_loading.py says exactly what is timed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from bench.common import add_common_args, cpu_seconds, machine, median_time, setup_device, sync, table
from bench.overhead import validate
from data.base import ArrayDataset, ClassificationDataModule
from data.image_folder import IMAGE_EXTENSIONS
from data.in_memory import augment_batch
from nets.build import build_net
from runs.compose import compose_config
from trainer.optim import no_decay_names, param_groups


class ArraysDataModule(ClassificationDataModule):
    """Given uint8 arrays as the train split (for the CIFAR-sized case without the CIFAR files)."""

    num_classes = 10
    class_names = [str(i) for i in range(10)]

    def __init__(self, *, images: np.ndarray, targets: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        self.images, self.targets = images, targets

    def make_splits(self):
        return tuple(
            ArrayDataset(self.images, self.targets, t)
            for t in (self.train_transform, self.eval_transform, self.eval_transform)
        )


def datamodule(source: str, *, in_memory: bool, workers: int, args: argparse.Namespace, run_dir: Path):
    cfg = compose_config("data=digits", "augment=cifar", f"data.batch_size={args.batch_size}", output_dir=run_dir)
    kwargs = dict(
        batch_size=args.batch_size,
        num_workers=workers,
        pin_memory=args.device.startswith("cuda"),
        persistent_workers=workers > 0,
        in_memory=in_memory,
        train_transform=instantiate(cfg.augment.train),
        eval_transform=instantiate(cfg.augment.eval),
    )
    if source == "digits":
        dm = instantiate(cfg.data, **kwargs)
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8)
        dm = ArraysDataModule(
            images=images, targets=rng.integers(0, 10, 50000), mean=cfg.data.mean, std=cfg.data.std, **kwargs
        )
    dm.setup()
    return dm


def consume(dm: ClassificationDataModule, device: torch.device, batches: int) -> None:
    loader = dm.train_dataloader()
    done = 0
    while done < batches:
        for batch in itertools.islice(loader, batches - done):
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            if dm.batch_transforms is not None:
                batch = augment_batch(batch, dm.batch_transforms, train=True)
            assert batch["input"].dtype == torch.float32 and batch["input"].shape[1:] == (3, 32, 32)
            done += 1


# --- --image-folder: whole training runs, train.py's path vs a plain loop ---------------------------------------


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def link_subset(src: Path, dst: Path, *, images: int, val_images: int) -> list[str]:
    """``dst/{train,val}/<class>/`` symlinks to the first files of each class of ``src`` (see the docstring)."""
    classes = sorted(p.name for p in (src / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SystemExit(f"--image-folder {src}: no class folders in {src / 'train'}")
    per, val_per = images // len(classes), val_images // len(classes)
    val_src = next((src / s for s in ("val", "test") if (src / s).is_dir()), None)
    for name in classes:
        train = image_files(src / "train" / name)
        val = image_files(val_src / name)[:val_per] if val_src else train[per : per + val_per]
        if len(train) < per or len(val) < val_per:
            raise SystemExit(f"--image-folder {src}: class {name} has too few images for {per} + {val_per}")
        for split, files in (("train", train[:per]), ("val", val)):
            (dst / split / name).mkdir(parents=True)
            for f in files:
                (dst / split / name / f.name).symlink_to(f.resolve())
    return classes


def compose_run(args: argparse.Namespace, root: Path, run_dir: Path, epochs: int) -> DictConfig:
    return compose_config(
        "data=image_folder",
        f"data.root={root}",
        "data.in_memory=auto",
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        "model=lenet",
        "augment=cifar",
        f"trainer.max_epochs={epochs}",
        f"trainer.accelerator={'gpu' if args.device.startswith('cuda') else 'cpu'}",
        "test=false",
        *args.overrides,
        output_dir=run_dir,
    )


def run_ours(args: argparse.Namespace, root: Path, run_dir: Path, epochs: int) -> tuple[float, float]:
    """(seconds of one ``train(cfg)`` call, its val/acc)."""
    from trainer.run import train

    cfg = compose_run(args, root, run_dir, epochs)
    sync(args.device)
    start = time.perf_counter()
    train(cfg)
    sync(args.device)
    seconds = time.perf_counter() - start
    return seconds, json.loads((run_dir / "results.json").read_text())["val/acc"]


def decode_folder(split: Path, classes: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``split/<class>/`` (all ``size`` x ``size``) decoded by PIL into one uint8 tensor
    (N, C, H, W), and the labels."""
    files = [(f, label) for label, name in enumerate(classes) for f in image_files(split / name)]
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        with Image.open(f) as im:
            if im.size != (size, size):
                raise SystemExit(f"the plain loop reads images of --image-size {size} only; {f} is {im.size}")
            images[i] = np.asarray(im.convert("RGB"))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor([y for _, y in files])


def plain_augment(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """uint8 (B, C, H, W) -> reflect-pad 4, a random HxW crop and a horizontal flip per image, normalised."""
    b, _, h, w = x.shape
    padded = F.pad(x.float(), (4, 4, 4, 4), mode="reflect")  # (B, C, H + 8, W + 8)
    top, left = torch.randint(0, 9, (b,), generator=g).tolist(), torch.randint(0, 9, (b,), generator=g).tolist()
    crops = torch.stack([padded[k, :, t : t + h, s : s + w] for k, (t, s) in enumerate(zip(top, left, strict=True))])
    flip = torch.rand(b, generator=g) < 0.5
    crops = torch.where(flip[:, None, None, None], crops.flip(3), crops)  # (B, C, H, W)
    return (crops - mean) / std


def run_plain(args: argparse.Namespace, root: Path, run_dir: Path, epochs: int) -> tuple[float, float]:
    """The plain loop (see the module docstring); returns (seconds, last val accuracy)."""
    cfg = compose_run(args, root, run_dir, epochs)  # the same hyperparameters; composing is not timed
    device = torch.device(args.device)
    sync(device)
    start = time.perf_counter()
    classes = sorted(p.name for p in (root / "train").iterdir())
    x_train, y_train = decode_folder(root / "train", classes, args.image_size)
    x_val, y_val = decode_folder(root / "val", classes, args.image_size)
    mean = torch.tensor(cfg.data.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(cfg.data.std, device=device).view(1, -1, 1, 1) * 255
    x_val = ((x_val.to(device).float() - mean) / std).contiguous()
    y_train, y_val = y_train.to(device), y_val.to(device)
    torch.manual_seed(cfg.seed)
    cfg.data.num_classes = len(classes)
    net = build_net(cfg.model).to(device)
    optimizer = instantiate(cfg.optimizer)(
        param_groups(net.named_parameters(), skip=no_decay_names(net), weight_decay=cfg.optimizer.weight_decay)
    )
    b, n = args.batch_size, len(x_train)
    per_epoch = n // b
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=per_epoch * epochs, steps_per_epoch=per_epoch)
    g = torch.Generator().manual_seed(cfg.seed)
    best, acc = -1.0, 0.0
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(n, generator=g)[: per_epoch * b].view(per_epoch, b):
            x = plain_augment(x_train[idx].to(device, non_blocking=True), mean, std, g)
            loss = F.cross_entropy(net(x), y_train[idx.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        _, acc = validate(net, x_val, y_val, b)
        if acc > best:
            best = acc
            torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict()}, run_dir / "best.pt")
    torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict()}, run_dir / "last.pt")
    sync(device)
    return time.perf_counter() - start, acc


def image_folder_main(args: argparse.Namespace, device: torch.device) -> None:
    sides = {"ours": run_ours, "plain": run_plain}
    seconds: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    accs: dict[str, list[float]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        classes = link_subset(Path(args.image_folder), root, images=args.images, val_images=args.val_images)
        for r in range(-1, args.repeats):  # repeat -1 (1 epoch) warms up imports and first calls; not kept
            for name, run in sides.items():
                cpu_start = cpu_seconds()
                s, acc = run(args, root, Path(tmp) / f"{name}{r}", 1 if r < 0 else args.epochs)
                c = cpu_seconds() - cpu_start
                if r >= 0:
                    seconds[name].append(s)
                    cpu[name].append(c)
                    accs[name].append(acc)
                    print(f"repeat {r} {name:5s} {s:7.2f} s  cpu {c:7.2f} s  val/acc {acc:.3f}", flush=True)
    n = (args.images // len(classes)) * len(classes)
    print(f"\nmachine: {machine(device)}")
    print(
        f"{args.image_folder}: {n} train + {args.val_images} val images, {len(classes)} classes, LeNet, augment=cifar, "
        f"batch {args.batch_size}, {args.epochs} epochs, device {args.device}, overrides {args.overrides}"
    )
    print(
        table(
            ["side", "median s", "min s", "max s", "median cpu s", "val/acc (median)"],
            [
                [k, statistics.median(v), min(v), max(v), statistics.median(cpu[k]), statistics.median(accs[k])]
                for k, v in seconds.items()
            ],
        )
    )
    # The sides of one repeat ran back to back: their ratio is less hit by the machine's slow drifts. CPU
    # seconds (this process and its decoding workers) stay comparable when other processes take the cores.
    for label, values in (("wall", seconds), ("cpu", cpu)):
        paired = [o / p for o, p in zip(values["ours"], values["plain"], strict=True)]
        print(f"ours/plain {label} per repeat {[round(r, 3) for r in paired]}, median {statistics.median(paired):.3f}")
    print(f"cpu_ratio={statistics.median(cpu['ours']) / statistics.median(cpu['plain']):.3f}")
    print(f"ratio={statistics.median(seconds['ours']) / statistics.median(seconds['plain']):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 (batches), 64 (--image-folder)")
    parser.add_argument("--batches", type=int, default=60, help="batches per timed repeat")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader workers of the per-sample path")
    parser.add_argument("--image-folder", default=None, help="time training runs on this folder (see above)")
    parser.add_argument("--images", type=int, default=10000, help="--image-folder: training images")
    parser.add_argument("--val-images", type=int, default=1000, help="--image-folder: validation images")
    parser.add_argument("--epochs", type=int, default=None, help="--image-folder: epochs (10); --video: per run (2)")
    parser.add_argument("--image-size", type=int, default=32, help="--image-folder: data.image_size")
    parser.add_argument("--video", default=None, help="time the video path on this folder (bench/video_loading.py)")
    parser.add_argument("--frames", type=int, default=8, help="--video: frames per clip (segments)")
    parser.add_argument("--crop", type=int, default=64, help="--video: crop size")
    parser.add_argument("--short-side", type=int, default=72, help="--video: frames resized to this short side")
    parser.add_argument("--model", default="cnn_gru", help="--video: the model config trained on the clips")
    parser.add_argument("--decode-files", type=int, default=None, help="--video: decode this many files (all)")
    parser.add_argument("--skip-train", action="store_true", help="--video: only the decoding part")
    parser.add_argument("--skip-decode", action="store_true", help="--video: only the training part")
    parser.add_argument("overrides", nargs="*", help="--image-folder, --video: extra config overrides for our side")
    add_common_args(parser, repeats=3)
    args = parser.parse_args()
    device = setup_device(args)
    if args.video:
        from bench.video_loading import video_main

        args.batch_size, args.epochs = args.batch_size or 8, args.epochs or 2
        video_main(args)
        return
    if args.image_folder:
        args.batch_size, args.epochs = args.batch_size or 64, args.epochs or 10  # data=image_folder's
        image_folder_main(args, device)
        return
    args.batch_size = args.batch_size or 128
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in ("digits", "cifar10-sized"):
            modes = [(False, w) for w in args.workers] + [(True, 0)]
            base = None
            for in_memory, workers in modes:
                dm = datamodule(source, in_memory=in_memory, workers=workers, args=args, run_dir=Path(tmp) / "run")
                seconds = median_time(lambda dm=dm: consume(dm, device, args.batches), device, repeats=args.repeats)
                rate = args.batches * args.batch_size / seconds
                base = base or rate
                name = (
                    "in-memory, batch augment on device"
                    if in_memory
                    else f"per-sample albumentations, {workers} workers"
                )
                rows.append(
                    [
                        source,
                        name,
                        f"{rate:,.0f}",
                        f"{1e3 * seconds / args.batches:.2f}",
                        f"{rate / base:.1f}x",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    print(f"\nmachine: {machine(device)}")
    print(
        f"augment=cifar (pad 4 reflect, crop 32, flip), batch {args.batch_size}, "
        f"{args.batches} batches x {args.repeats} repeats, device {args.device}"
    )
    print(table(["data", "path", "images/s", "ms/batch", "vs first"], rows))


if __name__ == "__main__":
    main()
