"""Feature extraction: ``extract(cfg)`` writes one vector per image, clip or box of an input to a folder.

Flow: the net (from ``ckpt_path``, or built from ``model=<name>``) -> eval preprocessing (the checkpoint's
data and augment.eval config, patched by ``data.<key>=...``) -> the input listing and its plan of rows
(index.csv) -> features.npy preallocated (or reopened to resume) -> batches decoded by loader workers,
embedded, written, progress saved after each -> per-video means (videos) and meta.json.
See docs/extract.md for the formats.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.transforms import Pipeline
from features.inputs import list_sources
from features.plans import Guarded, Plan, Preprocessing, box_plan, collate_items, image_plan, video_plan
from features.store import FeatureStore, write_atomic
from models.roi import roi_head
from runs.checkpoint import load_checkpoint, stored_config
from trainer.build import build_net, net_from_checkpoint

log = logging.getLogger(__name__)
POOLS = ("avg", "max", "none")


def extract(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) an extraction; returns what meta.json records."""
    start_time = time.perf_counter()
    net, stored = load_net(cfg)
    prep = resolve_preprocessing(cfg.data, stored, cfg.without_ckpt)
    kind, sources = list_sources(cfg.input, kind=cfg.kind)
    plan = make_plan(cfg, kind, sources, prep)
    device = resolve_device(cfg.device)
    embedder = (
        Embedder(
            net,
            layer=cfg.layer,
            pool=cfg.pool,
            roi_output_size=cfg.roi.output_size,
            roi_sampling_ratio=cfg.roi.sampling_ratio,
        )
        .to(device)
        .eval()
    )
    dim, map_shape = embedder.probe(plan.sample_shape, boxes=cfg.boxes is not None)
    settings = run_settings(cfg, kind, prep, stored)
    store = FeatureStore.open(cfg.output, plan, dim=dim, dtype=cfg.dtype, settings=settings, resume=cfg.resume)
    log.info(
        "%s: %d %s -> %d rows x %d (%s) in %s; %d rows done",
        cfg.input,
        len(sources),
        kind,
        plan.num_rows,
        dim,
        cfg.dtype,
        cfg.output,
        int(plan.offsets[store.done_items]),
    )
    fill(
        store,
        embedder,
        plan,
        device=device,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        progress=cfg.progress,
        unit="clip" if kind == "videos" else "img",
    )
    store.write_failures()
    if kind == "videos" and cfg.video_mean:
        write_video_means(Path(cfg.output), plan, store.features, clips=prep.test_clips)
    meta = {
        **settings,
        "rows": plan.num_rows,
        "dim": dim,
        "map_shape": map_shape,
        "failures": len(store.state["failures"]),
        "seconds": round(time.perf_counter() - start_time, 3),
    }
    write_atomic(Path(cfg.output) / "meta.json", json.dumps(meta, indent=1, default=str))
    if meta["failures"]:
        log.warning("%d rows could not be read; see %s", meta["failures"], Path(cfg.output) / "failures.csv")
    return meta


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
            raise ValueError("boxes= (ROI features) works on images; for videos leave boxes=null")
        return video_plan(sources, prep, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
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
        "layer": cfg.layer,
        "pool": cfg.pool,
        "boxes": str(Path(cfg.boxes).resolve()) if cfg.boxes is not None else None,
        "roi": OmegaConf.to_container(cfg.roi) if cfg.boxes is not None else None,
        "preprocessing": {**prep_values, "transform": repr(prep.transform)},
    }


# --- embedding ----------------------------------------------------------------------------------------------


