"""airbench94 side by side: the ``airbench`` package's own ``train94`` against ``experiment=cifar10_airbench94``.

    python -m bench.airbench --data-root DIR [--epochs 9.9] [--widths 64,256,256] [--seeds 3]
                             [--device cpu|cuda] [--out DIR] [overrides of our side ...]

``DIR`` holds ``cifar-10-batches-py`` (the official pickles, or the dev layout of ../shared/data/cifar10_dev.py).
Both sides train on every image of its data_batch_* files and are scored on its test_batch, per seed, in
alternating order (ref, ours, ref, ours, ...), with the same widths and epochs. Prints per side the test
accuracy with test-time augmentation (mirror + translate) as mean ± std over seeds, the accuracy without it
(reference only: ours reports the TTA figure), the training seconds, and last the line
``acc_ours=<mean> acc_ref=<mean> time_ratio=<ours/ref>``.

The reference is the unmodified ``airbench.train94`` (PyPI ``airbench`` 0.1.8, ``lib_airbench94.py`` and
``utils.py``), given ``make_net94(widths=...)`` and a ``CifarLoader`` of the same images. It is written for
CUDA fp16; on ``--device cpu`` the calls that pin it there are redirected for the duration of its run and
nothing else changes: ``nn.Module.cuda`` and ``.half`` (its net) and ``Tensor.half`` (its images) become
moves to the device in float32 (BatchNorm stays float32 as in the original), its loaders are built with
``gpu='cpu'``, and ``torch.cuda.Event`` / ``torch.cuda.synchronize`` become a wall-clock timer and a no-op.
On ``--device cuda`` nothing is redirected (fp16, as published) and our side runs ``trainer.precision=16-mixed``.
Both sides use channels-last weights and inputs (the recipe sets ``model.channels_last=true``).

Training seconds: the reference's own measure (``train94`` with ``verbose=False`` returns the model; we time
the call, which covers building the net, the whitening init and training); ours is ``train_seconds`` of
results.json (``trainer.fit``: the same, plus Lightning's setup). Neither includes the final evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from bench.common import machine, table
from data.cifar10 import FOLDER, TEST_FILES, TRAIN_FILES, CIFAR10DataModule, read_batches
from runs.compose import compose_config

QUIET = ["~callbacks.progress_bar", "+trainer.enable_progress_bar=false"]


class WallClockEvent:
    """``torch.cuda.Event(enable_timing=True)`` on the CPU: ``elapsed_time`` in milliseconds."""

    def __init__(self, *args, **kwargs) -> None:
        self.t = 0.0

    def record(self, *args) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: WallClockEvent) -> float:
        return (end.t - self.t) * 1e3


@contextlib.contextmanager
def reference_on(device: str) -> Iterator[None]:
    """Runs airbench's CUDA/fp16 code on ``device``: on CPU the redirections of the module docstring."""
    import airbench.utils as ab_utils

    if device != "cpu":
        yield
        return
    dev = torch.device(device)
    saved = {
        (nn.Module, "cuda"): nn.Module.cuda,
        (nn.Module, "half"): nn.Module.half,
        (torch.Tensor, "half"): torch.Tensor.half,
        (torch.cuda, "Event"): torch.cuda.Event,
        (torch.cuda, "synchronize"): torch.cuda.synchronize,
        (ab_utils.CifarLoader, "__init__"): ab_utils.CifarLoader.__init__,
    }
    loader_init = ab_utils.CifarLoader.__init__

    def cpu_loader_init(
        self, path, train=True, batch_size=500, aug=None, drop_last=None, shuffle=None, altflip=False, gpu=0
    ):
        loader_init(self, path, train, batch_size, aug, drop_last, shuffle, altflip, gpu=device)

    nn.Module.cuda = lambda self, *a, **k: self.to(dev)
    nn.Module.half = lambda self: self.float()
    torch.Tensor.half = lambda self, *a, **k: self.float()
    torch.cuda.Event = WallClockEvent
    torch.cuda.synchronize = lambda *a, **k: None
    ab_utils.CifarLoader.__init__ = cpu_loader_init
    try:
        yield
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


