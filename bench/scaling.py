"""How the time of one training step grows with batch size, input size and (video) number of frames.

    python -m bench.scaling [--device cpu|cuda] [--model lenet|resnet] [--batch-sizes 32 64 128 256]
                            [--sizes 32 64 128] [--frames 4 8 16] [--clip-batch 8] [--steps 5] [--repeats 3]

Three sweeps, each varying one thing from the default recipe's shapes (batch 128, 32x32):
- batch size at 32x32 (``model=<model>``);
- input side at batch 128 (``model=<model>``);
- frames per clip for ``model=cnn_lstm`` (LeNet on every frame, LSTM over the frames), ``--clip-batch`` clips
  of 32x32 frames.
A step is forward, cross-entropy, backward and an AdamW step in fp32 on synthetic data on the device; the
figure is the median over repeats of the mean time of ``--steps`` steps. "x of first" is the step time
relative to the sweep's first row, and "per sample" divides by the images (frames for clips) in the step.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.common import add_common_args, machine, net_from_config, setup_device, step_time, table, train_step


def measure(net: torch.nn.Module, shape: tuple[int, ...], args: argparse.Namespace, device: torch.device) -> float:
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, net.num_classes, (shape[0],), device=device)
    return step_time(train_step(net, x, y), device, steps=args.steps, repeats=args.repeats)


def sweep(name: str, net: torch.nn.Module, shapes: list[tuple[int, ...]], args, device) -> list[list]:
    rows, first = [], None
    for shape in shapes:
        seconds = measure(net, shape, args, device)
        first = first or seconds
        samples = shape[0] * (shape[2] if len(shape) == 5 else 1)  # images, or frames of all clips
        rows.append(
            [
                name,
                "x".join(map(str, shape)),
                f"{1e3 * seconds:.2f}",
                f"{seconds / first:.2f}",
                f"{1e6 * seconds / samples:.1f}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lenet", help="model config group option for the image sweeps")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--clip-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    add_common_args(parser, repeats=3)
    args = parser.parse_args()
    device = setup_device(args)
    with tempfile.TemporaryDirectory() as tmp:
        image_net = net_from_config(f"model={args.model}", run_dir=Path(tmp) / "image").to(device)
        clip_net = net_from_config("model=cnn_lstm", run_dir=Path(tmp) / "clip").to(device)
        rows = sweep(
            f"batch ({args.model}, 32x32)",
            image_net,
            [(b, 3, 32, 32) for b in args.batch_sizes],
            args,
            device,
        )
        rows += sweep(
            f"input side ({args.model}, batch 128)",
            image_net,
            [(128, 3, s, s) for s in args.sizes],
            args,
            device,
        )
        rows += sweep(
            f"frames (cnn_lstm, {args.clip_batch} clips, 32x32)",
            clip_net,
            [(args.clip_batch, 3, t, 32, 32) for t in args.frames],
            args,
            device,
        )
    print(f"\nmachine: {machine(device)}; {args.steps} steps x {args.repeats} repeats, fp32, device {args.device}")
    print(table(["sweep", "input shape", "ms/step", "x of first", "us/sample"], rows))


if __name__ == "__main__":
    main()
