"""Transfer learning on the digits: pretrain on 0-4, fine-tune on 5-9 from a few labels, against scratch.

    python -m bench.transfer_digits [--seeds 5] [--per-class 10] [--pretrain-epochs 15] [--epochs 10]
                                    [--modes none,freeze_then_unfreeze] [overrides ...]

For each seed, through the real ``trainer.run.train(cfg)`` (the config ``train.py`` composes, default model
LeNet, AdamW, cosine schedule):

1. pretrain: ``data.classes=[0,1,2,3,4]`` with all their training images for ``--pretrain-epochs``;
2. fine-tune: ``data.classes=[5,6,7,8,9] data.train_per_class=<k>`` (k labelled images per class, drawn
   with the seed), ``model.pretrained=<pretrain best.ckpt> model.pretrained_exclude=[head,backbone.fc]``
   (the convolutional features transfer; LeNet's fully connected layers, specialised to the old labels, and
   the head start afresh), ``finetune=<mode>`` for each of ``--modes``, ``--epochs`` epochs;
3. scratch: the same run without ``model.pretrained`` (same data, epochs, steps, optimizer).

Every run keeps its best epoch by val/acc on the same val split and is scored on the same test split of
digits 5-9 (``data.split_seed`` is fixed). Prints each run, then mean and standard deviation over seeds,
and last the line ``finetune_acc=<mean> scratch_acc=<mean>`` (the first mode is the fine-tune figure).
Extra arguments are config overrides applied to every run (e.g. ``model=resnet``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

from bench.common import machine, table
from runs.compose import compose_config
from trainer.run import train

QUIET = ["~callbacks.progress_bar", "~callbacks.lr_monitor", "+trainer.enable_progress_bar=false"]
TARGET = ["data.classes=[5,6,7,8,9]", "data.num_classes=5"]


def run(overrides: list[str], run_dir: Path) -> dict:
    """One train() in ``run_dir``; its results.json as a dict."""
    import json

    train(compose_config(*QUIET, *overrides, output_dir=run_dir))
    return json.loads((run_dir / "results.json").read_text())


def transfer(seed: int, args: argparse.Namespace, extra: list[str], root: Path) -> dict[str, float]:
    common = [f"seed={seed}", f"data.batch_size={args.batch_size}", *extra]
    pre = run(
        [
            *common,
            "data.classes=[0,1,2,3,4]",
            "data.num_classes=5",
            f"trainer.max_epochs={args.pretrain_epochs}",
        ],
        root / f"pre{seed}",
    )
    few = [*common, *TARGET, f"data.train_per_class={args.per_class}", f"trainer.max_epochs={args.epochs}"]
    acc = {"pretrain (0-4)": pre["test/acc"]}
    for mode in args.modes:
        res = run(
            [
                *few,
                f"model.pretrained={pre['checkpoints/best']}",
                f"model.pretrained_exclude=[{args.exclude}]",
                f"finetune={mode}",
                *args.ft.split(),
            ],
            root / f"ft{seed}_{mode}",
        )
        acc[f"finetune:{mode}"] = res["test/acc"]
    acc["scratch"] = run(few, root / f"scratch{seed}")["test/acc"]
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=10, help="labelled training images per digit 5-9")
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of fine-tuning and of scratch training")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--modes", default="none,freeze_then_unfreeze", help="finetune= configs to compare, comma-separated"
    )
    parser.add_argument(
        "--exclude",
        default="head,backbone.fc",
        help="key prefixes not loaded from the pretrained net, comma-separated",
    )
    parser.add_argument(
        "--ft",
        default="",
        help="overrides of the fine-tune runs only, space-separated (e.g. 'finetune.backbone_lr_mult=0.1')",
    )
    parser.add_argument("--out", default=None, help="directory for the runs (default: a temporary one)")
    args, extra = parser.parse_known_args()
    args.modes = args.modes.split(",")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning", "trainer"):
        logging.getLogger(name).setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        per_seed = {s: transfer(s, args, extra, root) for s in range(args.seeds)}
    columns = list(per_seed[0])
    print(f"\n{machine('cpu')}")
    print(
        f"digits 5-9, {args.per_class} labelled images per class, {args.epochs} epochs, "
        f"batch {args.batch_size}; "
        f"pretrained on digits 0-4 for {args.pretrain_epochs} epochs; overrides: {extra or 'none'}\n"
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
    finetune = statistics.mean(summary[f"finetune:{args.modes[0]}"])
    print(f"finetune_acc={finetune:.4f} scratch_acc={statistics.mean(summary['scratch']):.4f}")


if __name__ == "__main__":
    main()
