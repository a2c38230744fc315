"""Clips per second of one loader worker: seeking to the clip, decoding from the start, decoding everything.

    python -m bench.video_decode [--seconds 10] [--clips 40] [--gop 30 250]

Writes a 320x240, 30 fps H.264 mp4 with an AAC audio track (moving texture, so the encoder does real work),
then draws random 16-frame clips (every 2nd frame, frames resized to a 128-pixel short side, as
``data=video_folder`` does) in one process and one decoder thread, three ways:

    seek        data.video.decode.VideoReader.read: seek to the keyframe before the clip, stop after it
    from start  the same reader with seek=False: decode from frame 0, stop after the clip
    everything  decode every frame of the file, then pick the clip's (what whole-file readers do)

``--gop`` is the keyframe interval of the test file: seeking can only land on keyframes, so it gains most
with short GOPs (phone and web video: ~1 s) and least with x264's default of 250 frames.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from data.video.decode import VideoReader, read_all
from data.video.encode import write_video
from data.video.sampling import ClipSampler


def moving_texture(num_frames: int, height: int = 240, width: int = 320) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 40, (height, width, 1), dtype=np.uint8)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        wave = np.sin((xx + 3 * t) / 17) + np.cos((yy - 2 * t) / 23)
        frames[t] = np.clip(100 + 50 * wave[..., None] + noise + [0, 30, 60], 0, 255)
    return frames


def clip_seek(path: Path, sampler: ClipSampler, rng: np.random.Generator, *, seek: bool) -> np.ndarray:
    with VideoReader(path, short_side=128) as video:
        indices = sampler.random_clip(video.meta.num_frames, video.meta.fps, rng)
        return video.read(indices, seek=seek)


def clip_everything(path: Path, sampler: ClipSampler, rng: np.random.Generator) -> np.ndarray:
    frames = read_all(path, short_side=128)
    return frames[sampler.random_clip(len(frames), 30.0, rng)]


def rate(fn, clips: int) -> float:
    fn()  # warm-up: imports, codec initialisation
    start = time.perf_counter()
    for _ in range(clips):
        fn()
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the test video")
    parser.add_argument("--clips", type=int, default=40, help="clips timed per method")
    parser.add_argument("--gop", type=int, nargs="+", default=[30, 250], help="keyframe intervals to test")
    args = parser.parse_args()
    sampler = ClipSampler(num_frames=16, frame_stride=2)
    frames = moving_texture(int(args.seconds * 30))
    print(
        f"{len(frames)} frames 320x240 30 fps H.264 + AAC; clips of 16 frames every 2nd, short side 128; "
        f"{args.clips} clips per method, one process, one decoder thread"
    )
    print(f"{'gop':>5} {'seek':>10} {'from start':>12} {'everything':>12} {'seek / everything':>19}")
    with tempfile.TemporaryDirectory() as tmp:
        for gop in args.gop:
            path = write_video(Path(tmp) / f"bench_gop{gop}.mp4", frames, fps=30, audio=True, gop=gop, crf=23)
            rng = np.random.default_rng(0)
            seek = rate(partial(clip_seek, path, sampler, rng, seek=True), args.clips)
            start = rate(partial(clip_seek, path, sampler, rng, seek=False), args.clips)
            everything = rate(partial(clip_everything, path, sampler, rng), max(args.clips // 4, 3))
            print(f"{gop:>5} {seek:>8.1f}/s {start:>10.1f}/s {everything:>10.1f}/s {seek / everything:>18.1f}x")


if __name__ == "__main__":
    main()
