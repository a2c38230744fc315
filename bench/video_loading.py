"""The video path side by side (``python -m bench.loading --video DIR``): training clips/s of our loader against a
plain loop, and decode frames/s of our decoding against FFmpeg's own.

    python -m bench.loading --video DIR [--frames 8] [--crop 64] [--short-side 72] [--batch-size 8] [--epochs 2]
        [--workers 0 2] [--repeats 3] [--model cnn_gru] [--decode-files N] [--skip-train] [--skip-decode]
        [--threads N] [data overrides ...]

``DIR`` holds ``<class>/<video>`` (the ``data.root`` of ``data=video_folder``); extra arguments are overrides of
that config (``data.class_index=../classInd.txt data.train_list=../dev_train.txt ...``), which pick the
training split that part 1 trains on (write them after a one-value option: ``--workers`` takes a list).

**1. Training clips/s** on the training split: ``--epochs`` epochs of ``--batch-size`` clips (full batches) of
``--frames`` frames, one from each of ``--frames`` equal segments of the video (``data.clip_sampling=segments``,
a random frame in each), frames resized to a ``--short-side`` while decoding, a random ``--crop`` square,
normalised by ``data.mean``/``data.std`` (``augment=none``), each batch a training step (cross-entropy,
backward, AdamW) of ``--model`` (``cnn_gru``: LeNet per frame + GRU; the same init on every side), on:

- ``per-clip, W workers``: ``data.in_memory=false``: VideoDataModule's ``train_dataloader`` (W processes), each
  clip opened and decoded from its file (data/video/decode.py), cropped, normalised by the augment pipeline;
- ``cached, W workers``: ``data.in_memory=true``: the same loader taking clips from the videos decoded once at
  setup (data/video/cache.py);
- ``plain``: PyAV decodes every file once into a uint8 array (one process, one decoder thread); then per epoch a
  seeded permutation cut into full batches, each clip's frames and crop drawn in numpy as above, stacked,
  normalised by torch, stepped.

Timed: the epochs only (building the loader, whose workers start and end once per epoch with
``data.persistent_workers=false``, included); the decoding done once beforehand by the cached and plain sides
(``prep s``) is timed once and reported apart. The sides run in turn, A B C A B C ..., ``--repeats`` times,
after one untimed epoch of each. The goal: a cached epoch at most 1.2x the plain loop's (its decoding excluded).

**2. Decode frames/s** of every video under ``DIR`` (or ``--decode-files`` of them, evenly spaced over the sorted
paths), one process, one decoder thread on every side:

- ``ours, every frame``: ``data.video.decode.read_all`` at ``--short-side`` (decode, swscale bilinear resize and
  RGB conversion of every frame into uint8 arrays, opening the file included): what the cache does;
- ``ours, one clip``: ``VideoReader.read`` of one training clip (the sampling above) per file: per-clip
  decoding, which decodes up to the clip's last frame and converts only its frames (frames/s counts decoded
  frames);
- ``ffmpeg, scale + rgb24``: ``ffmpeg -benchmark -threads 1 -i F -map 0:v:0 -vf scale=W:H:flags=bilinear,
  format=rgb24 -f null -`` per file: the same work as ``read_all``;
- ``ffmpeg, decode only``: ``ffmpeg -benchmark -threads 1 -i F -map 0:v:0 -f null -``: the practical limit.

FFmpeg's seconds are its own ``-benchmark`` figures (``rtime``, and ``utime + stime`` as CPU seconds: decoding,
after the process has started and opened the file; ``process s`` and ``process cpu s`` are the whole process).
FFmpeg comes from ``PATH``, else from the ``imageio-ffmpeg`` package (a static build); without either that part
is skipped with a message. The sides alternate within each repeat, after each has decoded the first file once.
The goal: ``read_all`` within 1.5x of FFmpeg's time for the same work.

Both parts print each run (wall and CPU seconds: this process's threads and its ended children, the loader
workers and FFmpeg), a table of medians and ranges, and ratios as ``name=value``: wall seconds of one side over
another (medians; ``cpu_``: of CPU seconds, the figure to trust when other processes share the cores).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from bench.common import cpu_seconds, machine, table
from data.video.datamodule import VideoDataModule
from data.video.decode import VideoReader, read_all
from data.video.lists import VIDEO_EXTENSIONS
from data.video.sampling import ClipSampler
from nets.build import build_net
from runs.compose import compose_config

TRAIN_GOAL, DECODE_GOAL = 1.2, 1.5


def measure(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of one call."""
    cpu, start = cpu_seconds(), time.perf_counter()
    out = fn()
    return time.perf_counter() - start, cpu_seconds() - cpu, out


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``short_side``, as ``VideoReader`` resizes."""
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def compose(args: argparse.Namespace, root: Path, run_dir: Path, *, in_memory: bool, workers: int) -> DictConfig:
    return compose_config(
        "data=video_folder",
        f"data.root={root}",
        "data.num_classes=null",
        f"data.num_frames={args.frames}",
        "data.clip_sampling=segments",
        f"data.crop_size={args.crop}",
        f"data.short_side={args.short_side}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={workers}",
        f"data.in_memory={str(in_memory).lower()}",
        "data.persistent_workers=false",
        "data.pin_memory=false",
        "augment=none",
        f"model={args.model}",
        *args.overrides,
        output_dir=run_dir,
    )


def datamodule(cfg: DictConfig) -> VideoDataModule:
    return instantiate(
        cfg.data, train_transform=instantiate(cfg.augment.train), eval_transform=instantiate(cfg.augment.eval)
    )


def new_net(cfg: DictConfig, num_classes: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The net and its optimizer, the same init on every side."""
    cfg.data.num_classes = num_classes
    torch.manual_seed(cfg.seed)
    net = build_net(cfg.model)
    return net.train(), torch.optim.AdamW(net.parameters(), lr=1e-3)


