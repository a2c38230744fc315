"""``NamedStages``: a ``StagedBackbone`` whose blocks keep the flat module names of a published network.

C3D (``conv3a``, ``pool3``, ``fc6``) and Inception-I3D (``Mixed_4f``) are published as flat lists of named
layers; their checkpoints' keys are those names. Registering each layer under its own name keeps the keys
equal to the published ones, and ``stage_modules`` groups the names into stages, so that stages, non-local
insertion, extraction by stage and fine-tuning by stage work as for any other backbone.
"""

from __future__ import annotations

from torch import nn

from models.backbones import StagedBackbone


class NamedStages(StagedBackbone):
    """Subclasses set ``stage_modules``: stage name -> names of its modules (attributes) in forward order."""

    stage_modules: dict[str, list[str]]

    def stage_blocks(self, stage: str) -> nn.Sequential:
        if stage not in self.stage_names:
            raise ValueError(f"unknown stage {stage!r}; this backbone has {self.stage_names}")
        # A fresh container over the registered modules: it owns nothing, so no parameter name changes.
        return nn.Sequential(*(getattr(self, name) for name in self.stage_modules[stage]))
