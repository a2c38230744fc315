"""RandAugment (Cubuk et al., 2020) from albumentations transforms.

On each call it draws ``num_ops`` operations uniformly (with replacement, applied in the drawn order) from
``ops``, each at the fixed strength ``magnitude`` out of ``max_magnitude`` (30, torchvision's scale).
Ops with a direction (shear, translate, rotate, brightness, colour, contrast) take a random sign.
Strengths follow torchvision's ``RandAugment`` at the same magnitude, except sharpness, which only
sharpens (albumentations' ``Sharpen`` cannot blur).

It is an albumentations composition (``RandomOrder``), so inside a ``Compose`` called with ``images=`` a
clip gets one draw: the same ops at the same signs for every frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import albumentations as A
import cv2

OpBuilder = Callable[[float, float], A.BasicTransform]  # (strength in [0, 1], fill) -> transform


def _signed(make: Callable[[float], A.BasicTransform], value: float) -> A.BasicTransform:
    return A.OneOf([make(value), make(-value)], p=1.0)


def _affine(value: float, fill: float, **kwargs) -> A.BasicTransform:
    return A.Affine(**kwargs, border_mode=cv2.BORDER_CONSTANT, fill=fill, p=1.0)


def _jitter(kind: str, value: float) -> A.BasicTransform:
    factors = {"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0)}
    factors[kind] = (1.0 + value, 1.0 + value)
    return A.ColorJitter(**factors, hue=(0.0, 0.0), p=1.0)


def _posterize(m: float, fill: float) -> A.BasicTransform:
    bits = 8 - round(4 * m)
    return A.NoOp() if bits >= 8 else A.Posterize(num_bits=(bits, bits), p=1.0)


OPS: dict[str, OpBuilder] = {
    "identity": lambda m, fill: A.NoOp(),
    "shear_x": lambda m, fill: _signed(
        lambda v: _affine(v, fill, shear={"x": (v, v), "y": (0.0, 0.0)}), math.degrees(math.atan(0.3 * m))
    ),
    "shear_y": lambda m, fill: _signed(
        lambda v: _affine(v, fill, shear={"x": (0.0, 0.0), "y": (v, v)}), math.degrees(math.atan(0.3 * m))
    ),
    "translate_x": lambda m, fill: _signed(
        lambda v: _affine(v, fill, translate_percent={"x": (v, v), "y": (0.0, 0.0)}), 150 / 331 * m
    ),
    "translate_y": lambda m, fill: _signed(
        lambda v: _affine(v, fill, translate_percent={"x": (0.0, 0.0), "y": (v, v)}), 150 / 331 * m
    ),
    "rotate": lambda m, fill: _signed(lambda v: _affine(v, fill, rotate=(v, v)), 30.0 * m),
    "brightness": lambda m, fill: _signed(lambda v: _jitter("brightness", v), 0.9 * m),
    "color": lambda m, fill: _signed(lambda v: _jitter("saturation", v), 0.9 * m),
    "contrast": lambda m, fill: _signed(lambda v: _jitter("contrast", v), 0.9 * m),
    "sharpness": lambda m, fill: A.Sharpen(alpha=(0.9 * m, 0.9 * m), lightness=(1.0, 1.0), p=1.0),
    "posterize": _posterize,
    "solarize": lambda m, fill: A.Solarize(threshold_range=(1.0 - m, 1.0 - m), p=1.0),
    "autocontrast": lambda m, fill: A.AutoContrast(p=1.0),
    "equalize": lambda m, fill: A.Equalize(p=1.0),
}


class RandAugment(A.RandomOrder):
    """``num_ops`` ops per call out of ``ops`` (default: all of ``OPS``) at ``magnitude / max_magnitude``.

    ``fill``: the value of pixels that shear, translate and rotate uncover.
    """

    def __init__(
        self,
        *,
        num_ops: int = 2,
        magnitude: float = 9,
        max_magnitude: float = 30,
        ops: Sequence[str] | None = None,
        fill: float = 128,
        p: float = 1.0,
    ) -> None:
        names = list(OPS) if ops is None else list(ops)
        unknown = [n for n in names if n not in OPS]
        if unknown or not names:
            raise ValueError(f"RandAugment: unknown ops {unknown or names}; choose from {list(OPS)}")
        if int(num_ops) != num_ops or num_ops < 0:
            raise ValueError(f"RandAugment: num_ops={num_ops} must be a non-negative integer")
        if not 0 <= magnitude <= max_magnitude:
            raise ValueError(f"RandAugment: magnitude={magnitude} must be in [0, max_magnitude={max_magnitude}]")
        strength = magnitude / max_magnitude
        super().__init__([OPS[n](strength, fill) for n in names], n=int(num_ops), replace=True, p=p)
        self.op_names, self.magnitude, self.max_magnitude = names, magnitude, max_magnitude

    def __repr__(self) -> str:
        magnitude = f"{self.magnitude}/{self.max_magnitude}"
        return f"RandAugment(num_ops={self.n}, magnitude={magnitude}, ops={self.op_names})"
