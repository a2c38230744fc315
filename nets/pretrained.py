"""Starting weights for a built net: ``model.pretrained`` names torchvision weights or a checkpoint file.

Flow of ``load_pretrained(net, source)``:

    source --read----> a state dict: torchvision's (hub cache, else a download), or any checkpoint's (ours,
                       a Lightning one from elsewhere, a raw state_dict), via torch.load(weights_only=True)
           --strip---> wrapper prefixes: ``module.`` (DDP), ``_orig_mod.`` (torch.compile), ``net.`` /
                       ``model.`` (LightningModule attributes)
           --format--> a video model author's checkpoint (pytorch-i3d, C3D, PySlowFast, MMAction2; told by its keys
                       or ``model.pretrained_format``) has its keys renamed onto the net's (nets/formats.py);
                       not for backbones that name their own published format (below), unless the format is given
           --rename--> each key onto the net's keys: as it is, through the backbone's published format
                       (nets/published.py: PySlowFast X3D, MMAction2 TSM, torchvision video heads), or
                       under ``backbone.`` through the backbone's
                       torchvision layout (VGG's ``features.<i>`` regrouped into stages, a 2D ResNet's
                       names inside a 3D video ResNet)
           --inflate-> 2D conv kernels (O, I, kh, kw) into 3D ones (O, I, kt, kh, kw) (I3D: repeated over
                       kt and divided by kt, so a clip of identical frames gives the 2D response)
           --copy----> tensors whose shapes match; the rest (e.g. the head when num_classes differs) is
                       skipped and reported with the missing and unexpected keys

Models stay free of file IO: this module reads the files and knows torchvision's key layouts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models.video.resnet import Conv2Plus1D, Conv3DNoTemporal

from models.backbones import VGG, ResNet, StagedBackbone, VideoResNet
from models.tv_video import TorchvisionVideo
from nets import formats
from nets.published import published_renames

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "net.", "model.")
# Where other tools keep the model's state_dict inside a checkpoint dict.
STATE_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "module", "net")  # model_state: PySlowFast
WEIGHTS_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

Rename = Callable[[str], str]


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)  # "key (checkpoint shape) -> target (model shape)"
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "key (checkpoint shape -> model shape)"
    excluded: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... (+{len(keys) - 6})" if len(keys) > 6 else "")

        lines = [f"pretrained {self.source}: loaded {len(self.loaded)} tensors ({len(self.inflated)} inflated 2D->3D)"]
        for name in ("reshaped", "skipped", "excluded", "missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"  {name} ({len(keys)}): {few(keys)}")
        return "\n".join(lines)


def load_pretrained(
    net: nn.Module, source: str | Path, *, exclude: Sequence[str] = (), format: str | None = None
) -> LoadReport:
    """Load ``source`` into ``net`` in place; ``exclude``: key prefixes of the net never loaded (``head``);
    ``format``: a checkpoint file's format (nets/formats.py; None: told by its keys)."""
    source = str(source)
    backbone = getattr(net, "backbone", None)
    reshaped: list[str] = []
    if is_weights_name(source):
        state, layouts, label = torchvision_state(backbone, source)
        state = strip_prefixes(state)
    else:
        state, label = strip_prefixes(read_state_dict(source)), source
        layouts = torchvision_layouts(backbone)
        if format is not None or not published_renames(backbone):
            state, reshaped, fmt = formats.convert(state, net, format)
            label = label if fmt == "native" else f"{source} ({fmt})"
    renames = [lambda k: k, *published_renames(backbone), *(_under_backbone(f) for f in layouts)]
    report = assign(net, state, renames, exclude=tuple(exclude), label=label)
    report.reshaped = reshaped
    if not report.loaded:
        ours = list(net.state_dict())[:4]
        raise ValueError(
            f"model.pretrained={source} shares no keys with the model (its keys look like {list(state)[:4]}, "
            f"the model's like {ours}); is it a checkpoint of another architecture?"
        )
    log.info(report.summary())
    return report


def is_weights_name(source: str) -> bool:
    """``IMAGENET1K_V1``-like names are torchvision weights; anything else (or an existing file) is a path."""
    return bool(WEIGHTS_NAME.match(source)) and not Path(source).exists()


