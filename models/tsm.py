"""Temporal Shift Module (Lin et al., "TSM: Temporal Shift Module for Efficient Video Understanding", ICCV 2019).

A 2D ResNet run on every frame, where each residual block first shifts a fraction of its channels along
time: 1/``shift_div`` of them come from the next frame, 1/``shift_div`` from the previous one (zeros past
the clip's ends), the rest stay. The shift costs no parameters and no FLOPs and lets 2D convolutions mix
neighbouring frames.

Flow of ``forward_stages(clip)``:

    clip (B, C, T, H, W) -> frames (B*T, C, H, W), batch-major -> stem
      -> each block: [shift the block input (shift_place=block)] -> block, whose conv1 shifts its input
         first (shift_place=blockres, the paper's residual shift) -> [inserted module on (B, C, T, h, w)]
      -> stage maps back as clips (B, C, T, h, w)

The embedding is the average over frames and positions of the last stage: the per-frame global pool
followed by TSN's average segment consensus (averaging the features equals averaging the logits of the
linear head). The parameters and their names are torchvision's ResNet's, so ImageNet weights
(``model.pretrained=IMAGENET1K_V1``, the paper's initialisation) load as they are; MMAction2's TSM
checkpoints load through weights/mmaction_tsm.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.backbones import ResNet

SHIFT_PLACES = ("blockres", "block")


def temporal_shift(x: Tensor, segments: int, shift_div: int = 8) -> Tensor:
    """Shift channels of frames ``(N*T, C, H, W)`` (batch-major) along T: channels ``[0, C/div)`` of frame t
    take frame t+1's, ``[C/div, 2C/div)`` take frame t-1's (zeros where there is none), the rest stay."""
    nt, c, h, w = x.shape
    if nt % segments:
        raise ValueError(f"temporal shift: {nt} frames are not a whole number of clips of {segments} frames")
    x = x.view(nt // segments, segments, c, h, w)
    fold = c // shift_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]  # from the next frame
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]  # from the previous frame
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


class ShiftConv2d(nn.Conv2d):
    """A Conv2d that shifts its input along time first; same parameters (and names) as the Conv2d it
    replaces. ``segments`` (frames per clip) is set by the backbone before every forward."""

    segments: int = 1
    shift_div: int = 8

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(temporal_shift(x, self.segments, self.shift_div))


def _shift_conv(conv: nn.Conv2d, shift_div: int) -> ShiftConv2d:
    new = ShiftConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    new.load_state_dict(conv.state_dict())
    new.shift_div = shift_div
    return new


class TSM(ResNet):
    """TSM ResNet on clips ``(B, C, T, H, W)``; stages ``layer1``..``layer4`` with clip maps ``(B, C, T, h, w)``.

    ``shift_place=blockres`` shifts inside the residual branch (before each block's conv1; every second
    block for ResNets with >= 23 blocks in layer3, as MMAction2 does), ``block`` shifts the block's input,
    identity path included. Non-local blocks inserted after a block see the clip map (3D non-local).
    """

    is_3d = True

    def __init__(
        self, *, depth: int = 50, shift_div: int = 8, shift_place: str = "blockres", in_chans: int = 3
    ) -> None:
        super().__init__(depth=depth, small_input=False, in_chans=in_chans)
        if shift_place not in SHIFT_PLACES:
            raise ValueError(f"model.backbone.shift_place={shift_place!r}; choose one of {SHIFT_PLACES}")
        if shift_div < 2:
            raise ValueError(f"model.backbone.shift_div={shift_div} must be >= 2 (two folds are shifted)")
        self.shift_div, self.shift_place = shift_div, shift_place
        if shift_place == "blockres":
            every = 2 if len(self.layer3) >= 23 else 1
            for stage in self.stage_names:
                for i, block in enumerate(self.stage_blocks(stage)):
                    if i % every == 0:
                        block.conv1 = _shift_conv(block.conv1, shift_div)

    def forward_stages(self, x: Tensor, stages: Sequence[str] | None = None) -> dict[str, Tensor]:
        if x.ndim != 5:
            raise ValueError(f"TSM takes clips (B, C, T, H, W); got a tensor of shape {tuple(x.shape)}")
        wanted = list(stages) if stages is not None else list(self.stage_names)
        for s in wanted:
            self.stage_blocks(s)  # validates the name
        last = max(self.stage_names.index(s) for s in wanted)
        b, c, t, h, w = x.shape
        for m in self.modules():
            if isinstance(m, ShiftConv2d):
                m.segments = t
        y = self.stem(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, C, H', W')
        out = {}
        for name in self.stage_names[: last + 1]:
            for i, block in enumerate(self.stage_blocks(name)):
                if self.shift_place == "block":
                    y = temporal_shift(y, t, self.shift_div)
                y = block(y)
                key = self.inserted_key(name, i)
                if key in self.inserted:
                    y = _frames(self.inserted[key](_clips(y, b)))
            if name in wanted:
                out[name] = _clips(y, b)
        return out


def _clips(frames: Tensor, b: int) -> Tensor:
    nt, c, h, w = frames.shape
    return frames.reshape(b, nt // b, c, h, w).transpose(1, 2)  # (B, C, T, h, w)


def _frames(clips: Tensor) -> Tensor:
    b, c, t, h, w = clips.shape
    return clips.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, h, w)
