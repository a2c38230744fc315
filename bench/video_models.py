"""Every video model side by side: training and inference clips/s, peak memory, parameters and GFLOPs per clip.

    python -m bench.video_models [--device cpu|cuda] [--models x3d tsm ...] [--frames 8] [--size 112]
                                 [--batch-size 4] [--steps 3] [--repeats 3]

Defaults: 8 x 112 x 112 clips on the CPU, 16 x 224 x 224 with ``--device cuda``; the models are every
``conf/model/<name>.yaml`` that takes clips (a 3D backbone, or a temporal module over per-frame features),
built from the real configs through ``nets.build.build_net`` (10 classes).

- train clips/s: forward, cross-entropy, backward and an SGD step on synthetic clips already on the device
  (median over repeats of the mean over ``--steps`` steps, after warm-up steps).
- infer clips/s: forward under ``torch.inference_mode`` in eval mode, timed the same way.
- peak MiB: on CUDA ``torch.cuda.max_memory_allocated`` during the step; on the CPU the process's peak
  resident memory (Linux ``VmHWM``, reset before each measurement) above what it held before, after freed
  memory went back to the system (``malloc_trim``): weights, activations, gradients and optimizer state.
- GFLOPs/clip: ``torch.utils.flop_counter.FlopCounterMode`` over one clip's forward (2 FLOPs per
  multiply-add: twice the "FLOPs" of fvcore-based tables such as PySlowFast's).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import get_class
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from bench.common import add_common_args, machine, net_from_config, setup_device, step_time, table

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"


def video_models() -> list[str]:
    """The conf/model options that take clips: a 3D backbone or a temporal module over frames."""
    names = []
    for path in sorted(CONF.glob("[!_]*.yaml")):
        cfg = OmegaConf.to_container(OmegaConf.load(path))
        temporal = any(isinstance(d, dict) and "override temporal" in d for d in cfg.get("defaults", []))
        target = cfg.get("backbone", {}).get("_target_")
        if temporal or (target and getattr(get_class(target), "is_3d", False)):
            names.append(path.stem)
    return names


# --- memory -----------------------------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def peak_mib(fn, device: torch.device) -> float:
    """Peak memory ``fn()`` adds (MiB): CUDA's allocator peak, or the CPU process's resident high-water mark."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if not Path("/proc/self/clear_refs").exists():
        fn()
        return float("nan")  # not Linux: no resettable high-water mark
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed blocks back to the system, so the baseline is honest
    base = _rss_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    fn()
    return (_rss_kib("VmHWM:") - base) / 1024


# --- one model --------------------------------------------------------------------------------------------


def measure(name: str, args: argparse.Namespace, device: torch.device, run_dir: Path) -> list[object]:
    net = net_from_config(f"model={name}", run_dir=run_dir).to(device)
    params = sum(p.numel() for p in net.parameters())
    clip = (3, args.frames, args.size, args.size)
    net.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, *clip, device=device))
    gflops = counter.get_total_flops() / 1e9

    x = torch.randn(args.batch_size, *clip, device=device)  # (B, C, T, H, W)
    y = torch.randint(0, net.num_classes, (args.batch_size,), device=device)

    def infer() -> None:
        with torch.inference_mode():
            net(x)

    infer_mib = peak_mib(infer, device)
    infer_s = step_time(infer, device, steps=args.steps, repeats=args.repeats, warmup=1)

    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def train() -> None:
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_mib = peak_mib(train, device)  # the first step also allocates the gradients and momentum buffers
    train_s = step_time(train, device, steps=args.steps, repeats=args.repeats, warmup=1)
    return [
        name,
        f"{params / 1e6:.2f}",
        f"{gflops:.2f}",
        f"{args.batch_size / train_s:.2f}",
        f"{args.batch_size / infer_s:.2f}",
        f"{train_mib:.0f}",
        f"{infer_mib:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="conf/model options (default: every video one)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default 8 on cpu, 16 on cuda)")
    parser.add_argument("--size", type=int, default=None, help="frame side (default 112 on cpu, 224 on cuda)")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per step (default 4 on cpu, 8 on cuda)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    add_common_args(parser, repeats=3)
    args = parser.parse_args()
    device = setup_device(args)
    gpu = device.type == "cuda"
    args.frames = args.frames or (16 if gpu else 8)
    args.size = args.size or (224 if gpu else 112)
    args.batch_size = args.batch_size or (8 if gpu else 4)
    models = args.models or video_models()
    unknown = [m for m in models if not (CONF / f"{m}.yaml").is_file()]
    if unknown:
        raise SystemExit(f"--models {unknown}: no such conf/model option; video ones: {video_models()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            rows.append(measure(name, args, device, Path(tmp) / name))
            print(" | ".join(map(str, rows[-1])), flush=True)
    print(f"\nmachine: {machine(device)}")
    print(
        f"clips {args.batch_size} x 3 x {args.frames} x {args.size} x {args.size}, {args.steps} steps x "
        f"{args.repeats} repeats, device {args.device}"
    )
    headers = [
        "model",
        "params (M)",
        "GFLOPs/clip",
        "train clips/s",
        "infer clips/s",
        "train peak MiB",
        "infer peak MiB",
    ]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
