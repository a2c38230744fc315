"""``Net``: backbone -> [fusion | ROI pooling] -> [temporal module over frames] -> head.

Flow of ``embed`` for the input kinds the framework meets:

    images (B, C, H, W)                    -> backbone -> pool -> (B, D)
    clips  (B, C, T, H, W), 3D backbone    -> backbone -> pool -> (B, D)
    clips  (B, C, T, H, W), 2D backbone    -> frames folded into the batch (B*T, C, H, W) -> backbone
                                              -> pool -> (B, T, D) -> temporal module -> (B, D')

"pool" is the backbone's own global pooling unless a fusion neck or an ROI head is given: the neck fuses
several stage maps into one map, the ROI head pools that map (or the backbone's last stage) inside the
boxes of each sample. Non-local blocks live inside the backbone's stages (inserted after chosen residual
blocks). Optional parts arrive as partials and are completed here with the sizes only the backbone knows
(channels, strides), so configs never repeat them. ``non_local`` is spelt with an underscore because
``nonlocal`` is a Python keyword.

With an ROI head and folded frames, clip boxes ((K, T, 4) or (K, 4)) become per-frame boxes, so a
temporal module computes y = LSTM(ROIPool(CNN(x_t))); ``forward_boxes`` classifies every box separately.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from models.backbones import StagedBackbone


class Net(nn.Module):
    # The parts after the backbone, in forward order (those not configured are None): fine-tuning's
    # "head" group (trainer/callbacks/finetune.py). A new part goes here too, or fine-tuning refuses its parameters.
    post_backbone_names = ("fusion", "roi", "temporal", "drop", "head")

    def __init__(
        self,
        *,
        backbone: StagedBackbone,
        num_classes: int,
        temporal: Callable[..., nn.Module] | None = None,
        fusion: Callable[..., nn.Module] | None = None,
        roi: Callable[..., nn.Module] | None = None,
        non_local: Callable[..., object] | None = None,
        dropout: float = 0.0,
        head_bias: bool = True,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be a positive number of classes")
        if non_local is not None:
            non_local(backbone=backbone)  # inserts blocks into the backbone's stages
        self.backbone = backbone
        self.fusion = fusion(backbone=backbone) if fusion is not None else None
        if roi is not None:
            # The ROI builder reads channels and stride of the map it pools (its stage, the neck or the last one).
            self.roi = roi(backbone=backbone, fusion=self.fusion)
            dim = self.roi.out_features
        else:
            self.roi = None
            dim = self.fusion.out_features if self.fusion is not None else backbone.num_features
        self.temporal = temporal(in_features=dim) if temporal is not None else None
        self.num_features = self.temporal.out_features if self.temporal is not None else dim
        self.drop = nn.Dropout(dropout)
        # airbench: a bias-free head whose logits are scaled by 1/9 (the scale sets the softmax temperature
        # at initialisation and the head's effective learning rate).
        self.head_bias, self.logit_scale = bool(head_bias), float(logit_scale)
        self.head = nn.Linear(self.num_features, num_classes, bias=self.head_bias)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def _feature_map(self, x: Tensor) -> Tensor:
        """The map the ROI head (or the neck's pooling) reads: the ROI stage, the fused map or the last one."""
        stage = self.roi.stage if self.roi is not None else None
        if stage is None and self.fusion is not None:
            return self.fusion(self.backbone.forward_stages(x, self.fusion.in_stages))
        stage = stage or self.backbone.stage_names[-1]
        return self.backbone.forward_stages(x, [stage])[stage]

    def _embed(self, x: Tensor, boxes: list[Tensor] | None) -> Tensor:
        """Pooled embedding of a batch the backbone consumes directly: ``(N, D)``."""
        if self.roi is not None:
            return self.roi(self._feature_map(x), boxes, image_size=tuple(x.shape[-2:]))
        if self.fusion is not None:
            return self.fusion.pool(self._feature_map(x))
        return self.backbone.forward_pooled(x)

    def embed(self, input: Tensor, boxes: list[Tensor] | None = None) -> Tensor:
        folds_frames = input.ndim == 5 and not self.backbone.is_3d
        if not folds_frames:
            if self.temporal is not None:
                raise ValueError(
                    f"a temporal module needs clips (B, C, T, H, W) and a 2D backbone; got input of shape "
                    f"{tuple(input.shape)} and is_3d={self.backbone.is_3d}"
                )
            return self._embed(input, boxes)  # (B, D)
        b, c, t, h, w = input.shape
        frames = input.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        frame_boxes = self.roi.boxes_per_frame(boxes, t) if self.roi is not None else None
        feats = self._embed(frames, frame_boxes).reshape(b, t, -1)  # (B, T, D)
        if self.temporal is None:
            return feats.mean(1)  # frame averaging when no temporal module is configured
        return self.temporal(feats)  # (B, D')

    def forward_boxes(self, input: Tensor, boxes: list[Tensor] | None = None) -> Tensor:
        """Logits of every box ``(R, num_classes)``, sample-major: boxes classified one by one instead of
        reduced per sample. Folded clips follow each box through the frames (a track (T, D) per box)
        and run the temporal module over it."""
        if self.roi is None:
            raise ValueError("forward_boxes needs an ROI head: add model/roi=align (or pool) to the config")
        if not (input.ndim == 5 and not self.backbone.is_3d):
            fmap = self._feature_map(input)
            feats, _ = self.roi.box_features(fmap, boxes, tuple(input.shape[-2:]))  # (R, D)
            return self.classify(feats)
        b, c, t, h, w = input.shape
        frames = input.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        frame_boxes = self.roi.boxes_per_frame(boxes, t)
        feats, counts = self.roi.box_features(self._feature_map(frames), frame_boxes, (h, w))  # (R*T, D)
        per_sample = feats.split([sum(counts[i * t : (i + 1) * t]) for i in range(b)])
        tracks = torch.cat([f.reshape(t, counts[i * t], -1).transpose(0, 1) for i, f in enumerate(per_sample)])
        # tracks: (R, T, D), one track per box
        tracks = self.temporal(tracks) if self.temporal is not None else tracks.mean(1)  # (R, D')
        return self.classify(tracks)

    def classify(self, features: Tensor) -> Tensor:
        logits = self.head(self.drop(features))  # (B, num_classes)
        return logits if self.logit_scale == 1.0 else logits * self.logit_scale

    def forward(self, input: Tensor, boxes: list[Tensor] | None = None) -> Tensor:
        return self.classify(self.embed(input, boxes))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for ``num_classes`` labels (fine-tuning on a new label set)."""
        self.head = nn.Linear(self.num_features, num_classes, bias=self.head_bias).to(self.head.weight.device)