def step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class Ours:
    """VideoDataModule's training loader (per-clip decoding or the cache) feeding the training steps."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg, self.dm = cfg, datamodule(cfg)

    def prep(self) -> None:
        self.dm.setup("fit")  # the cache decodes here

    def epochs(self, epochs: int) -> int:
        net, optimizer = new_net(self.cfg, self.dm.num_classes)
        clips = 0
        for _ in range(epochs):
            for batch in self.dm.train_dataloader():
                step(net, optimizer, batch["input"], batch["target"])
                clips += len(batch["target"])
        return clips


class Plain:
    """Every training file decoded once by PyAV into uint8 arrays; clips drawn, cropped, normalised in numpy/torch."""

    def __init__(self, cfg: DictConfig, videos: list[tuple[str, int]], num_classes: int, args: argparse.Namespace):
        self.cfg, self.videos, self.num_classes, self.args = cfg, videos, num_classes, args
        self.mean = torch.tensor(list(cfg.data.mean)).view(1, 3, 1, 1, 1) * 255
        self.std = torch.tensor(list(cfg.data.std)).view(1, 3, 1, 1, 1) * 255

    def prep(self) -> None:
        self.frames = [decode_file(path, self.args.short_side) for path, _ in self.videos]  # (N, H, W, 3) each
        self.labels = torch.tensor([label for _, label in self.videos])

    def epochs(self, epochs: int) -> int:
        net, optimizer = new_net(self.cfg, self.num_classes)
        b, n, t, size = self.args.batch_size, len(self.videos), self.args.frames, self.args.crop
        rng = np.random.default_rng(self.cfg.seed)
        clips = 0
        for _ in range(epochs):
            for idx in rng.permutation(n)[: n // b * b].reshape(-1, b):
                batch = np.empty((b, t, size, size, 3), np.uint8)
                for k, i in enumerate(idx):
                    video = self.frames[i]
                    edges = np.linspace(0, len(video), t + 1)  # t equal segments, a random frame of each
                    low = np.floor(edges[:-1]).astype(np.int64)
                    frames = rng.integers(low, np.maximum(low + 1, np.floor(edges[1:]).astype(np.int64)))
                    y0 = rng.integers(0, video.shape[1] - size + 1)
                    x0 = rng.integers(0, video.shape[2] - size + 1)
                    batch[k] = video[frames, y0 : y0 + size, x0 : x0 + size]
                # (B, 3, T, S, S), channels-last in memory as the permute leaves it (the model step is faster on
                # that layout than on the contiguous clips of our collate: docs/video.md)
                x = (torch.from_numpy(batch).permute(0, 4, 1, 2, 3).float() - self.mean) / self.std
                step(net, optimizer, x, self.labels[idx])
                clips += b
        return clips


def decode_file(path: str | Path, short_side: int) -> np.ndarray:
    """The plain loop's decoding: every frame of ``path`` as RGB at ``short_side``, ``(N, H, W, 3)`` uint8."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        width, height = short_side_size(stream.width, stream.height, short_side)
        return np.stack([f.to_ndarray(format="rgb24", width=width, height=height) for f in container.decode(stream)])