# --- reading ----------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint: a Lightning/visfeat one, a ``{"model": ...}`` dict or a raw state_dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.pretrained={path}: no such file; give the path of a checkpoint (.ckpt/.pt/.pth) or a "
            f"torchvision weights name such as IMAGENET1K_V1"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types (UnpicklingError, RuntimeError, EOFError, ...) for bad files
        raise ValueError(
            f"model.pretrained={path} is not a checkpoint that torch.load(weights_only=True) can read: {e}"
        ) from e
    state = _find_state_dict(obj)
    if state is None:
        found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"model.pretrained={path} holds no state_dict of tensors (found {found})")
    return state


def _find_state_dict(obj: object) -> dict[str, Tensor] | None:
    if not isinstance(obj, dict):
        return None
    for key in STATE_KEYS:
        if isinstance(obj.get(key), dict):
            found = _find_state_dict(obj[key])
            if found:
                return found
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    return tensors or None


def strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def torchvision_state(backbone: nn.Module | None, name: str) -> tuple[dict[str, Tensor], list[Rename], str]:
    """torchvision's weights ``name`` for the backbone's torchvision counterpart (a 3D video ResNet takes the
    2D ResNet-18's weights by inflation when the name is not one of its own): state dict, layouts, label."""
    builder = torchvision_builder(backbone, name)
    layouts = torchvision_layouts(backbone)
    enum = tvm.get_model_weights(builder)
    if isinstance(backbone, VideoResNet) and name not in enum.__members__:
        enum, layouts = tvm.ResNet18_Weights, [_resnet2d_to_video]
    if name not in enum.__members__:
        raise ValueError(
            f"model.pretrained={name} is not a weights name of torchvision's {builder} "
            f"({enum.__name__}: {', '.join(enum.__members__)}), nor an existing checkpoint file"
        )
    weights = enum[name]
    return read_torchvision(weights), layouts, f"{enum.__name__}.{weights.name}"


