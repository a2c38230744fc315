"""Test-time augmentation for image models (``module.tta``), as airbench evaluates (Jordan 2024).

none              logits of the image
mirror            mean of the image's and its mirror image's logits
mirror_translate  half the mirror logits, plus half the mean of the mirror logits of two copies shifted by
                  one pixel diagonally each way (reflect-padded by 1, cropped at offsets (0, 0) and (2, 2))
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

TTA_MODES = ("none", "mirror", "mirror_translate")


def check_tta(mode: str) -> str:
    if mode not in TTA_MODES:
        raise ValueError(f"module.tta={mode!r} must be one of {list(TTA_MODES)}")
    return mode


def checkpoint_tta(given: str | None, run_config: dict, *, clips: bool | None, ckpt_path: str) -> str:
    """The TTA of an evaluation: ``given`` (eval.py's / predict.py's option), else the checkpoint's run's
    ``module.tta``; refused before any work for nets that take clips (they average views instead)."""
    tta = check_tta(given if given is not None else (run_config.get("module") or {}).get("tta", "none"))
    if tta != "none" and clips:
        raise ValueError(
            f"module.tta={tta} augments images, and {ckpt_path} takes clips; use more views per video instead "
            f"(data.test_clips=<n>)"
        )
    return tta


def tta_logits(forward: Callable[[Tensor], Tensor], x: Tensor, mode: str) -> Tensor:
    """Logits of images ``x`` (B, C, H, W) under the test-time augmentation ``mode``."""
    if mode == "none":
        return forward(x)
    if x.ndim != 4:
        raise ValueError(
            f"module.tta={mode} augments images (B, C, H, W); got input of shape {tuple(x.shape)}: "
            f"set module.tta=none (clips are tested over several views with data.test_clips / data.test_crops)"
        )

    def mirror(images: Tensor) -> Tensor:
        return 0.5 * forward(images) + 0.5 * forward(images.flip(-1))

    logits = mirror(x)
    if mode == "mirror":
        return logits
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")  # (B, C, H+2, W+2)
    shifted = [mirror(padded[..., :h, :w]), mirror(padded[..., 2 : h + 2, 2 : w + 2])]
    return 0.5 * logits + 0.25 * (shifted[0] + shifted[1])
