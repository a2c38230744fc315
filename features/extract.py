"""Feature extraction: ``extract(cfg)`` writes one vector per image, clip, box or video window to a folder.

Flow: the net (from ``ckpt_path``, or built from ``model=<name>``) -> eval preprocessing (the checkpoint's
data and augment.eval config, patched by ``data.<key>=...``) -> the input listing -> the layers to write
(one store each, all from one forward pass) -> this process's part (``shard=<i>/<n>``) ->
``mode=clips``: the plan of rows (index.csv), features.npy preallocated (or reopened to resume), batches decoded
by loader workers, embedded, written, progress saved after each; per-video means (videos) |
``mode=dense``: windows covering each whole video, one ``(windows, D)`` file per video (features/dense.py)
-> meta.json. See docs/extract.md for the formats.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.transforms import Pipeline
from features.dense import DenseStore, WindowSpec, dense_index, fill_dense, npy_path, plan_videos
from features.embed import POOLED, POOLS, Embedder, embed_numpy
from features.inputs import Source, list_sources
from features.plans import (
    Guarded,
    Plan,
    Preprocessing,
    box_plan,
    collate_items,
    image_plan,
    video_box_plan,
    video_plan,
)
from features.shards import batch_items, even_items, parse_shard, shard_dir
from features.store import FeatureStore, write_atomic, write_video_means
from nets.build import build_net, net_from_checkpoint
from nets.stored import load_checkpoint, stored_config

log = logging.getLogger(__name__)
MODES = ("clips", "dense")
PRECISIONS = ("auto", "32", "16")


def extract(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) an extraction; returns what meta.json records (of the first layer's store)."""
    if cfg.merge:
        from features.merge import merge_output

        return merge_output(cfg.output)[0]
    start_time = time.perf_counter()
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode!r} is unknown; choose one of {MODES}")
    net, stored = load_net(cfg)
    prep = resolve_preprocessing(cfg.data, stored, cfg.without_ckpt)
    kind, sources = list_sources(cfg.input, kind=cfg.kind)
    layers, pools = resolve_layers(cfg, net)
    shard = parse_shard(cfg.shard)
    device = resolve_device(cfg.device)
    embedder = Embedder(
        net,
        layers=layers,
        pools=pools,
        roi_output_size=cfg.roi.output_size,
        roi_sampling_ratio=cfg.roi.sampling_ratio,
    )
    embedder = embedder.to(device).eval()
    common = run_settings(cfg, kind, prep, stored)
    settings = {layer: {**common, "layer": layer, "pool": embedder.pools[layer]} for layer in layers}
    out = Path(cfg.output)
    dirs = {layer: out / layer if cfg.layers is not None else out for layer in layers}
    run = extract_dense if cfg.mode == "dense" else extract_rows
    metas = run(cfg, kind, sources, prep, embedder, settings, dirs, shard=shard, device=device)
    seconds = round(time.perf_counter() - start_time, 3)
    for layer, meta in metas.items():
        meta.update(seconds=seconds, video_mean=bool(cfg.video_mean), layers=layers)
        write_atomic(shard_dir(dirs[layer], shard) / "meta.json", json.dumps(meta, indent=1, default=str))
    first = metas[layers[0]]
    if first["failures"]:
        log.warning("%d rows could not be read; see failures.csv in %s", first["failures"], out)
    return first


