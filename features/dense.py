"""Dense video features (``mode=dense``): each whole video covered by windows of ``stack`` frames, one row each.

Flow: probe every video by demuxing its packets (no decoding): the presentation time of every frame ->
[resample to ``fps``: at each instant k/fps the frame on screen] -> windows of ``stack`` consecutive
(resampled) frames starting every ``step`` -> index.csv -> per video, chunks of at most ``batch_size`` windows
decoded by loader workers (each chunk decodes the stretch of the file its windows span, once per frame) ->
embedded -> when a video's last chunk is in: ``<output>/<path of the video without its extension>.npy``
``(windows, D)`` written atomically (one file per layer store). A rerun skips videos whose files exist.

Windows: a sequence of m frames gives ``max(1, (m - stack) // step + 1)`` full windows starting at
``0, step, 2*step, ...``; ``keep_partial=true`` adds one last window starting at the next start when that start
is still inside the video (the frames not yet covered at the end, when step <= stack). A window shorter than
``stack`` (that partial window, or the only window of a video shorter than ``stack``) is padded by repeating
its last frame; index.csv's ``frames`` column says how many frames are real.

Times come from the frames' presentation timestamps, not from a nominal frame rate, so variable-frame-rate
files get true seconds: ``start_s`` is when the window's first frame is shown (seconds from the first frame),
``end_s`` when its last real frame ends (the next frame's time; for the last frame, its packet's duration).
With ``fps`` the windows are made of resampled instants k/fps, and ``start_s`` / ``end_s`` are the first
instant and one instant past the last; ``start_frame`` / ``end_frame`` are always source frame numbers
(decode order, from 0).
"""

from __future__ import annotations

import bisect
import csv
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.video.decode import VideoReadError
from features.embed import Embedder, embed_numpy
from features.inputs import Source
from features.plans import Guarded, Preprocessing, Reading, probe_loader
from features.shards import even_items, shard_desc, shard_dir
from features.store import DTYPES, fingerprint, resumed_state, write_atomic
from runs.atomic import atomic_open

log = logging.getLogger(__name__)
COLUMNS = ["row", "path", "label", "window", "frames", "start_frame", "end_frame", "start_s", "end_s"]


@dataclass(frozen=True)
class FrameTimes:
    """Every frame of a video in presentation order."""

    pts: np.ndarray  # (n,) int64, in the stream's time base
    seconds: np.ndarray  # (n,) float64, from the first frame
    end: float  # when the last frame stops being shown, in the same seconds


