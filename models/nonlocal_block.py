"""Non-local blocks (Wang et al., "Non-local Neural Networks", CVPR 2018) and their insertion into a backbone.

One block serves 2D maps ``(B, C, H, W)`` and 3D maps ``(B, C, T, H, W)``; positions are flattened to
``N = T*H*W`` (queries) and, after the optional max-pool subsampling of phi and g, ``M`` (keys/values):

    z = x + BN(W_z y),   y_i = 1/C(x) * sum_j f(x_i, x_j) g(x_j)

    embedded_gaussian  f = exp(theta_i . phi_j [/ sqrt(C')]), C = sum_j f   -> softmax attention
    gaussian           f = exp(x_i . x_j [/ sqrt(C)]),        C = sum_j f   -> softmax attention on x itself
    dot_product        f = theta_i . phi_j,                   C = M         -> computed as theta (phi^T g) / M
    concatenation      f = ReLU(w^T [theta_i, phi_j]),        C = M         -> explicit, in chunks of queries

The softmax variants go through ``scaled_dot_product_attention`` so that a fused kernel (flash or
memory-efficient) avoids holding the N x M matrix; dot_product never forms it (associativity);
concatenation cannot be factorised and is computed in chunks of queries to bound memory. The BatchNorm
after W_z starts with gamma = beta = 0, so an inserted block is the identity at initialisation and a
pretrained backbone keeps its behaviour until the block learns something.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones import StagedBackbone

PAIRWISE = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")


class NonLocalBlock(nn.Module):
    """Residual non-local block.

    Args:
        in_channels: channels C of the map (kept by the block).
        dim: 2 for ``(B, C, H, W)`` maps, 3 for ``(B, C, T, H, W)`` maps.
        mode: pairwise function, one of ``PAIRWISE``.
        inner_channels: C' of theta, phi and g; ``in_channels // 2`` by default.
        subsample: max-pool phi and g by 2 in space (not in time), as in the paper; N stays the same,
            the number of keys M drops 4x.
        scale: divide the softmax logits by sqrt of their channel count (softmax modes only).
        chunk_size: queries per chunk for ``concatenation`` (bounds its N x M memory).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        dim: int = 2,
        mode: str = "embedded_gaussian",
        inner_channels: int | None = None,
        subsample: bool = False,
        scale: bool = False,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        if mode not in PAIRWISE:
            raise ValueError(f"non-local mode={mode!r} is unknown; choose one of {PAIRWISE}")
        if dim not in (2, 3):
            raise ValueError(f"non-local dim={dim} must be 2 (images) or 3 (clips)")
        if scale and mode not in ("embedded_gaussian", "gaussian"):
            raise ValueError(f"scale=True only applies to the softmax modes, not mode={mode!r}")
        self.mode, self.dim, self.scale, self.chunk_size = mode, dim, scale, chunk_size
        inner = inner_channels or max(in_channels // 2, 1)
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.g = conv(in_channels, inner, 1)
        if mode != "gaussian":
            self.theta = conv(in_channels, inner, 1)
            self.phi = conv(in_channels, inner, 1)
        if mode == "concatenation":
            # w_f^T [theta_i, phi_j] split into its theta and phi halves: ReLU(a_i + b_j).
            self.w_theta = nn.Parameter(torch.randn(inner) / math.sqrt(2 * inner))
            self.w_phi = nn.Parameter(torch.randn(inner) / math.sqrt(2 * inner))
        # ceil_mode keeps odd borders and lets 1x1 maps through (small inputs, late stages).
        pool = nn.MaxPool2d(2, ceil_mode=True) if dim == 2 else nn.MaxPool3d((1, 2, 2), ceil_mode=True)
        self.sub = pool if subsample else nn.Identity()
        self.out = conv(inner, in_channels, 1)
        self.bn = (nn.BatchNorm2d if dim == 2 else nn.BatchNorm3d)(in_channels)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries ``(B, N, Ck)``, keys ``(B, M, Ck)`` and values ``(B, M, C')``, position-major."""
        if self.mode == "gaussian":
            q, k = x, self.sub(x)
        else:
            q, k = self.theta(x), self.sub(self.phi(x))
        v = self.sub(self.g(x))
        # Contiguous (position, channel) layout: SDPA's fused kernels need a unit stride on the last dim and
        # otherwise fall back to the math path, which materialises the N x M matrix.
        return tuple(t.flatten(2).transpose(1, 2).contiguous() for t in (q, k, v))  # type: ignore[return-value]

    def aggregate(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``y = normalised f(q, k) @ v``: ``(B, N, C')``."""
        m = k.shape[1]
        if self.mode in ("embedded_gaussian", "gaussian"):
            scale = 1.0 / math.sqrt(q.shape[-1]) if self.scale else 1.0
            y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)
            return y[:, 0]  # (B, N, C')
        if self.mode == "dot_product":
            return q @ (k.transpose(1, 2) @ v) / m  # (B, N, Ck) @ (B, Ck, C')
        a = q @ self.w_theta  # (B, N)
        b = k @ self.w_phi  # (B, M)
        chunks = [
            F.relu(a_c[:, :, None] + b[:, None, :]) @ v / m  # (B, n_c, M) @ (B, M, C')
            for a_c in a.split(self.chunk_size, dim=1)
        ]
        return torch.cat(chunks, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.dim + 2:
            raise ValueError(f"a {self.dim}D non-local block needs a {self.dim + 2}-d map; got {tuple(x.shape)}")
        y = self.aggregate(*self.embed(x))  # (B, N, C')
        y = y.transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])  # (B, C', *spatial)
        return x + self.bn(self.out(y))


def add_non_local(
    *,
    backbone: StagedBackbone,
    stages: Mapping[str, Sequence[int]],
    mode: str = "embedded_gaussian",
    inner_ratio: float = 0.5,
    subsample: bool = True,
    scale: bool = False,
) -> StagedBackbone:
    """Insert a non-local block after each listed residual block: ``stages={"layer3": [1, 3]}``.

    Block indices count from 0 within the stage; negative ones count from the end (``-2`` is "before the
    last block", the paper's placement). The blocks are 2D or 3D after the backbone's ``is_3d`` and take
    the stage's channel count. Everything is validated before anything is inserted. Returns the backbone.
    """
    if not isinstance(stages, Mapping) or not stages:
        raise ValueError(
            f"model.non_local.stages={stages!r} must map stage names to block indices, "
            f"e.g. {{layer3: [1, 3]}}; stages of this backbone: {backbone.stage_names}"
        )
    if not 0 < inner_ratio <= 1:
        raise ValueError(f"model.non_local.inner_ratio={inner_ratio} must be in (0, 1]")
    keys: list[tuple[str, int]] = []
    for stage, blocks in stages.items():
        if stage not in backbone.stage_names:
            raise ValueError(
                f"model.non_local.stages names stage {stage!r}; this backbone "
                f"({type(backbone).__name__}) has stages {backbone.stage_names}"
            )
        n = len(backbone.stage_blocks(stage))
        if isinstance(blocks, int | str) or not blocks:
            raise ValueError(f"model.non_local.stages.{stage}={blocks!r} must be a non-empty list of block indices")
        for i in blocks:
            if not isinstance(i, int) or not -n <= i < n:
                raise ValueError(
                    f"model.non_local.stages.{stage} has block index {i!r}; stage {stage!r} has "
                    f"{n} blocks, so indices must be in [{-n}, {n - 1}]"
                )
            key = (stage, i % n)
            if key in keys or backbone.inserted_key(stage, i % n) in backbone.inserted:
                raise ValueError(f"model.non_local.stages.{stage}: block {i % n} already has a module after it")
            keys.append(key)
    for stage, i in keys:
        channels = backbone.stage_channels[stage]
        block = NonLocalBlock(
            in_channels=channels,
            dim=3 if backbone.is_3d else 2,
            mode=mode,
            inner_channels=max(int(channels * inner_ratio), 1),
            subsample=subsample,
            scale=scale,
        )
        backbone.insert_after(stage, i, block)
    return backbone
