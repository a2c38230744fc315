"""ROI head: features pooled inside boxes (torchvision ``roi_align`` / ``roi_pool``), then per sample.

Flow of ``forward(fmap, boxes)``:

    fmap (N, C, h, w) from the chosen stage, the fusion neck or the last stage, with stride s; boxes: N
    tensors (K_i, 4) x1,y1,x2,y2 in input pixels (a sample without boxes, or ``boxes=None``, gets the preset boxes:
    full frame, n x n grid or R-MAC regions of the input, of size ``image_size``, by default (h*s, w*s))
      -> roi_align(aligned=True, sampling_ratio) | roi_pool at spatial_scale 1/s -> (R, C, oh, ow)
      -> box vector: mean of the oh x ow cells (R, C), or flatten + fc + ReLU (R, fc_dim) when fc_dim is set
      -> reduce the K_i boxes of each sample: mean | max | attention -> (N, D)

3D maps (N, C, t, h, w) from a video backbone are pooled per time slice: slice j uses the boxes of the frame
at the centre of its segment of the clip (clip boxes (K, T, 4) or (K, 4) for all frames), and the box
vectors are averaged over the slices before the reduction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import roi_align, roi_pool

from models.backbones import StagedBackbone

OPS = ("align", "pool")
REDUCTIONS = ("mean", "max", "attention")
PRESETS = ("full", "grid", "rmac")


# --- box presets (x1, y1, x2, y2 in pixels) -----------------------------------------------------------------
def full_frame_boxes(height: float, width: float) -> Tensor:
    return torch.tensor([[0.0, 0.0, width, height]])  # (1, 4)


def grid_boxes(height: float, width: float, n: int) -> Tensor:
    """The n x n cells tiling the frame, row-major: ``(n*n, 4)``."""
    if n < 1:
        raise ValueError(f"grid size n={n} must be >= 1")
    xs, ys = torch.linspace(0, width, n + 1), torch.linspace(0, height, n + 1)
    y1, x1 = torch.meshgrid(ys[:-1], xs[:-1], indexing="ij")
    y2, x2 = torch.meshgrid(ys[1:], xs[1:], indexing="ij")
    return torch.stack([x1, y1, x2, y2], -1).reshape(-1, 4)


def rmac_boxes(height: float, width: float, levels: int = 3, overlap: float = 0.4) -> Tensor:
    """R-MAC regions (Tolias et al., 2016): the full frame plus, at level l = 1..levels, squares of side
    2*min(H, W)/(l+1) spread evenly, with l positions along the short side and as many along the long side
    as keeps consecutive squares overlapping by about ``overlap``."""
    if levels < 1:
        raise ValueError(f"R-MAC levels={levels} must be >= 1")
    boxes = [full_frame_boxes(height, width)]
    short = min(height, width)
    for level in range(1, levels + 1):
        side = 2 * short / (level + 1)

        def starts(extent: float, side: float = side, level: int = level) -> Tensor:
            # Fewest positions so that the step is at most (1 - overlap) * side, at least `level`.
            count = max(level, math.ceil((extent - side) / ((1 - overlap) * side) + 1 - 1e-6))
            return torch.linspace(0, extent - side, count) if count > 1 else torch.zeros(1)

        y1, x1 = torch.meshgrid(starts(height), starts(width), indexing="ij")
        x1, y1 = x1.reshape(-1), y1.reshape(-1)
        boxes.append(torch.stack([x1, y1, x1 + side, y1 + side], -1))
    return torch.cat(boxes)  # (R, 4)


def preset_boxes(preset: str, height: float, width: float, *, grid: int = 2, rmac_levels: int = 3) -> Tensor:
    if preset == "full":
        return full_frame_boxes(height, width)
    if preset == "grid":
        return grid_boxes(height, width, grid)
    if preset == "rmac":
        return rmac_boxes(height, width, rmac_levels)
    raise ValueError(f"box preset {preset!r} is unknown; choose one of {PRESETS}")


def frame_indices(num_frames: int, num_slices: int) -> Tensor:
    """Frame at the centre of each of ``num_slices`` equal segments of a ``num_frames`` clip."""
    return ((torch.arange(num_slices) + 0.5) * num_frames / num_slices).long().clamp_max(num_frames - 1)


def boxes_per_frame(boxes: list[Tensor] | None, num_frames: int) -> list[Tensor] | None:
    """Clip boxes of B samples -> (K, 4) boxes of the B*T frames, sample-major (row b*T + t).

    A clip box (K, 4) holds for every frame; per-frame boxes (K, T', 4) are taken at the frame nearest the
    centre of each of the ``num_frames`` segments (T' = num_frames is the usual case).
    """
    if boxes is None:
        return None
    out = []
    for i, b in enumerate(boxes):
        if b.ndim == 2 and b.shape[-1] == 4:
            out.extend([b] * num_frames)
        elif b.ndim == 3 and b.shape[-1] == 4:
            out.extend(b[:, frame_indices(b.shape[1], num_frames)].unbind(1))  # T x (K, 4)
        else:
            raise ValueError(f"boxes[{i}] has shape {tuple(b.shape)}; clip boxes must be (K, 4) or (K, T, 4)")
    return out


class ROIHead(nn.Module):
    """Pools a feature map inside boxes and reduces the boxes of each sample to one embedding.

    Args:
        in_channels / stride: channels and stride (input pixels per map cell) of the pooled map (``roi_head``
            fills them in from the backbone stage or fusion neck).
        stage: the backbone stage the map comes from; None: the fusion neck's output, else the last stage.
        op: ``align`` (roi_align, aligned=True) or ``pool`` (roi_pool, max in each cell).
        output_size: cells per box side (int or (oh, ow)).
        sampling_ratio: bilinear samples per cell side for ``align`` (-1: adaptive).
        fc_dim: None averages the cells (D = C); an int flattens them through a fc layer (D = fc_dim), which
            keeps where in the box a feature lies.
        reduce: how the K boxes of a sample become one vector: mean, max or attention (learned scores,
            softmax over the sample's boxes).
        preset / grid / rmac_levels: boxes used when the batch has none (see the module docstring).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        stride: int,
        stage: str | None = None,
        op: str = "align",
        output_size: int | tuple[int, int] = 7,
        sampling_ratio: int = 2,
        fc_dim: int | None = None,
        reduce: str = "mean",
        preset: str = "full",
        grid: int = 2,
        rmac_levels: int = 3,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("op", op, OPS),
            ("reduce", reduce, REDUCTIONS),
            ("preset", preset, PRESETS),
        ):
            if value not in allowed:
                raise ValueError(f"model.roi.{name}={value!r} is unknown; choose one of {allowed}")
        if stride < 1:
            raise ValueError(f"ROI stride={stride} must be >= 1")
        preset_boxes(preset, 1.0, 1.0, grid=grid, rmac_levels=rmac_levels)  # validates grid / rmac_levels now
        self.stage, self.op, self.reduce_mode, self.preset = stage, op, reduce, preset
        self.grid, self.rmac_levels = grid, rmac_levels
        self.stride, self.sampling_ratio = stride, sampling_ratio
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        cells = self.output_size[0] * self.output_size[1]
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * cells, fc_dim), nn.ReLU()) if fc_dim else None
        self.out_features = fc_dim or in_channels
        if reduce == "attention":
            hidden = max(self.out_features // 2, 16)
            self.score = nn.Sequential(nn.Linear(self.out_features, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    boxes_per_frame = staticmethod(boxes_per_frame)

    def _boxes_for(self, fmap: Tensor, boxes: list[Tensor] | None, image_size: tuple[int, int] | None) -> list[Tensor]:
        """One (K_i, 4) tensor per map in ``fmap``; empty or missing boxes become the preset."""
        n = fmap.shape[0]
        h, w = image_size if image_size is not None else (fmap.shape[-2] * self.stride, fmap.shape[-1] * self.stride)
        if boxes is not None and len(boxes) != n:
            raise ValueError(f"got boxes for {len(boxes)} samples but the batch has {n}")
        default = preset_boxes(self.preset, h, w, grid=self.grid, rmac_levels=self.rmac_levels)
        out = []
        for i in range(n):
            b = default if boxes is None or boxes[i].numel() == 0 else boxes[i]
            if b.ndim != 2 or b.shape[-1] != 4:
                raise ValueError(f"boxes[{i}] has shape {tuple(b.shape)}; expected (K, 4) x1,y1,x2,y2 per image")
            out.append(b.to(fmap))
        return out

    def pool_cells(self, fmap: Tensor, boxes: list[Tensor]) -> Tensor:
        """The oh x ow cells of every box: ``(R, C, oh, ow)``."""
        if self.op == "align":
            return roi_align(
                fmap,
                boxes,
                self.output_size,
                spatial_scale=1.0 / self.stride,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            )
        return roi_pool(fmap, boxes, self.output_size, spatial_scale=1.0 / self.stride)

    def _pool(self, fmap: Tensor, boxes: list[Tensor]) -> Tensor:
        cells = self.pool_cells(fmap, boxes)  # (R, C, oh, ow)
        return self.fc(cells) if self.fc is not None else cells.mean((2, 3))  # (R, D)

    def box_features(
        self, fmap: Tensor, boxes: list[Tensor] | None, image_size: tuple[int, int] | None = None
    ) -> tuple[Tensor, list[int]]:
        """Vectors of all boxes ``(R, D)`` (sample-major) and the number of boxes of each sample."""
        if fmap.ndim == 4:
            per_map = self._boxes_for(fmap, boxes, image_size)
            return self._pool(fmap, per_map), [len(b) for b in per_map]
        if fmap.ndim != 5:
            raise ValueError(f"ROI head needs a (N, C, H, W) or (N, C, T, H, W) map; got {tuple(fmap.shape)}")
        n, c, t = fmap.shape[:3]
        slices = fmap.transpose(1, 2).reshape(n * t, c, *fmap.shape[3:])  # (N*t, C, h, w)
        per_slice = self._boxes_for(slices, boxes_per_frame(boxes, t), image_size)
        feats = self._pool(slices, per_slice)  # (sum over slices of K, D)
        counts = [len(b) for b in per_slice[::t]]
        per_sample = feats.split([k * t for k in counts])
        feats = torch.cat([f.reshape(t, k, -1).mean(0) for f, k in zip(per_sample, counts, strict=True)])
        return feats, counts  # (R, D), K per sample

    def reduce(self, feats: Tensor, counts: list[int]) -> Tensor:
        """(R, D) box vectors -> (N, D), reducing the ``counts[i]`` boxes of sample i."""
        padded = pad_sequence(list(feats.split(counts)), batch_first=True)  # (N, Kmax, D)
        k = torch.tensor(counts, device=feats.device)
        mask = torch.arange(padded.shape[1], device=feats.device)[None] < k[:, None]  # (N, Kmax)
        if self.reduce_mode == "mean":
            return padded.sum(1) / k[:, None].to(feats.dtype)
        if self.reduce_mode == "max":
            return padded.masked_fill(~mask[..., None], float("-inf")).amax(1)
        scores = self.score(padded).squeeze(-1).masked_fill(~mask, float("-inf"))  # (N, Kmax)
        return (F.softmax(scores, dim=1)[..., None] * padded).sum(1)

    def forward(
        self, fmap: Tensor, boxes: list[Tensor] | None = None, image_size: tuple[int, int] | None = None
    ) -> Tensor:
        return self.reduce(*self.box_features(fmap, boxes, image_size))  # (N, D)


def roi_head(
    *, backbone: StagedBackbone, fusion: nn.Module | None = None, stage: str | None = None, **kwargs
) -> ROIHead:
    """``ROIHead`` on the map of ``stage``, else on the fusion neck's output, else on the last stage, with
    in_channels and stride taken from there. ``Net`` calls it as ``roi(backbone=..., fusion=...)``."""
    if stage is not None:
        if fusion is not None:
            raise ValueError(
                f"model.roi.stage={stage!r} and model.fusion are both set; the ROI head pools either "
                f"one stage or the fused map: set model.roi.stage=null or model.fusion=null"
            )
        backbone.stage_blocks(stage)  # validates the name
        channels, stride = backbone.stage_channels[stage], backbone.stage_strides[stage]
    elif fusion is not None:
        channels, stride = fusion.out_channels, fusion.out_stride
    else:
        last = backbone.stage_names[-1]
        channels, stride = backbone.stage_channels[last], backbone.stage_strides[last]
    return ROIHead(in_channels=channels, stride=stride, stage=stage, **kwargs)
