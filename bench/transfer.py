"""Transfer learning: pretrain on classes 0-4, fine-tune on 5-9 from a few labels each, against scratch.

    python -m bench.transfer [--data digits|cifar10] [--data-root DIR] [--seeds N] [--per-class 10[,100]]
                             [--pretrain-seeds N] [--modes none,freeze_then_unfreeze] [overrides ...]

For each seed, through the real ``trainer.run.train(cfg)``:

1. pretrain: ``data.classes=[0,1,2,3,4]`` with all their training images (once per pretrain seed);
2. fine-tune: ``data.classes=[5,6,7,8,9] data.train_per_class=<k>`` (k labelled images per class, drawn
   with the seed), ``model.pretrained=<pretrain best.ckpt> model.pretrained_exclude=<--exclude>``,
   ``finetune=<mode>`` for each of ``--modes``;
3. scratch: the same run without ``model.pretrained`` (same data, epochs, steps, optimizer).

``--data digits`` (default): LeNet, AdamW, cosine (conf/train.yaml), pretrained for ``--pretrain-epochs``,
fine-tuned for ``--epochs``; every run keeps its best epoch by val/acc. ``--data cifar10``: the real CIFAR-10
images under ``--data-root`` (e.g. the dev layout of ../shared/data/cifar10_dev.py), the airbench94 recipe
(``experiment=cifar10_airbench94``, widths ``--widths``) for every run: pretraining for 9.9 epochs, fine-tuning
and scratch for ``--steps`` optimizer steps of batch ``--batch-size``; scored with TTA on the test images of
classes 5-9. Prints each run, then mean and standard deviation over seeds per labelled-set size, and last the
line ``finetune_acc=<mean> scratch_acc=<mean>`` (the first mode, the first --per-class). Extra arguments are
config overrides applied to every run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.common import machine, table
from runs.compose import compose_config
from trainer.run import train

QUIET = ["~callbacks.progress_bar", "+trainer.enable_progress_bar=false"]
SOURCE = ["data.classes=[0,1,2,3,4]", "data.num_classes=5"]
TARGET = ["data.classes=[5,6,7,8,9]", "data.num_classes=5"]


def run(overrides: list[str], run_dir: Path) -> dict:
    """One train() in ``run_dir``; its results.json as a dict."""
    train(compose_config(*QUIET, *overrides, output_dir=run_dir))
    return json.loads((run_dir / "results.json").read_text())


def recipe(args: argparse.Namespace) -> tuple[list[str], list[str], Callable[[int], list[str]]]:
    """(overrides of every run, of pretraining only, per-class count -> overrides of the few-label runs)."""
    if args.data == "digits":
        common = [f"data.batch_size={args.batch_size}"]
        return common, [f"trainer.max_epochs={args.pretrain_epochs}"], lambda k: [f"trainer.max_epochs={args.epochs}"]
    common = [
        "experiment=cifar10_airbench94",
        f"data.root={args.data_root}",
        f"model.backbone.widths=[{args.widths}]",
    ]

    def few(k: int) -> list[str]:
        batch = min(args.batch_size, 5 * k)
        batches = max(1, 5 * k // batch) if 5 * k > batch else 1
        return [f"data.batch_size={batch}", f"train_epochs={math.ceil(args.steps / batches)}"]

    return common, ["train_epochs=9.9"], few


def pretrain(seed: int, args: argparse.Namespace, extra: list[str], root: Path) -> dict:
    common, pre, _ = recipe(args)
    return run([f"seed={seed}", *common, *SOURCE, *pre, *extra], root / f"pre{seed}")


def transfer(seed: int, pre: dict, args: argparse.Namespace, extra: list[str], root: Path) -> dict[str, float]:
    common, _, few_label = recipe(args)
    acc = {"pretrain (0-4)": pre["test/acc"]}
    for k in args.per_class:
        few = [f"seed={seed}", *common, *TARGET, f"data.train_per_class={k}", *few_label(k), *extra]
        for mode in args.modes:
            res = run(
                [
                    *few,
                    f"model.pretrained={pre['checkpoints/best']}",
                    f"model.pretrained_exclude=[{args.exclude}]",
                    f"finetune={mode}",
                    *args.ft.split(),
                ],
                root / f"ft{seed}_{k}_{mode}",
            )
            acc[f"finetune:{mode} k={k}"] = res["test/acc"]
        acc[f"scratch k={k}"] = run(few, root / f"scratch{seed}_{k}")["test/acc"]
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", choices=["digits", "cifar10"])
    parser.add_argument("--data-root", type=Path, default=None, help="cifar10: folder holding cifar-10-batches-py")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pretrain-seeds", type=int, default=None, help="pretrained nets (default: one per seed)")
    parser.add_argument("--per-class", default="10", help="labelled training images per class 5-9, comma-separated")
    parser.add_argument("--pretrain-epochs", type=int, default=15, help="digits")
    parser.add_argument("--epochs", type=int, default=10, help="digits: epochs of fine-tuning and of scratch")
    parser.add_argument("--steps", type=int, default=200, help="cifar10: optimizer steps of fine-tuning and scratch")
    parser.add_argument("--widths", default="32,128,128", help="cifar10: airbench widths")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 (digits), 50 (cifar10)")
    parser.add_argument(
        "--modes", default="none,freeze_then_unfreeze", help="finetune= configs to compare, comma-separated"
    )
    parser.add_argument(
        "--exclude", default=None, help="key prefixes not loaded, comma-separated (default: head,backbone.fc | head)"
    )
    parser.add_argument(
        "--ft",
        default="",
        help="overrides of the fine-tune runs only, space-separated (e.g. 'finetune.backbone_lr_mult=0.1')",
    )
    parser.add_argument("--out", default=None, help="directory for the runs (default: a temporary one)")
    args, extra = parser.parse_known_args()
    args.modes = args.modes.split(",")
    args.per_class = [int(k) for k in args.per_class.split(",")]
    args.batch_size = args.batch_size or (16 if args.data == "digits" else 50)
    args.exclude = args.exclude or ("head,backbone.fc" if args.data == "digits" else "head")
    if args.data == "cifar10" and not (args.data_root and (args.data_root / "cifar-10-batches-py").is_dir()):
        raise SystemExit(f"--data cifar10 needs --data-root with cifar-10-batches-py/ (got {args.data_root})")
    pretrain_seeds = args.pretrain_seeds or args.seeds
    for name in ("pytorch_lightning", "lightning_fabric", "lightning", "trainer", "runs"):
        logging.getLogger(name).setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        pre = [pretrain(s, args, extra, root) for s in range(pretrain_seeds)]
        per_seed = {s: transfer(s, pre[s % pretrain_seeds], args, extra, root) for s in range(args.seeds)}
    columns = list(per_seed[0])
    print(f"\n{machine('cpu')}")
    print(
        f"{args.data} classes 5-9, {args.per_class} labelled images per class; pretrained on classes 0-4 "
        f"({pretrain_seeds} pretrained nets); overrides: {extra or 'none'}\n"
    )
    print(table(["seed", *columns], [[s, *(acc[c] for c in columns)] for s, acc in per_seed.items()]))
    print()
    summary = {c: [acc[c] for acc in per_seed.values()] for c in columns}
    print(
        table(
            ["run", "mean test acc", "std", "min", "max"],
            [
                [c, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, min(v), max(v)]
                for c, v in summary.items()
            ],
        )
    )
    k = args.per_class[0]
    finetune = statistics.mean(summary[f"finetune:{args.modes[0]} k={k}"])
    print(f"finetune_acc={finetune:.4f} scratch_acc={statistics.mean(summary[f'scratch k={k}']):.4f}")


if __name__ == "__main__":
    main()