def probe_frames(path: str | Path) -> FrameTimes:
    """Timestamps of every video packet (demuxed, not decoded), sorted into presentation order."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path} has no video stream")
            stream = container.streams.video[0]
            packets = [(p.pts, p.duration) for p in container.demux(stream) if p.size]
            time_base, rate = stream.time_base, stream.average_rate or stream.guessed_rate
    except av.error.FFmpegError as err:
        raise VideoReadError(f"cannot read video {path}: {err}") from err
    except OSError as err:
        raise VideoReadError(f"cannot open video {path}: {err}") from err
    if not packets:
        raise VideoReadError(f"{path} has no video frames")
    if any(pts is None for pts, _ in packets):
        raise VideoReadError(f"{path}: frames without timestamps; dense extraction needs them (remux the file)")
    packets.sort()
    pts = np.array([p for p, _ in packets], dtype=np.int64)
    seconds = np.array([float((p - pts[0]) * time_base) for p in pts])
    last_duration = float(packets[-1][1] * time_base) if packets[-1][1] else (1 / float(rate) if rate else 0.0)
    return FrameTimes(pts, seconds, float(seconds[-1] + last_duration))


@dataclass(frozen=True)
class Window:
    frames: np.ndarray  # (stack,) source frame numbers; a short window repeats its last frame
    real: int  # frames before the padding
    start_s: float
    end_s: float


@dataclass(frozen=True)
class WindowSpec:
    """Windows of ``stack`` frames every ``step`` frames, after resampling to ``fps`` (None: every frame)."""

    stack: int
    step: int
    fps: float | None = None
    keep_partial: bool = False

    def __post_init__(self) -> None:
        if self.stack < 1 or self.step < 1:
            raise ValueError(f"stack={self.stack} and step={self.step} must be positive numbers of frames")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps={self.fps} must be positive (or null to keep every frame)")

    def windows(self, times: FrameTimes) -> list[Window]:
        n = len(times.seconds)
        if self.fps is None:
            seq = np.arange(n)
            shown = times.seconds
            ends = np.append(times.seconds[1:], times.end)
        else:
            count = max(1, int(np.ceil(times.end * self.fps - 1e-9)))  # instants k/fps before the end
            shown = np.arange(count) / self.fps
            # The frame on screen at each instant: the last one shown at or before it.
            seq = np.clip(np.searchsorted(times.seconds, shown + 1e-9, side="right") - 1, 0, n - 1)
            ends = np.minimum(np.arange(1, count + 1) / self.fps, times.end)
        m = len(seq)
        full = max(1, (m - self.stack) // self.step + 1)
        starts = [w * self.step for w in range(full)]
        if self.keep_partial and m >= self.stack and full * self.step < m:
            starts.append(full * self.step)
        out = []
        for s in starts:
            sel = seq[s : s + self.stack]
            real = len(sel)
            frames = np.concatenate([sel, np.full(self.stack - real, sel[-1])])  # (stack,)
            out.append(Window(frames.astype(np.int64), real, float(shown[s]), float(ends[s + real - 1])))
        return out


def npy_path(out: Path, rel: str) -> Path:
    """``<out>/<rel without its extension>.npy``; an absolute listed path loses its root, so every file stays
    inside ``out``."""
    path = Path(rel)
    if path.is_absolute():
        path = path.relative_to(path.anchor)
    if ".." in path.parts:
        raise ValueError(
            f"{rel}: mode=dense writes each video's features at <output>/<its listed path>.npy, which must not "
            "climb out of the output folder ('..'); list the videos by paths below the list's folder, or absolute"
        )
    return out / path.with_suffix(".npy")


# --- reading ------------------------------------------------------------------------------------------------


def decode_frames(path: str | Path, pts: np.ndarray, wanted: list[int], *, short_side: int) -> dict[int, np.ndarray]:
    """Frames number ``wanted`` (sorted, unique) as ``{number: (H, W, 3) uint8}``, short side resized;
    decodes from the keyframe before the first one to the last one. A frame the decoder does not return
    takes the nearest earlier decoded one (the first decoded one when none is earlier)."""
    number = {int(p): i for i, p in enumerate(pts)}
    first, last = wanted[0], wanted[-1]
    wanted_set = set(wanted)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1  # loader workers already decode in parallel
            scale = short_side / min(stream.width, stream.height)
            size = {"width": max(1, round(stream.width * scale)), "height": max(1, round(stream.height * scale))}
            for seek_to in [first, 0] if first > 0 else [0]:
                if seek_to:
                    container.seek(int(pts[seek_to]), stream=stream, backward=True, any_frame=False)
                elif first > 0:  # the seek landed past the first wanted frame: from the start
                    container.seek(int(pts[0]), stream=stream, backward=True, any_frame=False)
                got: dict[int, np.ndarray] = {}
                overshot = False
                for n, frame in enumerate(container.decode(stream)):
                    i = number.get(frame.pts)
                    if i is None:
                        continue
                    if n == 0 and i > first:
                        overshot = True
                        break
                    if i > last:
                        break
                    if i in wanted_set:
                        got[i] = frame.to_ndarray(format="rgb24", **size)
                if not overshot:
                    break
    except av.error.FFmpegError as err:
        raise VideoReadError(f"cannot decode video {path}: {err}") from err
    if not got:
        raise VideoReadError(f"{path}: no frame decoded for frames {first}..{last}")
    have = sorted(got)
    return {i: got[have[max(bisect.bisect_right(have, i) - 1, 0)]] for i in wanted}


@dataclass(frozen=True)
class DenseVideo:
    item: int  # its place in the input listing
    source: Source
    pts: np.ndarray
    windows: list[Window]


class ProbeFrames(Dataset):
    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"times": probe_frames(self.sources[i].path)}


class WindowChunks(Dataset):
    """Chunks of at most ``chunk`` windows of each video: ``{"video", "last", "input": (W, C, T, S, S)}``,
    frames resized (short side ``short_side``), centre-cropped to ``crop_size`` and normalised by
    ``transform``, as clips are in evaluation."""

    def __init__(
        self,
        videos: list[DenseVideo],
        *,
        chunk: int,
        short_side: int,
        crop_size: int,
        transform: Callable[[np.ndarray], torch.Tensor],
    ) -> None:
        self.videos, self.short_side, self.crop_size, self.transform = videos, short_side, crop_size, transform
        self.chunks = [
            (v, lo, min(lo + chunk, len(video.windows)))
            for v, video in enumerate(videos)
            for lo in range(0, len(video.windows), chunk)
        ]

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, lo, hi = self.chunks[i]
        video = self.videos[v]
        windows = video.windows[lo:hi]
        wanted = sorted({int(f) for w in windows for f in w.frames})
        frames = decode_frames(video.source.path, video.pts, wanted, short_side=self.short_side)
        h, w = next(iter(frames.values())).shape[:2]
        y, x, s = (h - self.crop_size) // 2, (w - self.crop_size) // 2, self.crop_size
        crops = {i: f[y : y + s, x : x + s] for i, f in frames.items()}
        clips = [self.transform(np.stack([crops[int(f)] for f in win.frames])) for win in windows]
        return {"video": v, "last": hi == len(video.windows), "windows": hi - lo, "input": torch.stack(clips)}


# --- the store ----------------------------------------------------------------------------------------------


class DenseStore:
    """One layer's dense output: ``<out>/<video>.npy`` per video, and index.csv / failures.csv /
    progress.json in ``meta_dir`` (``out``, or a shard's folder)."""

    def __init__(self, out: Path, meta_dir: Path, state: dict[str, Any]) -> None:
        self.out, self.meta_dir, self.state = out, meta_dir, state

    @classmethod
    def open(
        cls,
        out: Path,
        *,
        meta_dir: Path,
        index: str,
        videos: list[DenseVideo],
        failures: list[dict[str, Any]],
        settings: dict[str, Any],
        dim: int,
        dtype: str,
        shard: tuple[int, int] | None,
        resume: bool,
    ) -> DenseStore:
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(DTYPES)}")
        meta_dir.mkdir(parents=True, exist_ok=True)
        shard_info = {"shard": list(shard), "dim": dim, "dtype": dtype} if shard else {}
        key = fingerprint({**settings, "dim": dim, "dtype": dtype, **shard_info}, index)
        progress = meta_dir / "progress.json"
        if resume and progress.is_file():
            return cls(out, meta_dir, resumed_state(progress, key))
        for video in videos:
            npy_path(out, video.source.rel).unlink(missing_ok=True)
        write_atomic(meta_dir / "index.csv", index)
        state = {"fingerprint": key, "settings": settings, "failures": failures}
        if shard:
            state["shard"] = shard_info
        store = cls(out, meta_dir, state)
        store.save()
        return store

    def done(self, video: DenseVideo) -> bool:
        return npy_path(self.out, video.source.rel).is_file() or any(
            f["item"] == video.item for f in self.state["failures"]
        )

    def write(self, video: DenseVideo, feats: np.ndarray, dtype: str) -> None:
        with atomic_open(npy_path(self.out, video.source.rel), "wb") as f:
            np.save(f, feats.astype(DTYPES[dtype], copy=False))

    def fail(self, video: DenseVideo, message: str) -> None:
        self.state["failures"].append({"item": video.item, "path": video.source.rel, "error": message})
        self.save()

    def save(self) -> None:
        self.state["failures"].sort(key=lambda f: f["item"])  # listing order, however the work was split
        write_atomic(self.meta_dir / "failures.csv", failures_text(self.state["failures"]))
        write_atomic(self.meta_dir / "progress.json", json.dumps(self.state, indent=1))


