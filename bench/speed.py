"""Precision, layout and compilation options against the default, side by side, in training samples/s.

    python -m bench.speed [--device cpu|cuda] [--batch-size 128] [--clip-batch 16] [--frames 8] [--steps 10]
                          [--repeats 3] [--workloads resnet18 cnn_lstm] [--variants default bf16 channels_last ...]

Workloads (nets built from the real configs through ``nets.build.build_net``):
- ``lenet``: the default recipe's net (``model=lenet``) on images (B, 3, 32, 32), 10 classes.
- ``resnet18``: ``model=resnet`` (ResNet-18, CIFAR stem) on images (B, 3, 32, 32), 10 classes.
- ``cnn_lstm``: ``model=cnn_lstm`` with a ResNet-18 (CIFAR stem) frame encoder, LSTM(256) over T frames of
  32x32, clips (B, 3, T, 32, 32).

Variants, each the config switch it measures:
- ``default``: fp32, contiguous (NCHW), eager.
- ``bf16``: ``trainer.precision=bf16-mixed``, i.e. the forward and loss under ``torch.autocast(<device>,
  bfloat16)`` as Lightning's MixedPrecision plugin runs them; weights and optimizer stay fp32.
- ``channels_last``: ``model.channels_last=true``.
- ``compile``: ``compile=true`` (``nn.Module.compile()`` of the net; its compile time is printed apart).
- ``all``: the three together.

A step is forward, cross-entropy, backward and an AdamW step on synthetic data already on the device;
the figure is the median over repeats of the mean step time over ``--steps`` steps, after warm-up steps.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import (
    add_common_args,
    machine,
    net_from_config,
    setup_device,
    step_time,
    sync,
    table,
    train_step,
)

WORKLOADS = {
    "lenet": ["model=lenet"],
    "resnet18": ["model=resnet"],
    "cnn_lstm": [
        "model=cnn_lstm",
        "model.backbone._target_=models.backbones.ResNet",
        "+model.backbone.depth=18",
        "+model.backbone.small_input=true",
    ],
}
VARIANTS = {  # name -> (bf16 autocast, channels_last, compile)
    "default": (False, False, False),
    "bf16": (True, False, False),
    "channels_last": (False, True, False),
    "compile": (False, False, True),
    "all": (True, True, True),
}


def make_step(workload: str, variant: str, args: argparse.Namespace, device: torch.device, run_dir: Path):
    bf16, channels_last, compile = VARIANTS[variant]
    layout = f"model.channels_last={str(channels_last).lower()}"
    net = net_from_config(*WORKLOADS[workload], layout, run_dir=run_dir, compile=compile).to(device)
    if workload == "cnn_lstm":
        x = torch.randn(args.clip_batch, 3, args.frames, args.size, args.size, device=device)  # (B, C, T, H, W)
    else:
        x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)  # (B, C, H, W)
    y = torch.randint(0, net.num_classes, (len(x),), device=device)
    return train_step(net, x, y, bf16=bf16), len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128, help="images per ResNet-18 step")
    parser.add_argument("--clip-batch", type=int, default=16, help="clips per CNN+LSTM step")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="image / frame side")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    add_common_args(parser, repeats=3)
    args = parser.parse_args()
    device = setup_device(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads:
            base = None
            for variant in args.variants:
                step, n = make_step(workload, variant, args, device, Path(tmp) / f"{workload}_{variant}")
                start = time.perf_counter()
                step()  # the first step compiles (compile variants)
                sync(device)
                first = time.perf_counter() - start
                seconds = step_time(step, device, steps=args.steps, repeats=args.repeats)
                rate = n / seconds
                base = rate if variant == "default" else base
                unit = "clips" if workload == "cnn_lstm" else "images"
                rows.append(
                    [
                        workload,
                        variant,
                        f"{rate:.1f} {unit}/s",
                        f"{1e3 * seconds:.1f}",
                        f"{rate / base:.2f}x" if base else "-",
                        f"{first:.1f}",
                    ]
                )
                print(" | ".join(map(str, rows[-1])), flush=True)
    print(f"\nmachine: {machine(device)}")
    print(
        f"resnet18: batch {args.batch_size} at {args.size}x{args.size}; cnn_lstm: batch {args.clip_batch} x "
        f"{args.frames} frames at {args.size}x{args.size}; {args.steps} steps x {args.repeats} repeats, "
        f"device {args.device}"
    )
    print(table(["workload", "variant", "throughput", "ms/step", "vs default", "first step s"], rows))


if __name__ == "__main__":
    main()
