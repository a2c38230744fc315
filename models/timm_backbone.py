"""Any timm image model as a ``StagedBackbone``, through timm's ``features_only`` wrapper.

    model=timm model.backbone.name=convnext_tiny                      # images (B, C, H, W)
    model=cnn_lstm model.backbone._target_=models.timm_backbone.TimmBackbone +model.backbone.name=resnet18

The stages are the feature levels timm reports (``feature_info``: channels and reductions), named after
timm's modules with dots as underscores (``layer1``..``layer4`` of a ResNet, ``stages_0``.. of a ConvNeXt,
``blocks_11`` of a ViT). Models that timm wraps module by module (CNNs: a ``FeatureListNet``) run here
module by module, so non-local blocks can go after the blocks of any stage that is an ``nn.Sequential``;
models whose features come from ``forward_intermediates`` (ViTs: a ``FeatureGetterNet``) are run whole and
take no inserted modules. The embedding is the global average of the last level.

Weights: ``pretrained=true`` takes timm's default weights for ``name`` (a timm name with a tag such as
``resnet50.a1_in1k``, or ``hf-hub:<repo>``), fetched by timm from the Hugging Face hub or its cache;
``pretrained_file=<path>`` loads a local file instead (timm's ``pretrained_cfg_overlay=dict(file=...)``,
read by timm with ``weights_only=True``) and never touches the network. timm drops the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
from timm.models import FeatureListNet
from torch import Tensor, nn

from models.backbones import StagedBackbone


class TimmBackbone(StagedBackbone):
    # A config stored in a checkpoint may not make it download or read weights (nets/stored.py): the
    # checkpoint holds them.
    STORED_CONFIG_LIMITS = {"pretrained": False, "pretrained_file": None}

    def __init__(
        self,
        *,
        name: str = "resnet18",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        out_indices: Sequence[int] | None = None,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        kwargs = {"features_only": True, "in_chans": in_chans}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if pretrained_file is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
        try:
            self.model = timm.create_model(name, pretrained=pretrained or pretrained_file is not None, **kwargs)
        except RuntimeError as e:
            if "Unknown model" not in str(e):
                raise
            raise ValueError(
                f"model.backbone.name={name!r} is not a timm model; list them with timm.list_models('<pattern>')"
            ) from e
        info = self.model.feature_info
        self.stage_names = [m.replace(".", "_") for m in info.module_name()]
        self.stage_channels = dict(zip(self.stage_names, info.channels(), strict=True))
        self.stage_strides = dict(zip(self.stage_names, info.reduction(), strict=True))
        self.name = name

    @property
    def modular(self) -> bool:
        """True when timm runs the model module by module (its stages are modules here)."""
        return isinstance(self.model, FeatureListNet)

    def stage_blocks(self, stage: str) -> nn.Sequential:
        if stage not in self.stage_names:
            raise ValueError(f"unknown stage {stage!r}; timm's {self.name} has stages {self.stage_names}")
        module = self.model[stage] if self.modular else None
        if not isinstance(module, nn.Sequential):
            kind = type(module).__name__ if module is not None else "a forward_intermediates level"
            raise ValueError(
                f"timm's {self.name} stage {stage!r} is {kind}, not an nn.Sequential of blocks: modules can only "
                f"be inserted after the blocks of sequential stages (ResNet-like models)"
            )
        return module

    def forward_stages(self, x: Tensor, stages: Sequence[str] | None = None) -> dict[str, Tensor]:
        wanted = list(stages) if stages is not None else list(self.stage_names)
        for s in wanted:
            if s not in self.stage_names:
                raise ValueError(f"unknown stage {s!r}; timm's {self.name} has stages {self.stage_names}")
        if not self.modular:
            maps = dict(zip(self.stage_names, self.model(x), strict=True))
            return {s: maps[s] for s in wanted}
        last = max(self.stage_names.index(s) for s in wanted)
        out = {}
        for name, module in self.model.items():
            if name in self.stage_names and any(k.startswith(f"{name}_") for k in self.inserted):
                for i, block in enumerate(module):
                    x = block(x)
                    key = self.inserted_key(name, i)
                    if key in self.inserted:
                        x = self.inserted[key](x)
            else:
                x = module(x)
            if name in wanted:
                out[name] = x
            if name == self.stage_names[last]:
                break
        return out
