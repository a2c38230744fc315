"""Helpers the checkpoint-format modules share (nets/formats.py lists the formats)."""

from __future__ import annotations

from torch import Tensor, nn


def to_head(key: str, value: Tensor, target: str, reshaped: list[str]) -> tuple[str, Tensor]:
    """A classifier tensor as ``Net.head``'s (a 1x1x1 conv's weight flattened to a linear layer's)."""
    if target == "head.weight" and value.ndim > 2:
        flat = value.flatten(1)  # (num_classes, C, 1, 1, 1) -> (num_classes, C)
        reshaped.append(f"{key} {tuple(value.shape)} -> {target} {tuple(flat.shape)}")
        value = flat
    return target, value


def backbone_of(net: nn.Module, format_name: str, wants: tuple[type, ...]) -> nn.Module:
    backbone = getattr(net, "backbone", None)
    if not isinstance(backbone, wants):
        kinds = " or ".join(w.__name__ for w in wants)
        raise ValueError(
            f"a {format_name} checkpoint is for {kinds} backbones; this net's backbone is "
            f"{type(backbone).__name__} (pick the matching model=..., or model.pretrained_format=native)"
        )
    return backbone
