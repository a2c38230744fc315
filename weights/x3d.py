"""PySlowFast's X3D checkpoints (``x3d_xs.pyth``, ``x3d_s.pyth``, ``x3d_m.pyth``) onto ``models.x3d.X3D``.

A ``.pyth`` file is a ``torch.save``d dict ``{"epoch", "model_state", "optimizer_state", "cfg"}``;
``nets.pretrained.read_state_dict`` finds ``model_state`` (with ``module.`` stripped when it was saved
from DDP). The backbone keeps PySlowFast's module names, so the mapping only moves keys under the Net:

    s1.pathway0_stem.* , s2..s5.pathway0_res<i>.*   -> backbone.<same>
    head.conv_5.*, head.conv_5_bn.*, head.lin_5.*   -> backbone.head.<same>   (the 2048-d pre-logits)
    head.projection.{weight,bias}                   -> head.{weight,bias}     (Kinetics-400 classifier)

    python train.py model=x3d model.backbone.variant=xs model.pretrained=/path/x3d_xs.pyth
"""

from __future__ import annotations

import re


def pyslowfast_x3d_rename(key: str) -> str:
    if m := re.match(r"head\.projection\.(weight|bias)$", key):
        return f"head.{m[1]}"
    if re.match(r"(s[1-5]\.pathway0_|head\.(conv_5|lin_5))", key):
        return f"backbone.{key}"
    return key