def read_torchvision(weights: tvm.WeightsEnum) -> dict[str, Tensor]:
    """From the torch hub cache (``<torch.hub.get_dir()>/checkpoints/<file>``); downloaded there if absent."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    label = f"{type(weights).__name__}.{weights.name}"
    if path.is_file():
        log.info("pretrained %s from the torch hub cache: %s", label, path)
        return read_state_dict(path)
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=False, weights_only=True)
    except Exception as e:  # offline: URLError, socket errors, HTTP errors
        raise RuntimeError(
            f"torchvision weights {label} are not in the torch hub cache ({path}) and downloading them from "
            f"{weights.url} failed ({type(e).__name__}: {e}). Copy the file to {path} (or set TORCH_HOME to "
            f"a cache that has it) and run again."
        ) from e


# --- torchvision layouts --------------------------------------------------------------------------------


def torchvision_builder(backbone: nn.Module | None, name: str) -> str:
    """The torchvision builder a backbone wraps (``resnet50``, ``vgg11_bn``, ``r3d_18``), from its layers."""
    if isinstance(backbone, ResNet):
        stages = [backbone.stage_blocks(s) for s in backbone.stage_names]
        convs_per_block = 3 if isinstance(stages[0][0], tvm.resnet.Bottleneck) else 2
        return f"resnet{2 + convs_per_block * sum(len(s) for s in stages)}"
    if isinstance(backbone, VGG):
        convs = sum(isinstance(m, nn.Conv2d) for m in backbone.modules())
        return f"vgg{convs + 3}_bn"  # + the three fully connected layers of the classifier
    if isinstance(backbone, TorchvisionVideo):
        return backbone.arch
    if isinstance(backbone, VideoResNet):
        if isinstance(backbone.layer1[0].conv1[0], Conv2Plus1D):
            return "r2plus1d_18"
        return "mc3_18" if isinstance(backbone.layer2[0].conv1[0], Conv3DNoTemporal) else "r3d_18"
    kind = type(backbone).__name__ if backbone is not None else "a net without a backbone"
    raise ValueError(
        f"model.pretrained={name} names torchvision weights, but {kind} has no torchvision counterpart "
        f"(ResNet, VGG, VideoResNet, TSM and the torchvision video models have); give the path of a checkpoint instead"
    )


def torchvision_layouts(backbone: nn.Module | None) -> list[Rename]:
    """Renames from torchvision's key names to the backbone's own (the first that hits a key wins)."""
    if isinstance(backbone, VGG):
        return [_vgg_layout(backbone)]
    if isinstance(backbone, VideoResNet):
        return [lambda k: k, _resnet2d_to_video]
    return [lambda k: k] if isinstance(backbone, StagedBackbone) else []


def _under_backbone(rename: Rename) -> Rename:
    return lambda k: "backbone." + rename(k.removeprefix("backbone."))


def _vgg_layout(backbone: VGG) -> Rename:
    """``features.<i>.<param>`` -> ``<stage>.<j>.<param>``: the flat layer list regrouped at each max-pool."""
    index = {}
    for stage in backbone.stage_names:
        for j in range(len(backbone.stage_blocks(stage))):
            index[str(len(index))] = f"{stage}.{j}"

    def rename(key: str) -> str:
        m = re.match(r"features\.(\d+)\.(.+)$", key)
        return f"{index[m[1]]}.{m[2]}" if m and m[1] in index else key

    return rename


def _resnet2d_to_video(key: str) -> str:
    """A 2D ResNet's names inside torchvision's video ResNet: ``conv1``/``bn1`` -> ``stem.0``/``stem.1``,
    ``layerL.B.convN``/``bnN`` -> ``layerL.B.convN.0``/``convN.1``; ``downsample`` is the same in both."""
    if m := re.match(r"(conv|bn)1\.(.+)$", key):
        return f"stem.{0 if m[1] == 'conv' else 1}.{m[2]}"
    if m := re.match(r"(layer\d\.\d+)\.(conv|bn)(\d)\.(.+)$", key):
        return f"{m[1]}.conv{m[3]}.{0 if m[2] == 'conv' else 1}.{m[4]}"
    return key


# --- copying --------------------------------------------------------------------------------------------


def inflate(weight: Tensor, target_shape: torch.Size, key: str, label: str) -> Tensor:
    """2D kernel (O, I, kh, kw) -> 3D (O, I, kt, kh, kw), repeated over time and divided by kt (I3D)."""
    o, i, kt, kh, kw = target_shape
    if tuple(weight.shape) != (o, i, kh, kw):
        raise ValueError(
            f"cannot inflate 2D weights of {label} into this 3D backbone: {key} is {tuple(target_shape)} but "
            f"the 2D kernel is {tuple(weight.shape)}; I3D inflation needs (O, I, kh, kw) to match. (2+1)D "
            f"convolutions (r2plus1d_18) have other widths: use their own KINETICS400_V1 weights or arch "
            f"r3d_18 / mc3_18"
        )
    return weight.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt  # (O, I, kt, kh, kw)


def assign(
    net: nn.Module, state: dict[str, Tensor], renames: list[Rename], *, exclude: tuple[str, ...], label: str
) -> LoadReport:
    """Copy each source tensor to the first renamed key the net has, inflating 2D kernels into 3D ones."""
    own = net.state_dict()
    report = LoadReport(source=label)
    picked: dict[str, Tensor] = {}
    for key, value in state.items():
        target = next((t for t in (r(key) for r in renames) if t in own), None)
        if target is None or target in picked:
            report.unexpected.append(key)
            continue
        if target.startswith(exclude):
            report.excluded.append(target)
            continue
        want = own[target].shape
        if value.ndim == 4 and len(want) == 5:
            value = inflate(value, want, target, label)
            report.inflated.append(target)
        if value.shape != want:
            report.skipped.append(f"{target} ({tuple(value.shape)} -> {tuple(want)})")
            continue
        picked[target] = value
    net.load_state_dict(picked, strict=False)
    report.loaded = list(picked)
    seen = {*picked, *report.excluded, *(s.split(" ", 1)[0] for s in report.skipped)}
    report.missing = [k for k in own if k not in seen]
    return report