def failures_text(failures: list[dict[str, Any]]) -> str:
    buf = StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "error"], lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(failures)
    return buf.getvalue()


def dense_index(videos: list[DenseVideo]) -> str:
    """index.csv: one row per window, video-major (rows numbered from 0 within ``videos``)."""
    buf = StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    row = 0
    for video in videos:
        for w, win in enumerate(video.windows):
            writer.writerow(
                [
                    row,
                    video.source.rel,
                    video.source.label,
                    w,
                    win.real,
                    int(win.frames[0]),
                    int(win.frames[win.real - 1]),
                    round(win.start_s, 6),
                    round(win.end_s, 6),
                ]
            )
            row += 1
    return buf.getvalue()


# --- the run ------------------------------------------------------------------------------------------------


def plan_videos(
    sources: list[Source], items: range, spec: WindowSpec, *, num_workers: int
) -> tuple[list[DenseVideo], list[dict[str, Any]]]:
    """The windows of the videos ``items`` of ``sources``, and the videos that could not be probed."""
    part = sources[items.start : items.stop]
    probes = probe_loader(ProbeFrames(part), num_workers=num_workers)
    videos, failures = [], []
    for probe in (p for batch in probes for p in batch):
        item = items.start + probe["item"]
        source = sources[item]
        if "error" in probe:
            failures.append({"item": item, "path": source.rel, "error": probe["error"]})
            continue
        times = probe["times"]
        videos.append(DenseVideo(item, source, times.pts, spec.windows(times)))
    return videos, failures


