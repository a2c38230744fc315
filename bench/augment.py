"""Augmentation throughput.

    python -m bench.augment [--images 1000] [--steps 20] [--workers 0 2] [--batch-size 64] [--device cpu|cuda]

1. Images/s of each preset's train pipeline in one process with one torch thread (= one loader worker):
   the albumentations ``Pipeline`` the config builds (uint8 HWC numpy in, normalised float tensor out) vs
   the same ops in torchvision.transforms.v2 on uint8 CHW tensors (same output), on the same images,
   median of ``--repeats``. cifar* at 32 px (digits-sized), imagenet from 256 px to a 224 crop.
2. Loader images/s (digits, ``augment=cifar_strong``, the real DataModule, workers and collate) vs the
   training-step images/s (forward, backward, AdamW step on a fixed batch) of the default model
   (conf/train.yaml: LeNet) on ``--device``: the loader keeps up when ``loader / step >= 1``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torchvision.transforms import v2

import runs.resolvers  # noqa: F401  (${visfeat.*} in conf/hydra)
from bench.common import add_common_args, machine, median_time, setup_device, step_time, table

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = [0.2, 0.2, 0.2], [0.35, 0.35, 0.35]  # conf/data/digits.yaml
# preset -> (input side, output side)
SIZES = {"cifar": (32, 32), "cifar_strong": (32, 32), "imagenet": (256, 224)}


def torchvision_pipeline(preset: str, size: int) -> v2.Compose:
    """The torchvision.transforms.v2 twin of ``conf/augment/<preset>.yaml``'s train pipeline."""
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    cifar = [v2.Pad(4, padding_mode="reflect"), v2.RandomCrop(size), v2.RandomHorizontalFlip()]
    if preset == "cifar":
        return v2.Compose([*cifar, *to_float])
    if preset == "cifar_strong":  # + RandAugment(2, 9), then a square hole of half the side (a quarter of the area)
        return v2.Compose(
            [
                *cifar,
                v2.RandAugment(num_ops=2, magnitude=9, fill=128),
                *to_float,
                v2.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0.0),
            ]
        )
    if preset == "imagenet":
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4)], p=0.8),
                *to_float,
            ]
        )
    raise ValueError(f"no torchvision twin for augment={preset}")


def compose_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=["data=digits", *overrides])


def images_per_second(pipeline, images: list[np.ndarray], repeats: int) -> float:
    return len(images) / median_time(lambda: [pipeline(im) for im in images], "cpu", repeats=repeats)


def bench_pipelines(n: int, repeats: int) -> list[list[object]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    rows = []
    for preset, (side, size) in SIZES.items():
        alb = instantiate(compose_cfg(f"augment={preset}", f"data.image_size={size}").augment.train)
        tv = torchvision_pipeline(preset, size)
        pool = [np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8) for i in range(64)]
        images = [pool[i % len(pool)] for i in range(n)]
        assert alb(images[0]).shape == tv(torch.from_numpy(images[0]).permute(2, 0, 1)).shape == (3, size, size)
        a = images_per_second(alb, images, repeats)
        t = images_per_second(lambda im, tv=tv: tv(torch.from_numpy(im).permute(2, 0, 1)), images, repeats)
        rows.append([preset, f"{side} -> {size}", round(a), round(t), a / t])
    torch.set_num_threads(threads)
    return rows


def bench_loader_vs_step(
    device: torch.device, steps: int, workers: list[int], batch_size: int, repeats: int
) -> tuple[str, float, list[list[object]]]:
    from nets.build import build_net
    from trainer.run import build_datamodule

    cfg = compose_cfg("augment=cifar_strong", f"data.batch_size={batch_size}")
    net = build_net(cfg.model).to(device)
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(cfg.data.num_classes, (batch_size,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    step_rate = batch_size / step_time(step, device, steps=steps, repeats=repeats)
    rows = []
    for n in workers:
        cfg = compose_cfg("augment=cifar_strong", f"data.batch_size={batch_size}", f"data.num_workers={n}")
        datamodule = build_datamodule(cfg.data, cfg.augment)
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        batches = min(steps, len(loader) - 1)  # within one epoch (digits: 19 batches of 64)
        it = iter(loader)
        next(it)  # workers started
        start = time.perf_counter()
        count = sum(len(next(it)["target"]) for _ in range(batches))
        loader_rate = count / (time.perf_counter() - start)
        rows.append([n, round(loader_rate), round(step_rate), loader_rate / step_rate])
    return cfg.model.backbone._target_.rsplit(".", 1)[-1], step_rate, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images per pipeline measurement (default 1000)")
    parser.add_argument("--steps", type=int, default=20, help="batches per loader / training-step measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts (default 0 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = add_common_args(parser, repeats=3).parse_args()
    device = setup_device(args)
    print(machine(device))

    print(f"\n1. train pipeline images/s in one process, 1 torch thread (= per loader worker), {args.images} images")
    rows = bench_pipelines(args.images, args.repeats)
    print(table(["augment", "image px", "albumentations", "torchvision v2", "alb / tv"], rows))

    model, _, rows = bench_loader_vs_step(device, args.steps, args.workers, args.batch_size, args.repeats)
    print(f"\n2. loader (digits, augment=cifar_strong, batch {args.batch_size}) vs training step ({model}, {device})")
    print(table(["workers", "loader images/s", "train step images/s", "loader / step"], rows))


if __name__ == "__main__":
    main()