def extract_rows(
    cfg: DictConfig,
    kind: str,
    sources: list[Source],
    prep: Preprocessing,
    embedder: Embedder,
    settings: dict[str, dict[str, Any]],
    dirs: dict[str, Path],
    *,
    shard: tuple[int, int] | None,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """One row per image, clip or box (``mode=clips``): one FeatureStore per layer."""
    plan = make_plan(cfg, kind, sources, prep)
    shapes = embedder.probe(plan.sample_shape, boxes=cfg.boxes is not None)
    items = batch_items(plan.num_items, cfg.batch_size, shard)
    stores = {
        layer: FeatureStore.open(
            shard_dir(dirs[layer], shard),
            plan,
            dim=shapes[layer][0],
            dtype=cfg.dtype,
            settings=settings[layer],
            resume=cfg.resume,
            items=items,
            shard=shard,
        )
        for layer in embedder.layers
    }
    first = stores[embedder.layers[0]]
    log.info(
        "%s: %d %s -> %d rows (items %d..%d) x %s (%s) in %s; %d items done",
        cfg.input,
        len(sources),
        kind,
        plan.num_rows,
        items.start,
        items.stop,
        {layer: shape[0] for layer, shape in shapes.items()},
        cfg.dtype,
        cfg.output,
        first.done_items - items.start,
    )
    fill(
        stores,
        embedder,
        plan,
        items,
        device=device,
        half=use_half(cfg.precision, device),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        progress=cfg.progress,
        unit="clip" if kind == "videos" else "img",
        desc=shard_desc(shard),
    )
    metas = {}
    for layer, store in stores.items():
        store.write_failures()
        if kind == "videos" and cfg.video_mean and cfg.boxes is None and shard is None:
            write_video_means(store.out, plan.index, store.features, clips=prep.test_clips)
        metas[layer] = {
            **settings[layer],
            "rows": len(store.features),
            "dim": shapes[layer][0],
            "map_shape": shapes[layer][1],
            "failures": len(store.state["failures"]),
        }
    return metas


def extract_dense(
    cfg: DictConfig,
    kind: str,
    sources: list[Source],
    prep: Preprocessing,
    embedder: Embedder,
    settings: dict[str, dict[str, Any]],
    dirs: dict[str, Path],
    *,
    shard: tuple[int, int] | None,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """``mode=dense``: windows covering each video, ``<store>/<video>.npy`` per video and layer."""
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
        half=use_half(cfg.precision, device),
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


def shard_desc(shard: tuple[int, int] | None) -> str | None:
    return None if shard is None else f"shard {shard[0]}/{shard[1]}"


def resolve_layers(cfg: DictConfig, net: nn.Module) -> tuple[list[str], dict[str, str]]:
    """The layers to write (``layers=[...]``: one store each in ``<output>/<layer>/``; else ``layer``) and the
    pooling of each (``pool=<p>`` for every named stage, or ``pool={<stage>: <p>}``)."""
    backbone = net.backbone
    if cfg.layers is not None:
        if cfg.layer is not None:
            raise ValueError(f"layer={cfg.layer} and layers={list(cfg.layers)} are both set; keep one")
        layers = [str(layer) for layer in cfg.layers]
    elif cfg.layer is not None:
        layers = [str(cfg.layer)]
    else:
        # ROI features pool a stage map: without a named layer, the last stage.
        layers = [backbone.stage_names[-1] if cfg.boxes is not None else POOLED]
    pool = cfg.pool
    if isinstance(pool, str):
        if layers == [POOLED]:
            if pool != "avg":
                raise ValueError(f"pool={pool} needs a named layer (layer=<stage>); embed pools by itself")
            return layers, {}
        return layers, {layer: pool for layer in layers if layer != POOLED}
    pools = {str(k): str(v) for k, v in OmegaConf.to_container(pool).items()}
    stray = sorted(set(pools) - set(layers))
    if stray:
        raise ValueError(f"pool names layers {stray} that are not extracted ({layers}); one of {POOLS} per layer")
    return layers, pools


def use_half(precision: str, device: torch.device) -> bool:
    """``precision=auto``: float16 autocast on GPUs, float32 elsewhere; ``16`` / ``32`` force it."""
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; choose one of {PRECISIONS}")
    if precision == "16" and device.type != "cuda":
        raise ValueError(f"precision=16 runs on GPUs; device={device} (use precision=auto or 32)")
    return precision == "16" or (precision == "auto" and device.type == "cuda")


# --- the net and its preprocessing --------------------------------------------------------------------------


def load_net(cfg: DictConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The net and the run config it was trained with ({} for a net built from ``model=<name>``)."""
    if cfg.get("ckpt_path"):
        ckpt = load_checkpoint(cfg.ckpt_path)
        return net_from_checkpoint(ckpt, cfg.ckpt_path), stored_config(ckpt, cfg.ckpt_path)
    if "_target_" not in cfg.model:
        raise ValueError(
            "give ckpt_path=<checkpoint> or model=<name> (e.g. model=resnet model.pretrained=IMAGENET1K_V1)"
        )
    return build_net(cfg.model), {}


def resolve_preprocessing(given: DictConfig, stored: dict[str, Any], fallback: DictConfig) -> Preprocessing:
    """Each setting from ``data.<key>`` when given, else the checkpoint's data config, else ``without_ckpt``.

    A checkpoint without an image size (e.g. CIFAR-10, whose images are 32x32) needs ``data.image_size``.
    """
    data = stored.get("data", {})

    def pick(key: str) -> Any:
        for source in (given, data, {} if stored else fallback):
            if source.get(key) is not None:
                return source[key]
        return None

    image_size = pick("image_size") or data.get("crop_size")
    if image_size is None:
        raise ValueError(
            f"the checkpoint's data config ({data.get('_target_')}) names no image size; set data.image_size=<pixels>"
        )
    crop_size = pick("crop_size") or fallback.crop_size or image_size
    mean, std = pick("mean"), pick("std")
    eval_cfg = stored.get("augment", {}).get("eval")
    if eval_cfg is not None:
        patch = {k: list(v) for k, v in (("mean", given.get("mean")), ("std", given.get("std"))) if v is not None}
        transform = instantiate(eval_cfg, **patch)
    else:
        if mean is None or std is None:
            raise ValueError("set data.mean=[...] and data.std=[...] (per-channel, in [0, 1] units)")
        transform = Pipeline(mean=list(mean), std=list(std))
    return Preprocessing(
        image_size=int(image_size),
        num_frames=int(pick("num_frames") or fallback.num_frames),
        frame_stride=int(pick("frame_stride") or fallback.frame_stride),
        target_fps=pick("target_fps"),
        short_side=int(pick("short_side") or crop_size),
        crop_size=int(crop_size),
        test_clips=int(pick("test_clips") or fallback.test_clips),
        transform=transform,
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_plan(cfg: DictConfig, kind: str, sources: list, prep: Preprocessing) -> Plan:
    if kind == "videos":
        if cfg.boxes is not None:
            return video_box_plan(sources, prep, cfg.boxes, num_workers=cfg.num_workers)
        return video_plan(sources, prep, num_workers=cfg.num_workers)
    if cfg.boxes is not None:
        return box_plan(sources, prep, cfg.boxes)
    return image_plan(sources, prep)


def run_settings(cfg: DictConfig, kind: str, prep: Preprocessing, stored: dict[str, Any]) -> dict[str, Any]:
    """What the features depend on: a resumed run must have the same (progress.json: their fingerprint)."""
    ckpt = Path(cfg.ckpt_path).resolve() if cfg.get("ckpt_path") else None
    model = stored.get("model") if ckpt else OmegaConf.to_container(cfg.model, resolve=True)
    prep_values = {k: v for k, v in vars(prep).items() if k != "transform"}
    return {
        "input": str(Path(cfg.input).resolve()),
        "kind": kind,
        "ckpt_path": str(ckpt) if ckpt else None,
        "ckpt_mtime_ns": ckpt.stat().st_mtime_ns if ckpt else None,
        "model": model,
        "mode": cfg.mode,
        "windows": vars(window_spec(cfg, prep)) if cfg.mode == "dense" else None,
        "boxes": str(Path(cfg.boxes).resolve()) if cfg.boxes is not None else None,
        "roi": OmegaConf.to_container(cfg.roi) if cfg.boxes is not None else None,
        "preprocessing": {**prep_values, "transform": repr(prep.transform)},
    }


# --- the loop -----------------------------------------------------------------------------------------------


def fill(
    stores: dict[str, FeatureStore],
    embedder: Embedder,
    plan: Plan,
    items: range,
    *,
    device: torch.device,
    half: bool,
    batch_size: int,
    num_workers: int,
    progress: bool,
    unit: str,
    desc: str | None = None,
) -> None:
    """Decode, embed and write the ``items`` not done yet, saving progress after every batch.

    Batches start at ``items.start`` plus multiples of ``batch_size`` whether or not a run was resumed (and
    shards start on batch boundaries), so a resumed or sharded run computes exactly the batches an
    uninterrupted single run would (same batch size: byte-identical features). Layer stores resume from
    the one that lags; the others skip the batches they hold.
    """
    start = min(store.done_items for store in stores.values())
    if start >= items.stop:
        log.info("%s is complete; nothing to do", ", ".join(str(s.out) for s in stores.values()))
        return
    loader = DataLoader(
        Guarded(plan.dataset, start=start, stop=items.stop),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_items,
        pin_memory=device.type == "cuda",
    )
    with tqdm(
        total=len(items),
        initial=start - items.start,
        unit=unit,
        disable=not progress,
        dynamic_ncols=True,
        desc=desc,
    ) as bar:
        try:
            for batch in loader:
                feats = {}
                if batch["input"] is not None:
                    feats = embed_numpy(embedder, batch["input"], batch.get("boxes"), device=device, half=half)
                for layer, store in stores.items():
                    empty = np.zeros((0, store.features.shape[1]), np.float32)
                    store.write(batch["items"], feats.get(layer, empty), batch["errors"], batch["end"])
                bar.update(len(batch["items"]) + len(batch["errors"]))
        except KeyboardInterrupt:
            log.warning(
                "interrupted after %d of %d items; rerun the same command to resume",
                min(store.done_items for store in stores.values()) - items.start,
                len(items),
            )
            raise