def fill_dense(
    stores: dict[str, DenseStore],
    embedder: Embedder,
    videos: list[DenseVideo],
    *,
    dataset_args: dict[str, Any],
    dtype: str,
    device: torch.device,
    half: bool,
    num_workers: int,
    progress: bool,
    desc: str | None,
) -> None:
    """Embed the windows of every video some store still lacks; each video's files once all its chunks
    are in (a resumed run recomputes the unfinished videos from their first chunk: the same batches)."""
    todo = [v for v in videos if not all(store.done(v) for store in stores.values())]
    if not todo:
        log.info("every video is done; nothing to do")
        return
    loader = DataLoader(
        Guarded(WindowChunks(todo, **dataset_args)),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    pending: dict[str, list[np.ndarray]] = {layer: [] for layer in stores}
    failed: set[int] = set()
    total = sum(len(v.windows) for v in todo)
    with tqdm(total=total, unit="window", disable=not progress, dynamic_ncols=True, desc=desc) as bar:
        for chunk in loader:
            if "error" in chunk:
                # A failed chunk fails its video; Guarded numbers chunks, so find the video through them.
                v = loader.dataset.dataset.chunks[chunk["item"]][0]
                if v not in failed:
                    failed.add(v)
                    for store in stores.values():
                        store.fail(todo[v], chunk["error"])
                    pending = {layer: [] for layer in stores}
                continue
            v = chunk["video"]
            bar.update(chunk["windows"])
            if v in failed:
                continue
            feats = embed_numpy(embedder, chunk["input"], None, device=device, half=half)
            for layer, f in feats.items():
                pending[layer].append(f)
            if chunk["last"]:
                for layer, store in stores.items():
                    store.write(todo[v], np.concatenate(pending[layer]), dtype)
                pending = {layer: [] for layer in stores}


# --- the mode's parts (features/modes.py) ----------------------------------------------------------------


def extract_dense(
    cfg: DictConfig,
    reading: Reading,
    embedder: Embedder,
    settings: dict[str, dict[str, Any]],
    dirs: dict[str, Path],
    *,
    shard: tuple[int, int] | None,
    device: torch.device,
    half: bool,
) -> dict[str, dict[str, Any]]:
    """Windows covering each video, ``<store>/<video>.npy`` per video and layer."""
    kind, sources, prep = reading.kind, reading.sources, reading.prep
    if kind != "videos":
        raise ValueError(f"mode=dense covers videos with windows; {cfg.input} holds {kind} (use mode=clips)")
    if cfg.boxes is not None:
        raise ValueError("boxes= (ROI tubes) gives one vector per box per clip: use mode=clips with boxes")
    spec = window_spec(cfg, prep)
    check_unique_outputs(sources)
    items = even_items(len(sources), shard)
    videos, failures = plan_videos(sources, items, spec, num_workers=cfg.num_workers)
    index = dense_index(videos)
    shapes = embedder.probe((3, spec.stack, prep.crop_size, prep.crop_size), boxes=False)
    stores = {
        layer: DenseStore.open(
            dirs[layer],
            meta_dir=shard_dir(dirs[layer], shard),
            index=index,
            videos=videos,
            failures=[dict(f) for f in failures],
            settings=settings[layer],
            dim=shapes[layer][0],
            dtype=cfg.dtype,
            shard=shard,
            resume=cfg.resume,
        )
        for layer in embedder.layers
    }
    windows = sum(len(v.windows) for v in videos)
    log.info(
        "%s: %d videos -> %d windows of %d frames every %d", cfg.input, len(videos), windows, spec.stack, spec.step
    )
    fill_dense(
        stores,
        embedder,
        videos,
        dataset_args={
            "chunk": cfg.batch_size,
            "short_side": prep.short_side,
            "crop_size": prep.crop_size,
            "transform": prep.transform,
        },
        dtype=cfg.dtype,
        device=device,
        half=half,
        num_workers=cfg.num_workers,
        progress=cfg.progress,
        desc=shard_desc(shard),
    )
    return {
        layer: {
            **settings[layer],
            "rows": windows,
            "videos": len(videos),
            "dim": shapes[layer][0],
            "map_shape": shapes[layer][1],
            "failures": len(store.state["failures"]),
        }
        for layer, store in stores.items()
    }


def window_spec(cfg: DictConfig, prep: Preprocessing) -> WindowSpec:
    """``stack`` defaults to the net's clip length (``data.num_frames``), ``step`` to ``stack`` (no overlap)."""
    stack = int(cfg.stack) if cfg.stack is not None else prep.num_frames
    step = int(cfg.step) if cfg.step is not None else stack
    return WindowSpec(stack=stack, step=step, fps=cfg.fps, keep_partial=bool(cfg.keep_partial))


def check_unique_outputs(sources: list[Source]) -> None:
    seen: dict[Path, str] = {}
    for s in sources:
        target = npy_path(Path(), s.rel)
        if target in seen:
            raise ValueError(
                f"{seen[target]} and {s.rel} would both write {target}; rename one (mode=dense names each "
                "video's file by its path without the extension)"
            )
        seen[target] = s.rel


def merge_dense(store: Path, shards: list[dict[str, Any]], index: str, state: dict[str, Any]) -> dict[str, Any]:
    """The shards wrote their videos' files into ``store`` itself: every one must be there."""
    rows = list(csv.DictReader(StringIO(index)))
    absent = [r["path"] for r in rows if not npy_path(store, r["path"]).is_file()]
    if absent:
        raise ValueError(f"{store}: {absent[0]} has no features file; rerun its shard to finish it")
    state = {**state, "failures": sorted(state["failures"], key=lambda f: f["item"])}
    write_atomic(store / "failures.csv", failures_text(state["failures"]))
    return state


def dense_features(folder: Path, index: list[dict[str, str]]) -> np.ndarray:
    """The windows of a dense extraction's per-video files, stacked in index order; the windows of a video
    that failed to decode (failures.csv) are NaN."""
    failed = set()
    if (folder / "failures.csv").is_file():
        with (folder / "failures.csv").open(newline="") as f:
            failed = {r["path"] for r in csv.DictReader(f)}
    windows = Counter(r["path"] for r in index)
    blocks, dim = [], None
    for path, count in windows.items():
        file = npy_path(folder, path)
        if file.is_file():
            blocks.append(np.load(file))
            dim = blocks[-1].shape[1]
        elif path in failed:
            blocks.append(count)
        else:
            raise FileNotFoundError(f"{file} not found: the dense extraction is unfinished (rerun it to resume)")
    if dim is None:
        raise ValueError(f"{folder}: every video failed; see failures.csv")
    return np.concatenate([np.full((b, dim), np.nan, np.float32) if isinstance(b, int) else b for b in blocks])
