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

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from data.transforms import Pipeline
from data.video.lists import VIDEO_EXTENSIONS
from features.dense import window_spec
from features.embed import POOLED, POOLS, Embedder
from features.inputs import list_sources
from features.modes import MODES
from features.plans import (
    Preprocessing,
    Reading,
)
from features.shards import parse_shard, shard_dir
from features.splits import is_dataset, split_plan
from features.store import write_atomic
from nets.build import build_net, net_from_checkpoint
from nets.stored import load_checkpoint, stored_config
from runs.inference_info import InferenceInfo, inference_info
from runs.lock import lock_dir

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "32", "16")


def extract(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) an extraction; returns what meta.json records (of the first layer's store). The output
    (each shard apart, under ``shard``) is locked while this process writes it: a second extraction into it
    fails at once, naming this one (runs/lock.py)."""
    shard = None if cfg.merge else parse_shard(cfg.shard)
    # A shard's lock sits in <output>/.locks/<i>-of-<n>: with several layers the stores (and their shard folders)
    # are <output>/<layer>/, and a shard-<i>-of-<n> folder at the top would read as an unfinished shard to the merge.
    folder = Path(cfg.output) if shard is None else Path(cfg.output) / ".locks" / f"{shard[0]}-of-{shard[1]}"
    with lock_dir(folder, key="output"):
        return extract_locked(cfg)


def extract_locked(cfg: DictConfig) -> dict[str, Any]:
    if cfg.merge:
        from features.merge import merge_output

        return merge_output(cfg.output)[0]
    start_time = time.perf_counter()
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode!r} is unknown; choose one of {tuple(MODES)}")
    net, stored, info = load_net(cfg)
    if is_dataset(cfg.data):  # data=<group> split=<split>: the DataModule lists, decodes and transforms
        if cfg.boxes is not None:
            raise ValueError("boxes= names boxes of raw files: give input=<folder or file list> with it, not data=")
        kind, plan, clips, common = split_plan(cfg.data, cfg.split, stored)
        common = {**common, **net_settings(cfg, stored)}
        reading = Reading(kind, f"{cfg.data._target_} split={cfg.split}", plan=plan, clips=clips)
    else:
        if cfg.input is None:
            raise ValueError("give input=<folder or file list>, or data=<group> split=train|val|test")
        prep = resolve_preprocessing(cfg.data, stored, cfg.without_ckpt, info)
        kind, sources = list_sources(cfg.input, kind=cfg.kind)
        check_inputs_fit(kind, stored.get("data") or {}, cfg)
        common = run_settings(cfg, kind, prep, stored)
        reading = Reading(kind, str(cfg.input), sources=sources, prep=prep, clips=prep.test_clips)
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
    settings = {layer: {**common, "layer": layer, "pool": embedder.pools[layer]} for layer in layers}
    out = Path(cfg.output)
    dirs = {layer: out / layer if cfg.layers is not None else out for layer in layers}
    half = use_half(cfg.precision, device)
    metas = MODES[cfg.mode].extract(cfg, reading, embedder, settings, dirs, shard=shard, device=device, half=half)
    seconds = round(time.perf_counter() - start_time, 3)
    for layer, meta in metas.items():
        meta.update(seconds=seconds, video_mean=bool(cfg.video_mean), layers=layers)
        write_atomic(shard_dir(dirs[layer], shard) / "meta.json", json.dumps(meta, indent=1, default=str))
    first = metas[layers[0]]
    if first["failures"]:
        log.warning("%d rows could not be read; see failures.csv in %s", first["failures"], out)
    return first


def check_inputs_fit(kind: str, data: dict[str, Any], cfg: DictConfig) -> None:
    """A checkpoint trained on clips (its data config has ``num_frames``) cannot embed single images."""
    if kind == "images" and data.get("num_frames"):
        raise ValueError(
            f"{cfg.ckpt_path} holds a video model: it takes clips of {data['num_frames']} frames (trained on "
            f"{data.get('_target_')}), and input={cfg.input} holds images. Give it videos: a folder of videos or a "
            f"file list of them ({', '.join(sorted(VIDEO_EXTENSIONS))})."
        )


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


def load_net(cfg: DictConfig) -> tuple[nn.Module, dict[str, Any], InferenceInfo | None]:
    """The net, the run config it was trained with ({} for a net built from ``model=<name>``) and the
    checkpoint's inference values (None without a checkpoint)."""
    if cfg.get("ckpt_path"):
        return checkpoint_net(cfg.ckpt_path)
    if "_target_" not in cfg.model:
        raise ValueError(
            "give ckpt_path=<checkpoint> or model=<name> (e.g. model=resnet model.pretrained=IMAGENET1K_V1)"
        )
    return build_net(cfg.model), {}, None


def checkpoint_net(path: str | Path) -> tuple[nn.Module, dict[str, Any], InferenceInfo]:
    """A checkpoint's net (eval preprocessing built from its ``augment.eval``), its run config and inference
    values. Its data config is read as plain values (sizes, clips), never built: inference reads the files it is
    given, not the training data; so are its module options (``module.tta``)."""
    ckpt = load_checkpoint(path)
    stored = stored_config(ckpt, path, parts=("model", "augment"))
    run_config = ckpt["hyper_parameters"]["config"]
    stored.update(data=run_config.get("data") or {}, module=run_config.get("module") or {})
    return net_from_checkpoint(ckpt, path), stored, inference_info(ckpt, path)


def resolve_preprocessing(
    given: DictConfig, stored: dict[str, Any], fallback: DictConfig, info: InferenceInfo | None = None
) -> Preprocessing:
    """Each setting from ``data.<key>`` when given, else the checkpoint's input shape (``info``) and data config,
    else ``without_ckpt``.

    A checkpoint that records no input shape and whose data config names no image size (CIFAR-10 checkpoints
    written before checkpoints recorded it) needs ``data.image_size``.
    """
    data = dict(stored.get("data", {}))
    shape = info.input_shape if info is not None else None
    if shape is not None:  # what the net saw in evaluation: (C, H, W) or (C, T, H, W)
        size_key = "crop_size" if len(shape) == 4 else "image_size"
        data.update({size_key: shape[-1], **({"num_frames": shape[1]} if len(shape) == 4 else {})})
    if info is not None and info.mean is not None and info.std is not None:
        data.update(mean=info.mean, std=info.std)

    def pick(key: str) -> Any:
        for source in (given, data, {} if stored else fallback):
            if source.get(key) is not None:
                return source[key]
        return None

    image_size = pick("image_size") or data.get("crop_size")
    if image_size is None:
        raise ValueError(
            f"the checkpoint records no input shape and its data config ({data.get('_target_')}) names no image "
            f"size; set data.image_size=<pixels>"
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
        clip_sampling=str(pick("clip_sampling") or "stride"),
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_settings(cfg: DictConfig, kind: str, prep: Preprocessing, stored: dict[str, Any]) -> dict[str, Any]:
    """What the features of a raw input depend on: a resumed run must have the same (progress.json: their
    fingerprint)."""
    prep_values = {k: v for k, v in vars(prep).items() if k != "transform"}
    return {
        "input": str(Path(cfg.input).resolve()),
        "kind": kind,
        **net_settings(cfg, stored),
        "windows": vars(window_spec(cfg, prep)) if cfg.mode == "dense" else None,
        "boxes": str(Path(cfg.boxes).resolve()) if cfg.boxes is not None else None,
        "roi": OmegaConf.to_container(cfg.roi) if cfg.boxes is not None else None,
        "preprocessing": {**prep_values, "transform": repr(prep.transform)},
    }


def net_settings(cfg: DictConfig, stored: dict[str, Any]) -> dict[str, Any]:
    """The net behind the features: its checkpoint (and when it was written) or its model config."""
    ckpt = Path(cfg.ckpt_path).resolve() if cfg.get("ckpt_path") else None
    return {
        "ckpt_path": str(ckpt) if ckpt else None,
        "ckpt_mtime_ns": ckpt.stat().st_mtime_ns if ckpt else None,
        "model": stored.get("model") if ckpt else OmegaConf.to_container(cfg.model, resolve=True),
        "mode": cfg.mode,
    }
