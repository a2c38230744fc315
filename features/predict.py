"""Class predictions of a checkpoint: ``predict(cfg)`` prints the top-k classes of each input with their
probabilities and writes them to a CSV.

Flow: the checkpoint's net, eval preprocessing, class names and test-time augmentation (features/extract.py's
``checkpoint_net`` and ``resolve_preprocessing``, runs/inference_info.py, nets/tta.py) -> the input listing of
extract.py (features/inputs.py: one image or video, a folder, a file list) -> batches decoded by loader workers
-> logits (images: under ``tta``; videos: summed over ``test_clips`` x ``test_crops`` views, as eval.py scores
videos) -> softmax -> top-k. An unreadable file gets an ``error`` instead of classes; the others go on.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from features.extract import checkpoint_net, resolve_device, resolve_preprocessing
from features.inputs import Source, list_sources
from features.plans import Guarded, ImageItems, Preprocessing, collate_items
from nets.tta import checkpoint_tta, tta_logits
from runs.atomic import atomic_open

log = logging.getLogger(__name__)

# resolve_preprocessing's last resort for settings an image checkpoint has no use for (a video checkpoint's data
# config names its own clip length, stride and clips).
IMAGE_PLACEHOLDERS = {"num_frames": 1, "frame_stride": 1, "crop_size": None, "test_clips": 1}


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """One record per input: ``path``, ``label`` (from class folders or a list; may be empty), ``top`` [(class,
    probability)] best first, or ``error``. Printed; written to ``output`` (or the run dir's predictions.csv
    for a folder or list)."""
    top_k = int(cfg.top_k)
    if top_k < 1:
        raise ValueError(f"top_k={cfg.top_k} must be a positive number of classes")
    net, stored, info = checkpoint_net(cfg.ckpt_path)
    tta = checkpoint_tta(cfg.tta, stored, clips=info.is_video, ckpt_path=cfg.ckpt_path)
    prep = resolve_preprocessing(cfg.data, stored, OmegaConf.create(IMAGE_PLACEHOLDERS), info)
    kind, sources = list_sources(cfg.input, kind=cfg.kind)
    crops = int(cfg.data.test_crops or stored["data"].get("test_crops") or 1)
    dataset, views = inputs_dataset(kind, sources, prep, crops=crops)
    device = resolve_device(cfg.device)
    net = net.to(device).eval()
    log.info(
        "%s: %d %s, %d view(s) each, tta=%s, on %s", cfg.input, len(sources), kind, views, tta, device
    )  # fmt: skip
    logits, errors = predict_logits(
        net, dataset, views=views, tta=tta, device=device, batch_size=cfg.batch_size,
        num_workers=cfg.num_workers, progress=cfg.progress,
    )  # fmt: skip
    probs = torch.softmax(logits, dim=1)  # (inputs, classes)
    k = min(top_k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    records = []
    for i, source in enumerate(sources):
        record: dict[str, Any] = {"path": source.rel, "label": source.label}
        if i in errors:
            record["error"] = errors[i]
        else:
            top = zip(indices[i].tolist(), values[i].tolist(), strict=True)
            record["top"] = [(info.class_names[c], float(p)) for c, p in top]
        records.append(record)
    for record in records:
        print(format_record(record), flush=True)
    output = cfg.output or (None if len(sources) == 1 else str(Path(cfg.paths.output_dir) / "predictions.csv"))
    if output:
        write_csv(Path(output), records, k)
        log.info("predictions of %d %s: %s", len(records), kind, output)
    return records


def inputs_dataset(kind: str, sources: list[Source], prep: Preprocessing, *, crops: int) -> tuple[Dataset, int]:
    """The decoded inputs and the views per input: images one each (TTA happens on the batch); videos
    ``test_clips`` x ``crops`` views each, in order, as eval.py tests them."""
    if kind == "images":
        return ImageItems(sources, image_size=prep.image_size, transform=prep.transform), 1
    dataset = prep.clip_dataset([s.path for s in sources], crops=crops)
    return dataset, dataset.views_per_video


def predict_logits(
    net: torch.nn.Module,
    dataset: Dataset,
    *,
    views: int,
    tta: str,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> tuple[torch.Tensor, dict[int, str]]:
    """``(inputs, classes)`` logits, each input's views summed, and {input: error} of the unreadable ones."""
    inputs = len(dataset) // views
    summed = torch.zeros(inputs, net.num_classes)
    errors: dict[int, str] = {}
    loader = DataLoader(
        Guarded(dataset),
        batch_size=int(batch_size),
        num_workers=int(num_workers),
        collate_fn=collate_items,
        pin_memory=device.type == "cuda",
    )
    with torch.no_grad(), tqdm(total=len(dataset), disable=not progress, dynamic_ncols=True, unit="view") as bar:
        for batch in loader:
            for item, message in batch["errors"]:
                errors.setdefault(item // views, message)
            if batch["input"] is not None:
                logits = tta_logits(net, batch["input"].to(device), tta).float().cpu()  # (B, classes)
                owners = torch.tensor(batch["items"]) // views  # (B,) the input each view belongs to
                summed.index_add_(0, owners, logits)
            bar.update(len(batch["items"]) + len(batch["errors"]))
    return summed / views, errors


def format_record(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"{record['path']}: unreadable ({record['error']})"
    return f"{record['path']}: " + ", ".join(f"{name} {p:.3f}" for name, p in record["top"])


def write_csv(path: Path, records: list[dict[str, Any]], k: int) -> None:
    """``path,label,class_1,prob_1,...,class_k,prob_k,error`` per input, written atomically."""
    columns = ["path", "label", *(f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "prob")), "error"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for r in records:
            top = [v for name, p in r.get("top", []) for v in (name, f"{p:.6f}")]
            writer.writerow([r["path"], r["label"], *top, *[""] * (2 * k - len(top)), r.get("error", "")])
