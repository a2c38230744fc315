"""Images/s and clips/s of extract.py against a careful plain torch inference loop, side by side.

    python -m bench.extract [--images 512] [--videos 24] [--model lenet] [--image-size 64] [--device cpu|cuda]
                            [--workers 2] [--batch-size 64] [--repeats 3]

Writes ``--images`` PNGs (sklearn digits upsampled to ``--image-size``) and ``--videos`` 48-frame mp4s to a
temporary folder, then times, alternately (A B A B ..., ``--repeats`` each, medians reported):

    extract.py  ``features.extract.extract`` as ``python extract.py model=<m> input=<folder> output=<dir>`` runs
                it (net built, files listed and probed, features.npy preallocated, progress saved per batch,
                index/meta written); videos: ``data.test_clips=3`` clips of 8 frames per video
    plain loop  the same files through the same dataset classes (``ImageItems`` / ``VideoClipDataset``: the
                same decoding, resizing and normalisation) in a DataLoader with the same workers and batch
                size, the net built once per run, ``net.embed`` under ``inference_mode`` (float16 autocast on
                GPU, as extract.py's ``precision=auto``), rows gathered in a preallocated array, ``np.save``

and prints both rates and ``ratio=`` (extract.py time / plain time; the goal is <= 1.1).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench.common import add_common_args, machine, setup_device, sync
from data.digits import digits_as_images
from data.transforms import Pipeline
from data.video.dataset import VideoClipDataset
from data.video.encode import write_video
from data.video.sampling import ClipSampler
from features.extract import extract
from features.inputs import list_sources
from features.plans import ImageItems
from nets.build import build_net
from runs.compose import compose_config

MEAN, STD = [0.2, 0.2, 0.2], [0.35, 0.35, 0.35]
CLIPS, FRAMES, STRIDE = 3, 8, 2


def write_inputs(root: Path, *, images: int, videos: int, size: int) -> None:
    pictures, targets = digits_as_images(size)
    for i in range(images):
        path = root / "images" / str(targets[i % len(targets)]) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pictures[i % len(pictures)]).save(path)
    rng = np.random.default_rng(0)
    for i in range(videos):
        frames = rng.integers(0, 255, (48, size, size * 4 // 3 // 2 * 2, 3), dtype=np.uint8)
        write_video(root / "videos" / f"c{i % 2}" / f"v{i:03d}.mp4", frames, fps=25)


def extract_config(args: argparse.Namespace, root: Path, kind: str, run: int):
    return compose_config(
        f"model={args.model}",
        f"input={root / kind}",
        f"output={root / 'out' / f'{kind}_{run}'}",
        f"data.image_size={args.image_size}",
        f"data.mean={MEAN}",
        f"data.std={STD}",
        f"data.num_frames={FRAMES}",
        f"data.frame_stride={STRIDE}",
        f"data.test_clips={CLIPS}",
        f"batch_size={args.batch_size}",
        f"num_workers={args.workers}",
        f"device={args.device}",
        "progress=false",
        "video_mean=false",
        output_dir=root / "hydra",
        config_name="extract",
    )


def run_extract(args: argparse.Namespace, root: Path, kind: str, run: int) -> float:
    cfg = extract_config(args, root, kind, run)
    sync(args.device)
    start = time.perf_counter()
    extract(cfg)
    sync(args.device)
    return time.perf_counter() - start


def run_plain(args: argparse.Namespace, root: Path, kind: str, run: int) -> float:
    """The loop one would write by hand around the same datasets."""
    cfg = extract_config(args, root, kind, run)
    device = torch.device(args.device)
    sync(device)
    start = time.perf_counter()
    net = build_net(cfg.model).to(device).eval()
    _, sources = list_sources(root / kind, kind=kind)
    transform = Pipeline(mean=MEAN, std=STD)
    if kind == "images":
        dataset = ImageItems(sources, image_size=args.image_size, transform=transform)
    else:
        dataset = VideoClipDataset(
            [(s.path, 0) for s in sources],
            sampler=ClipSampler(num_frames=FRAMES, frame_stride=STRIDE),
            crop_size=args.image_size,
            train=False,
            num_clips=CLIPS,
            transform=transform,
        )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        collate_fn=lambda samples: torch.stack([s["input"] for s in samples]),
    )
    out = np.empty((len(dataset), net.num_features), np.float32)
    row = 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        for x in loader:
            feats = net.embed(x.to(device, non_blocking=True)).float().cpu().numpy()
            out[row : row + len(feats)] = feats
            row += len(feats)
    target = root / "out" / f"plain_{kind}_{run}.npy"
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, out)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--model", default="lenet", help="a conf/model name (lenet, resnet, ...)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = add_common_args(parser, repeats=3).parse_args()
    device = setup_device(args)
    print(machine(device))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_inputs(root, images=args.images, videos=args.videos, size=args.image_size)
        for kind, count, unit in (("images", args.images, "images"), ("videos", args.videos * CLIPS, "clips")):
            if not count:
                continue
            run_extract(args, root, kind, -1)  # warm-up: file caches, lazy imports, cudnn
            times: dict[str, list[float]] = {"extract": [], "plain": []}
            for r in range(args.repeats):
                times["extract"].append(run_extract(args, root, kind, r))
                times["plain"].append(run_plain(args, root, kind, r))
            ext, plain = statistics.median(times["extract"]), statistics.median(times["plain"])
            print(
                f"{kind}: extract.py {count / ext:.1f} {unit}/s, plain loop {count / plain:.1f} {unit}/s "
                f"({count} {unit}, median of {args.repeats}) ratio={ext / plain:.3f}"
            )


if __name__ == "__main__":
    main()
