"""``Embedder``: vectors of several layers of a trained net from one forward pass.

Flow of ``forward(x, boxes)`` -> ``{layer: (N, D)}``:

    "pooled" asked   net.embed(x) runs once; forward hooks catch the maps of the named stages on the way
                     (a stage the embedding never computes, e.g. past a fusion neck's inputs, costs one more
                     backbone pass that stops at it)
    otherwise        backbone.forward_stages(x, stages): one pass that stops after the deepest stage asked
    per stage        clips on a 2D backbone are folded into frames; the map is pooled by the layer's pool:
                     avg | max over space (and time; a 2D net's frames are averaged first), or none: flattened
                     channel-major ``(C, [t,] h, w) -> C*[t*]h*w``
    with boxes       roi_align (aligned, spatial_scale 1/stride) of each stage to ``roi_output_size`` cells per
                     box, then the layer's pool: one vector per box. Clips: the boxes of each frame (or time
                     slice of a 3D map) pool that slice, and a box's cells are averaged over the slices, so a
                     track (K, T, 4) follows its object through the clip (a tube).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from models.roi import boxes_per_frame, roi_head

POOLS = ("avg", "max", "none")
POOLED = "pooled"  # the layer name of the net's own embedding (net.embed)


class Embedder(nn.Module):
    """Features of ``layers`` (stage names, or ``pooled`` for ``net.embed``), each pooled by ``pools[layer]``."""

    def __init__(
        self,
        net: nn.Module,
        *,
        layers: list[str],
        pools: Mapping[str, str],
        roi_output_size: int = 7,
        roi_sampling_ratio: int = 2,
    ) -> None:
        super().__init__()
        if not layers or len(set(layers)) != len(layers):
            raise ValueError(f"layers={layers} must name at least one layer, each once")
        backbone = net.backbone
        for layer in layers:
            if layer != POOLED:
                backbone.stage_blocks(layer)  # validates the name against the backbone's stages
            pool = pools.get(layer, "avg")
            if pool not in POOLS:
                raise ValueError(f"pool={pool!r} (layer {layer}) is unknown; choose one of {POOLS}")
            if layer == POOLED and pool != "avg":
                raise ValueError(f"pool={pool} needs a named stage (e.g. layer3); the net's embedding pools itself")
        self.net, self.layers = net, list(layers)
        self.pools = {layer: pools.get(layer, "avg") for layer in layers}
        self.stages = [layer for layer in layers if layer != POOLED]
        self.rois = nn.ModuleDict(
            {
                s: roi_head(
                    backbone=backbone,
                    stage=s,
                    op="align",
                    output_size=roi_output_size,
                    sampling_ratio=roi_sampling_ratio,
                )
                for s in self.stages
            }
        )

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone

    def _folds(self, x: Tensor) -> bool:
        return x.ndim == 5 and not self.backbone.is_3d

    def _stage_maps(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """Maps of the named stages (folded clips: ``(B*T, C, h, w)``) and ``net.embed`` when asked."""
        embedding, maps = None, {}
        if POOLED in self.layers:
            with self._capture(self.stages) as maps:
                embedding = self.net.embed(x)  # (B, D)
        missing = [s for s in self.stages if s not in maps]
        if missing:
            frames = x.transpose(1, 2).flatten(0, 1) if self._folds(x) else x  # (B*T, C, H, W) for 2D clips
            maps.update(self.backbone.forward_stages(frames, missing))
        return maps, embedding

    @contextmanager
    def _capture(self, stages: list[str]) -> Iterator[dict[str, Tensor]]:
        """Records each stage's output while the net runs: the output of its last block, or of the module
        inserted after that block (forward_stages runs the blocks one by one, so a hook on the stage's
        Sequential would never fire)."""
        backbone, maps, handles = self.backbone, {}, []
        for s in stages:
            blocks = backbone.stage_blocks(s)
            key = backbone.inserted_key(s, len(blocks) - 1)
            module = backbone.inserted[key] if key in backbone.inserted else blocks[-1]
            handles.append(module.register_forward_hook(lambda _m, _i, out, s=s: maps.__setitem__(s, out)))
        try:
            yield maps
        finally:
            for h in handles:
                h.remove()

    def pooled(self, fmap: Tensor, pool: str) -> Tensor:
        if pool == "avg":
            return fmap.flatten(2).mean(-1)  # (N, C)
        if pool == "max":
            return fmap.flatten(2).amax(-1)  # (N, C)
        return fmap.flatten(1)  # (N, C*h*w)

    def layer_map(self, stage: str, fmap: Tensor, x: Tensor, boxes: list[Tensor] | None) -> Tensor:
        """What a stage's rows pool: the sample's map ``(B, C, [t,] h, w)`` or the boxes' cells
        ``(R, C, oh, ow)``."""
        if boxes is None:
            if self._folds(x):
                return fmap.reshape(x.shape[0], x.shape[2], *fmap.shape[1:]).mean(1)  # (B, C, h, w)
            return fmap
        roi = self.rois[stage]
        if x.ndim == 4:
            return roi.pool_cells(fmap, boxes)  # (R, C, oh, ow)
        if self._folds(x):
            slices, t = fmap, x.shape[2]  # (B*T, C, h, w)
        else:
            t = fmap.shape[2]
            slices = fmap.transpose(1, 2).flatten(0, 1)  # (B*t, C, h, w)
        cells = roi.pool_cells(slices, boxes_per_frame(boxes, t))  # (sum_b t*K_b, C, oh, ow), slice-major
        per_sample = cells.split([t * len(b) for b in boxes])
        return torch.cat([c.reshape(t, len(b), *c.shape[1:]).mean(0) for c, b in zip(per_sample, boxes, strict=True)])

    def forward(self, x: Tensor, boxes: list[Tensor] | None = None) -> dict[str, Tensor]:
        if boxes is not None and POOLED in self.layers:
            raise ValueError("ROI features (boxes=) need named stages; `pooled` is one vector per sample")
        maps, embedding = self._stage_maps(x)
        out = {POOLED: embedding} if embedding is not None else {}
        for s in self.stages:
            out[s] = self.pooled(self.layer_map(s, maps[s], x, boxes), self.pools[s])  # (N, D)
        return {layer: out[layer] for layer in self.layers}

    @torch.inference_mode()
    def probe(self, sample_shape: tuple[int, ...], *, boxes: bool) -> dict[str, tuple[int, list[int] | None]]:
        """Per layer: feature size D of one sample and the shape a row flattens (pool=none, else None)."""
        device = next(self.parameters()).device
        x = torch.zeros(1, *sample_shape, device=device)
        box = [torch.tensor([[0.0, 0.0, sample_shape[-1], sample_shape[-2]]], device=device)] if boxes else None
        feats = self(x, box)
        maps, _ = self._stage_maps(x)
        shapes = {}
        for layer, f in feats.items():
            flat = self.pools[layer] == "none"
            shape = list(self.layer_map(layer, maps[layer], x, box).shape[1:]) if flat else None
            shapes[layer] = (int(f.shape[-1]), shape)
        return shapes


def embed_numpy(
    embedder: Embedder, x: Tensor, boxes: list[Tensor] | None, *, device: torch.device, half: bool
) -> dict[str, np.ndarray]:
    """``{layer: (R, D) float32}`` of one batch; ``half``: float16 autocast (GPU), features returned in float32."""
    x = x.to(device, non_blocking=True)
    boxes = [b.to(device) for b in boxes] if boxes is not None else None
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=half):
        feats = embedder(x, boxes)
    return {layer: f.float().cpu().numpy() for layer, f in feats.items()}
