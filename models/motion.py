"""A motion input for any video model: frame differences (TSN's RGB-diff), alone or beside the RGB frames.

Applied to the normalised clip before the backbone (``Net(input_stream=...)``, ``model/input_stream=diff|rgb_diff``):

    clip (B, C, T, H, W) -> diff     x[:, :, 1:] - x[:, :, :-1]                      (B, C, T-1, H, W)
                         -> rgb_diff [frames 1..T-1 ; their differences] on channels (B, 2C, T-1, H, W)

Differences remove what does not move (the scene, its lighting), which is what a net trained on few scenes
latches onto; the RGB half keeps the appearance of the moving person. ``rgb_diff`` doubles the backbone's
input channels (``model.backbone.in_chans``, set by conf/model/input_stream/rgb_diff.yaml).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MODES = ("diff", "rgb_diff")


class FrameDifference(nn.Module):
    def __init__(self, *, mode: str = "diff") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"model.input_stream.mode={mode!r} is unknown; choose one of {MODES}")
        self.mode = mode

    def channels(self, in_chans: int) -> int:
        """Channels of the backbone input made from ``in_chans`` channels of RGB."""
        return 2 * in_chans if self.mode == "rgb_diff" else in_chans

    def forward(self, clip: Tensor) -> Tensor:
        if clip.ndim != 5 or clip.shape[2] < 2:
            raise ValueError(
                f"model.input_stream ({self.mode}) needs clips (B, C, T, H, W) of at least 2 frames; got input of "
                f"shape {tuple(clip.shape)}"
            )
        diff = clip[:, :, 1:] - clip[:, :, :-1]  # (B, C, T-1, H, W)
        return diff if self.mode == "diff" else torch.cat([clip[:, :, 1:], diff], dim=1)  # (B, 2C, T-1, H, W)