def write_loader_files(data_root: Path, folder: Path) -> None:
    """The images of ``data_root`` as airbench's ``<folder>/train.pt`` and ``test.pt`` (uint8 NHWC + labels)."""
    source = data_root / FOLDER
    classes = list(CIFAR10DataModule.class_names)
    folder.mkdir(parents=True, exist_ok=True)
    for name, files in (("train.pt", TRAIN_FILES), ("test.pt", TEST_FILES)):
        images, labels = read_batches(source, files)
        torch.save(
            {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels), "classes": classes},
            folder / name,
        )


def run_reference(seed: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """One ``train94`` run in ``work`` (which holds cifar10/train.pt and test.pt, where airbench looks)."""
    import airbench
    from airbench.lib_airbench94 import hyp

    widths = dict(zip(("block1", "block2", "block3"), args.widths, strict=True))
    torch.manual_seed(seed)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with reference_on(args.device):
            loader = airbench.CifarLoader(
                "cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"], altflip=True
            )
            test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
            start = time.perf_counter()
            model = airbench.train94(
                loader, epochs=args.epochs, make_net=lambda: airbench.make_net94(widths=widths), verbose=False
            )
            if args.device != "cpu":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            acc = airbench.evaluate(model, test_loader, tta_level=2)
            acc_plain = airbench.evaluate(model, test_loader, tta_level=0)
    finally:
        os.chdir(cwd)
    return {"acc": acc, "acc_no_tta": acc_plain, "seconds": seconds}


def run_ours(seed: int, args: argparse.Namespace, extra: list[str], run_dir: Path) -> dict[str, float]:
    from trainer.run import train

    device = ["trainer.accelerator=gpu", "trainer.precision=16-mixed"]
    overrides = [
        *QUIET,
        "experiment=cifar10_airbench94",
        f"data.root={args.data_root}",
        f"model.backbone.widths=[{','.join(map(str, args.widths))}]",
        f"train_epochs={args.epochs}",
        f"seed={seed}",
        *(device if args.device != "cpu" else ["trainer.accelerator=cpu"]),
        *extra,
    ]
    train(compose_config(*overrides, output_dir=run_dir))
    results = json.loads((run_dir / "results.json").read_text())
    return {"acc": results["test/acc"], "seconds": results["train_seconds"]}


def summary(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding cifar-10-batches-py")
    parser.add_argument("--epochs", type=float, default=9.9)
    parser.add_argument("--widths", default="64,256,256", help="block widths of both nets, comma-separated")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=None, help="directory for our runs (default: temporary)")
    args, extra = parser.parse_known_args()
    args.widths = [int(w) for w in args.widths.split(",")]
    if not (args.data_root / FOLDER).is_dir():
        raise SystemExit(f"--data-root {args.data_root}: no {FOLDER}/ there (see ../shared/data/README.md)")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning", "trainer", "runs"):
        logging.getLogger(name).setLevel(logging.WARNING)

    rows, ref, ours = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_loader_files(args.data_root, work / "cifar10")
        out = args.out or work / "ours"
        for seed in range(args.seeds):
            r = run_reference(seed, args, work)
            o = run_ours(seed, args, extra, out / f"seed{seed}")
            ref.append(r)
            ours.append(o)
            rows.append([seed, r["acc"], r["acc_no_tta"], r["seconds"], o["acc"], o["seconds"]])
            print(table(["seed", "ref acc", "ref acc (no TTA)", "ref s", "ours acc", "ours s"], [rows[-1]]), flush=True)

    print(f"\n{machine(args.device)}")
    print(f"widths {args.widths}, {args.epochs} epochs, {args.seeds} seeds, data {args.data_root}; overrides: {extra}")
    print(table(["seed", "ref acc", "ref acc (no TTA)", "ref s", "ours acc", "ours s"], rows))
    ref_s, ours_s = [r["seconds"] for r in ref], [o["seconds"] for o in ours]
    print(
        f"reference (airbench.train94): test acc {summary([r['acc'] for r in ref])} (TTA), "
        f"{summary([r['acc_no_tta'] for r in ref])} (no TTA), train {summary(ref_s)} s"
    )
    print(
        f"ours (experiment=cifar10_airbench94): test acc {summary([o['acc'] for o in ours])} (TTA), "
        f"train {summary(ours_s)} s"
    )
    print(
        f"acc_ours={statistics.mean(o['acc'] for o in ours):.4f} acc_ref={statistics.mean(r['acc'] for r in ref):.4f} "
        f"time_ratio={statistics.median(ours_s) / statistics.median(ref_s):.3f}"
    )


if __name__ == "__main__":
    main()
