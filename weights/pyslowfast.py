"""PySlowFast checkpoints (``.pyth``: ``{"epoch", "model_state", "optimizer_state", "cfg"}``).

SlowFast: keys are the names of models/slowfast.py (``s1.pathway0_stem.conv.weight``,
``s2.pathway1_res0.branch2.a_bn.running_var``, ``s1_fuse.conv_f2s.weight``) and land under ``backbone.``.
I3D / Slow R50 (one pathway): ``pathway0`` blocks are renamed onto models/i3d_resnet.py's MMAction2-style
layers, and the non-local blocks of the NLN models onto the inserted blocks of ``model.non_local``:

    s1.pathway0_stem.{conv,bn}                 -> conv1.{conv,bn}
    s{n}.pathway0_res{i}.branch1 / branch1_bn  -> layer{n-1}.{i}.downsample.conv / .bn
    s{n}.pathway0_res{i}.branch2.{a,b,c}[_bn]  -> layer{n-1}.{i}.conv{1,2,3}.{conv,bn}
    s{n}.pathway0_nonlocal{i}.conv_{theta,phi,g,out} / bn -> inserted.layer{n-1}_{i}.{theta,phi,g,out} / bn
    head.projection                            -> head

PySlowFast's non-local blocks max-pool x before their phi/g convs, models/nonlocal_block.py (like mmcv) after
them; the keys land but the NLN models' outputs differ slightly from PySlowFast's (all else is exact).

Caffe2 ``.pkl`` files of the older model zoo are plain pickles of numpy arrays, which
``torch.load(weights_only=True)`` refuses; convert them with PySlowFast (load, then save ``.pyth``).
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from models.i3d_resnet import I3DResNet
from models.slowfast import SlowFast
from weights.foreign import backbone_of

MARKER = "s1.pathway0_stem.conv.weight"
_BRANCH2 = {"a": "conv1.conv", "a_bn": "conv1.bn", "b": "conv2.conv", "b_bn": "conv2.bn", "c": "conv3.conv"}
_BRANCH2["c_bn"] = "conv3.bn"
_NONLOCAL = {"conv_theta": "theta", "conv_phi": "phi", "conv_g": "g", "conv_out": "out", "bn": "bn"}


def matches(state: dict[str, Tensor]) -> bool:
    return MARKER in state


def convert(state: dict[str, Tensor], net: nn.Module) -> tuple[dict[str, Tensor], list[str]]:

    two_pathways = any(k.startswith("s1.pathway1_stem.") for k in state)
    wants = (SlowFast,) if two_pathways else (I3DResNet,)
    backbone = backbone_of(net, "PySlowFast " + ("SlowFast" if two_pathways else "one-pathway (I3D, Slow)"), wants)
    rename = _slowfast_key if isinstance(backbone, SlowFast) else _resnet3d_key
    head = "head.projection."
    return {"head." + k.removeprefix(head) if k.startswith(head) else rename(k): v for k, v in state.items()}, []


def _slowfast_key(key: str) -> str:
    return "backbone." + key


def _resnet3d_key(key: str) -> str:
    """A one-pathway PySlowFast key under models/i3d_resnet.py's names (unknown keys keep theirs)."""
    if m := re.fullmatch(r"s1\.pathway0_stem\.(conv|bn)\.(\w+)", key):
        return f"backbone.conv1.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"s(\d)\.pathway0_res(\d+)\.branch1(_bn)?\.(\w+)", key):
        return f"backbone.layer{int(m[1]) - 1}.{m[2]}.downsample.{'bn' if m[3] else 'conv'}.{m[4]}"
    if (m := re.fullmatch(r"s(\d)\.pathway0_res(\d+)\.branch2\.(\w+)\.(\w+)", key)) and m[3] in _BRANCH2:
        return f"backbone.layer{int(m[1]) - 1}.{m[2]}.{_BRANCH2[m[3]]}.{m[4]}"
    if (m := re.fullmatch(r"s(\d)\.pathway0_nonlocal(\d+)\.(\w+)\.(\w+)", key)) and m[3] in _NONLOCAL:
        return f"backbone.inserted.layer{int(m[1]) - 1}_{m[2]}.{_NONLOCAL[m[3]]}.{m[4]}"
    return key