def train_main(args: argparse.Namespace, root: Path, tmp: Path) -> None:
    sides: dict[str, Ours | Plain] = {}
    for in_memory in (False, True):
        for w in args.workers:
            cfg = compose(args, root, tmp / "run", in_memory=in_memory, workers=w)
            sides[f"{'cached' if in_memory else 'per-clip'}, {w} workers"] = Ours(cfg)
    first = next(iter(sides.values()))
    listed = first.dm.list_splits()[0]
    sides["plain"] = Plain(first.cfg.copy(), listed.videos, first.dm.num_classes, args)
    prep = {}
    for name, side in sides.items():
        prep[name], _, _ = measure(side.prep)
    for side in sides.values():  # warm-up: imports, first calls, worker start-up paths
        side.epochs(1)
    seconds: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    clips = 0
    for r in range(args.repeats):
        for name, side in sides.items():
            s, c, clips = measure(lambda side=side: side.epochs(args.epochs))
            seconds[name].append(s)
            cpu[name].append(c)
            print(f"repeat {r} {name:20s} {s:7.2f} s  cpu {c:7.2f} s  {clips / s:7.1f} clips/s", flush=True)
    print(
        f"\n1. training: {len(listed)} videos of {root} ({clips} clips in {args.epochs} epochs of full batches of "
        f"{args.batch_size}), {args.frames} frames (segments), short side {args.short_side}, crop {args.crop}, "
        f"model={args.model}, overrides {args.overrides}"
    )
    rows = [
        [
            name,
            f"{clips / statistics.median(v):.1f}",
            statistics.median(v),
            min(v),
            max(v),
            statistics.median(cpu[name]),
            f"{prep[name]:.2f}",
        ]
        for name, v in seconds.items()
    ]
    print(table(["side", "clips/s", "median s", "min s", "max s", "median cpu s", "prep s"], rows))
    plain, plain_cpu = statistics.median(seconds["plain"]), statistics.median(cpu["plain"])
    for name in seconds:
        if name == "plain":
            continue
        key = name.replace(", ", "_w").replace(" workers", "").replace("-", "_")
        for label, values in (("wall", seconds), ("cpu", cpu)):  # the sides of one repeat ran back to back
            paired = [round(a / b, 3) for a, b in zip(values[name], values["plain"], strict=True)]
            print(f"{name} / plain {label} per repeat {paired}, median {statistics.median(paired):.3f}")
        print(f"{key}_vs_plain={statistics.median(seconds[name]) / plain:.3f}")
        print(f"cpu_{key}_vs_plain={statistics.median(cpu[name]) / plain_cpu:.3f}")
    for label, values, base in (("wall", seconds, plain), ("cpu", cpu, plain_cpu)):
        best = min((n for n in values if n.startswith("cached")), key=lambda n: statistics.median(values[n]))
        ratio = statistics.median(values[best]) / base
        verdict = "met" if ratio <= TRAIN_GOAL else "NOT met"
        print(f"goal ({label}): a cached epoch <= {TRAIN_GOAL}x the plain loop's: {best} {ratio:.3f}x, {verdict}")