class Embedder(nn.Module):
    """One vector per sample (or per box) from a trained net.

    ``layer=None``: ``net.embed``. ``layer=<stage>``: that stage's map (clips on a 2D backbone: the
    frames' maps averaged), pooled ``avg`` / ``max`` over space (and time), or ``none``: the map flattened
    channel-major, ``(C, h, w)`` or ``(C, t, h, w)`` -> ``C*h*w`` (C*t*h*w). With boxes: roi_align (aligned,
    spatial_scale 1/stride) of the stage (default: the last) to ``roi_output_size`` cells per box, pooled
    the same way, one vector per box.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        layer: str | None,
        pool: str,
        roi_output_size: int = 7,
        roi_sampling_ratio: int = 2,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r} is unknown; choose one of {POOLS}")
        if layer is None and pool != "avg":
            raise ValueError(f"pool={pool} needs a named layer (layer=<stage>); embed pools by itself")
        self.net, self.layer, self.pool = net, layer, pool
        backbone = net.backbone
        stage = layer or backbone.stage_names[-1]
        backbone.stage_blocks(stage)  # validates the name against the backbone's stages
        self.stage = stage
        self.roi = roi_head(
            backbone=backbone,
            stage=stage,
            op="align",
            output_size=roi_output_size,
            sampling_ratio=roi_sampling_ratio,
        )

    def stage_map(self, x: Tensor) -> Tensor:
        backbone = self.net.backbone
        if x.ndim == 5 and not backbone.is_3d:
            b, c, t, h, w = x.shape
            frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
            fmap = backbone.forward_stages(frames, [self.stage])[self.stage]  # (B*T, C', h, w)
            return fmap.reshape(b, t, *fmap.shape[1:]).mean(1)  # (B, C', h, w)
        return backbone.forward_stages(x, [self.stage])[self.stage]  # (B, C', [t,] h, w)

    def pooled(self, fmap: Tensor) -> Tensor:
        if self.pool == "avg":
            return fmap.flatten(2).mean(-1)  # (N, C)
        if self.pool == "max":
            return fmap.flatten(2).amax(-1)  # (N, C)
        return fmap.flatten(1)  # (N, C*h*w)

    def forward(self, x: Tensor, boxes: list[Tensor] | None = None) -> Tensor:
        if boxes is not None:
            if x.ndim != 4:
                raise ValueError(f"ROI features need images (B, C, H, W); got {tuple(x.shape)}")
            return self.pooled(self.roi.pool_cells(self.stage_map(x), boxes))  # (R, D)
        if self.layer is None:
            return self.net.embed(x)  # (B, D)
        return self.pooled(self.stage_map(x))  # (B, D)

    @torch.inference_mode()
    def probe(self, sample_shape: tuple[int, ...], *, boxes: bool) -> tuple[int, list[int] | None]:
        """Feature size D of one sample, and the shape of the map a row flattens (pool=none, else None)."""
        device = next(self.parameters()).device
        x = torch.zeros(1, *sample_shape, device=device)
        box = [torch.tensor([[0.0, 0.0, sample_shape[-1], sample_shape[-2]]], device=device)] if boxes else None
        dim = self(x, box).shape[-1]
        if self.pool != "none":
            return int(dim), None
        fmap = self.roi.pool_cells(self.stage_map(x), box) if boxes else self.stage_map(x)
        return int(dim), list(fmap.shape[1:])


# --- the loop -----------------------------------------------------------------------------------------------


def fill(
    store: FeatureStore,
    embedder: Embedder,
    plan: Plan,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    progress: bool,
    unit: str,
) -> None:
    """Decode, embed and write the items not done yet, saving progress after every batch.

    Batches start at multiples of ``batch_size`` whether or not a run was resumed, so a resumed run computes
    exactly the batches an uninterrupted one would (same batch size: byte-identical features).
    """
    if store.complete:
        log.info("%s is complete; nothing to do", store.out)
        return
    loader = DataLoader(
        Guarded(plan.dataset, start=store.done_items),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_items,
        pin_memory=device.type == "cuda",
    )
    with (
        tqdm(
            total=plan.num_items,
            initial=store.done_items,
            unit=unit,
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
        torch.inference_mode(),
    ):
        try:
            for batch in loader:
                feats = np.zeros((0, store.features.shape[1]), np.float32)
                if batch["input"] is not None:
                    x = batch["input"].to(device, non_blocking=True)
                    boxes = [b.to(device) for b in batch["boxes"]] if "boxes" in batch else None
                    feats = embedder(x, boxes).float().cpu().numpy()  # (R, D)
                store.write(batch["items"], feats, batch["errors"], batch["end"])
                bar.update(len(batch["items"]) + len(batch["errors"]))
        except KeyboardInterrupt:
            log.warning(
                "interrupted after %d of %d items; rerun the same command to resume",
                store.done_items,
                plan.num_items,
            )
            raise


def write_video_means(out: Path, plan: Plan, features: np.ndarray, *, clips: int, chunk: int = 1024) -> Path:
    """``out/video_mean/``: one row per video, the mean of its clip rows (NaN for a video that failed); a
    feature set of its own (features.npy + index.csv) that ``features.knn`` scores like any other."""
    mean_dir = out / "video_mean"
    mean_dir.mkdir(exist_ok=True)
    num_videos = plan.num_rows // clips
    means = np.lib.format.open_memmap(
        mean_dir / "features.npy", mode="w+", dtype=features.dtype, shape=(num_videos, features.shape[1])
    )
    for v in range(0, num_videos, chunk):
        block = np.asarray(features[v * clips : (v + chunk) * clips], dtype=np.float32)
        means[v : v + chunk] = block.reshape(-1, clips, features.shape[1]).mean(1).astype(features.dtype)
    means.flush()
    buf = StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "path", "label", "clips"])
    for v in range(num_videos):
        first = plan.index[v * clips]
        writer.writerow([v, first["path"], first["label"], clips])
    write_atomic(mean_dir / "index.csv", buf.getvalue())
    return mean_dir