# --- 2. decode frames/s -------------------------------------------------------------------------------------------


def ffmpeg_exe() -> str | None:
    """``ffmpeg`` on PATH, else the static build of the imageio-ffmpeg package, else None."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    return imageio_ffmpeg.get_ffmpeg_exe()


BENCH_LINE = re.compile(r"bench: utime=([\d.]+)s stime=([\d.]+)s rtime=([\d.]+)s")
FRAME_LINE = re.compile(r"frame=\s*(\d+)")


def ffmpeg_decode(exe: str, path: Path, size: tuple[int, int] | None) -> tuple[int, float, float]:
    """(frames, FFmpeg's own -benchmark wall and CPU seconds) of decoding ``path`` to nothing (scaled to ``size``
    and converted to rgb24 when given)."""
    scale = ["-vf", f"scale={size[0]}:{size[1]}:flags=bilinear,format=rgb24"] if size else []
    cmd = [exe, "-hide_banner", "-nostdin", "-benchmark", "-threads", "1", "-i", str(path), "-map", "0:v:0"]
    done = subprocess.run([*cmd, *scale, "-f", "null", "-"], capture_output=True, text=True)
    bench, frames = BENCH_LINE.search(done.stderr), FRAME_LINE.findall(done.stderr)
    if done.returncode != 0 or not bench or not frames:
        raise SystemExit(f"ffmpeg failed on {path} (exit {done.returncode}): {done.stderr[-500:]}")
    utime, stime, rtime = map(float, bench.groups())
    return int(frames[-1]), rtime, utime + stime


def decode_main(args: argparse.Namespace, root: Path) -> None:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise SystemExit(f"--video {root}: no video files ({', '.join(VIDEO_EXTENSIONS)}) under it")
    if args.decode_files:  # evenly spaced over the sorted paths: every class folder contributes
        files = [files[i] for i in np.linspace(0, len(files) - 1, min(args.decode_files, len(files))).astype(int)]
    sizes = {}
    for p in files:  # header only: the size FFmpeg scales to
        with VideoReader(p) as video:
            sizes[p] = short_side_size(video.meta.width, video.meta.height, args.short_side)
    sampler = ClipSampler(num_frames=args.frames, segments=True)
    rng = np.random.default_rng(0)

    # Each side decodes a list of files and returns (frames, own wall s, own CPU s); "own" is None where the
    # caller's measure is the figure.
    def ours_all(files: list[Path]) -> tuple[int, None, None]:
        return sum(len(read_all(p, short_side=args.short_side)) for p in files), None, None

    def ours_clip(files: list[Path]) -> tuple[int, None, None]:
        decoded = 0
        for p in files:
            with VideoReader(p, short_side=args.short_side) as video:
                video.read(sampler.random_clip(video.meta.num_frames, video.meta.fps, rng))
                decoded += video.decoded
        return decoded, None, None

    sides: dict[str, Callable[[list[Path]], tuple]] = {"ours, every frame": ours_all, "ours, one clip": ours_clip}
    exe = ffmpeg_exe()
    if exe is None:
        print("\n2. ffmpeg: skipped: no ffmpeg on PATH and no imageio-ffmpeg package (pip install imageio-ffmpeg)")
    else:
        for name, scaled in (("ffmpeg, scale + rgb24", True), ("ffmpeg, decode only", False)):

            def run(files: list[Path], scaled: bool = scaled) -> tuple[int, float, float]:
                out = np.array([ffmpeg_decode(exe, p, sizes[p] if scaled else None) for p in files])  # (files, 3)
                return int(out[:, 0].sum()), float(out[:, 1].sum()), float(out[:, 2].sum())

            sides[name] = run
    for fn in sides.values():  # warm-up: codec initialisation, first calls
        fn(files[:1])
    keys = ("s", "cpu", "process", "process_cpu")
    runs: dict[str, dict[str, list[float]]] = {name: {k: [] for k in keys} for name in sides}
    frames: dict[str, int] = {}
    for r in range(args.repeats):
        for name, fn in sides.items():
            wall, cpu, (n, own_wall, own_cpu) = measure(lambda fn=fn: fn(files))
            s = wall if own_wall is None else own_wall  # FFmpeg's own -benchmark figures where it gives them
            c = cpu if own_cpu is None else own_cpu
            for k, v in zip(keys, (s, c, wall, cpu), strict=True):
                runs[name][k].append(v)
            frames[name] = n
            print(f"repeat {r} {name:22s} {s:7.2f} s  cpu {c:7.2f} s  {n / s:8.0f} frames/s", flush=True)
    med = {name: {k: statistics.median(v) for k, v in run.items()} for name, run in runs.items()}
    print(
        f"\n2. decoding: {len(files)} files under {root}, short side {args.short_side}, one decoder thread"
        + (f", ffmpeg {exe}" if exe else "")
    )
    headers = ["side", "frames", "frames/s", "median s", "min s", "max s", "median cpu s", "process s", "process cpu s"]
    rows = [
        [name, frames[name], f"{frames[name] / m['s']:.0f}", m["s"], min(runs[name]["s"]), max(runs[name]["s"]),
         m["cpu"], m["process"], m["process_cpu"]]
        for name, m in med.items()
    ]  # fmt: skip
    print(table(headers, rows))
    if exe is None:
        return
    ours, ref, bare = "ours, every frame", "ffmpeg, scale + rgb24", "ffmpeg, decode only"
    if frames[ours] != frames[ref]:
        print(f"note: ours decoded {frames[ours]} frames, ffmpeg {frames[ref]}")
    # Seconds per frame of ours over FFmpeg's: the frames/s of FFmpeg over ours.
    per_frame = {name: {k: v / frames[name] for k, v in m.items()} for name, m in med.items()}
    ratios = {
        "read_all_vs_ffmpeg": per_frame[ours]["s"] / per_frame[ref]["s"],
        "cpu_read_all_vs_ffmpeg": per_frame[ours]["cpu"] / per_frame[ref]["cpu"],
        "read_all_vs_ffmpeg_process": per_frame[ours]["process"] / per_frame[ref]["process"],
        "cpu_read_all_vs_ffmpeg_process": per_frame[ours]["process_cpu"] / per_frame[ref]["process_cpu"],
        "read_all_vs_ffmpeg_decode_only": per_frame[ours]["s"] / per_frame[bare]["s"],
    }
    for name, value in ratios.items():
        print(f"{name}={value:.3f}")
    for label, key in (("wall", "read_all_vs_ffmpeg"), ("cpu", "cpu_read_all_vs_ffmpeg")):
        verdict = "met" if ratios[key] <= DECODE_GOAL else "NOT met"
        print(f"goal ({label}): read_all within {DECODE_GOAL}x of ffmpeg's time for the same work: {verdict}")


def video_main(args: argparse.Namespace) -> None:
    root = Path(args.video)
    if args.device != "cpu":
        raise SystemExit(f"--video times the CPU path only; --device {args.device} is not supported")
    if not root.is_dir():
        raise SystemExit(f"--video {root}: not a folder (expected <class>/<video> under it)")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_train:
            train_main(args, root, Path(tmp))
        if not args.skip_decode:
            decode_main(args, root)
    print(f"\nmachine: {machine('cpu')}")
