"""torchvision's video networks (S3D, MViT v1/v2, Video Swin) as ``StagedBackbone``s.

Each wrapper keeps torchvision's modules under torchvision's names (``features.5...``, ``blocks.3...``,
``patch_embed...``), so torchvision's weights load key for key; only the classifier is left out (the
``Net`` head takes its place). Stages are slices of torchvision's block list, cut where the resolution
changes; their maps are returned as ``(B, C, T, H, W)`` whatever the network keeps inside (channels-last
tokens in Swin, a class token plus flattened positions in MViT), so ROI heads, fusion necks and
non-local blocks see the same kind of map as from a 3D CNN.

Flow of ``forward_stages(x)``:

    clip (B, 3, T, H, W) -> embed_input -> state -> for each block: run_block(block, state)
                                                     [inserted module on to_map(state), back by from_map]
                         -> after the last block: finish (the final norm) -> to_map -> (B, C, t, h, w)

The pooled embedding is torchvision's pre-logits: S3D's (2, 7, 7) average pool averaged over the
positions, Swin's global average of the normalised tokens, MViT's normalised class token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import video as tvv

from models.backbones import StagedBackbone

State = object


class TorchvisionVideo(StagedBackbone):
    """Base of the wrappers: the stage loop over a state that is not necessarily a map.

    Subclasses set ``arch`` (the torchvision builder's name), ``stage_names``, ``stage_channels``,
    ``stage_strides`` and ``self.stage_slices`` (stage -> (module list, start, stop)).
    """

    is_3d = True
    arch: str

    def stage_blocks(self, stage: str) -> nn.Sequential:
        if stage not in self.stage_names:
            raise ValueError(f"unknown stage {stage!r}; this backbone has {self.stage_names}")
        modules, start, stop = self.stage_slices[stage]
        return nn.Sequential(*modules[start:stop])  # a view: the modules stay registered where torchvision has them

    # The state between blocks, and how a map is read from it and written back.
    def embed_input(self, x: Tensor) -> State:
        raise NotImplementedError

    def run_block(self, block: nn.Module, state: State) -> State:
        return block(state)

    def to_map(self, state: State) -> Tensor:
        return state  # type: ignore[return-value]

    def from_map(self, fmap: Tensor, state: State) -> State:
        return fmap

    def finish(self, state: State) -> State:
        return state

    def pool_state(self, state: State) -> Tensor:
        return self.pool(self.to_map(state))

    def _run(self, x: Tensor, stages: Sequence[str]) -> tuple[dict[str, Tensor], State]:
        for s in stages:
            self.stage_blocks(s)  # validates the name
        last = max(self.stage_names.index(s) for s in stages)
        out = {}
        state = self.embed_input(x)
        for name in self.stage_names[: last + 1]:
            for i, block in enumerate(self.stage_blocks(name)):
                state = self.run_block(block, state)
                key = self.inserted_key(name, i)
                if key in self.inserted:
                    state = self.from_map(self.inserted[key](self.to_map(state)), state)
            if name == self.stage_names[-1]:
                state = self.finish(state)
            if name in stages:
                out[name] = self.to_map(state)
        return out, state

    def forward_stages(self, x: Tensor, stages: Sequence[str] | None = None) -> dict[str, Tensor]:
        return self._run(x, list(stages) if stages is not None else list(self.stage_names))[0]

    def forward_pooled(self, x: Tensor) -> Tensor:
        return self.pool_state(self._run(x, [self.stage_names[-1]])[1])  # (B, num_features)


class S3D(TorchvisionVideo):
    """S3D (Xie et al. 2018, separable 3D Inception): stages ``conv1`` (stride 2), ``conv2`` (4), ``mixed3``
    (8), ``mixed4`` (16), ``mixed5`` (32); max-pools are the first block of the stage they start."""

    arch = "s3d"
    stage_names = ["conv1", "conv2", "mixed3", "mixed4", "mixed5"]
    stage_channels = dict(zip(stage_names, [64, 192, 480, 832, 1024], strict=True))
    stage_strides = dict(zip(stage_names, [2, 4, 8, 16, 32], strict=True))
    # torchvision's ``features`` indices [start, stop) of each stage.
    _CUTS = {"conv1": (0, 1), "conv2": (1, 4), "mixed3": (4, 7), "mixed4": (7, 13), "mixed5": (13, 16)}

    def __init__(self) -> None:
        super().__init__()
        self.features = tvv.s3d(weights=None).features
        self.stage_slices = {name: (self.features, a, b) for name, (a, b) in self._CUTS.items()}

    def embed_input(self, x: Tensor) -> Tensor:
        if x.shape[2] < 8:
            # Time is halved by the stem and mixed3's pool, then pooled by 2 without padding before mixed5.
            raise ValueError(f"S3D needs clips of at least 8 frames; got {x.shape[2]} (input {tuple(x.shape)})")
        return x

    def pool_state(self, state: Tensor) -> Tensor:
        # torchvision's AvgPool3d((2, 7, 7), stride 1) before the 1x1x1 classifier, then the mean over the
        # positions; the window is clipped to the map for inputs smaller than 16x224x224.
        t, h, w = state.shape[2:]
        return F.avg_pool3d(state, (min(2, t), min(7, h), min(7, w)), stride=1).mean((2, 3, 4))  # (B, 1024)


_SWINS = {"swin3d_t": tvv.swin3d_t, "swin3d_s": tvv.swin3d_s, "swin3d_b": tvv.swin3d_b}


class Swin3D(TorchvisionVideo):
    """Video Swin Transformer (Liu et al. 2022): stages ``stage1``..``stage4`` at strides 4, 8, 16, 32 (a
    stage after the first starts with its patch merging); ``arch`` swin3d_t | swin3d_s | swin3d_b."""

    stage_names = ["stage1", "stage2", "stage3", "stage4"]

    def __init__(self, *, arch: str = "swin3d_t") -> None:
        super().__init__()
        if arch not in _SWINS:
            raise ValueError(f"model.backbone.arch={arch!r} is not a Video Swin; choose one of {sorted(_SWINS)}")
        self.arch = arch
        net = _SWINS[arch](weights=None)
        self.patch_embed, self.pos_drop, self.features, self.norm = (
            net.patch_embed,
            net.pos_drop,
            net.features,
            net.norm,
        )
        # features = [blocks1, merge, blocks2, merge, blocks3, merge, blocks4]; a flat list lets stages be slices.
        self.flat = [m for i, f in enumerate(self.features) for m in (f if i % 2 == 0 else [f])]
        bounds, start = {}, 0
        for i, name in enumerate(self.stage_names):
            stop = start + len(self.features[2 * i]) + (1 if i else 0)
            bounds[name] = (self.flat, start, stop)
            start = stop
        self.stage_slices = bounds
        dim = net.patch_embed.proj.out_channels
        self.stage_channels = {name: dim * 2**i for i, name in enumerate(self.stage_names)}
        self.stage_strides = {name: 4 * 2**i for i, name in enumerate(self.stage_names)}

    def embed_input(self, x: Tensor) -> Tensor:
        return self.pos_drop(self.patch_embed(x))  # (B, t, h, w, C)

    def to_map(self, state: Tensor) -> Tensor:
        return state.permute(0, 4, 1, 2, 3)  # (B, C, t, h, w)

    def from_map(self, fmap: Tensor, state: Tensor) -> Tensor:
        return fmap.permute(0, 2, 3, 4, 1)  # (B, t, h, w, C)

    def finish(self, state: Tensor) -> Tensor:
        return self.norm(state)


_MVITS = {"mvit_v1_b": tvv.mvit_v1_b, "mvit_v2_s": tvv.mvit_v2_s}


class MViT(TorchvisionVideo):
    """Multiscale Vision Transformers (Fan et al. 2021; v2: Li et al. 2022): stages ``stage1``..``stage4``,
    cut at the blocks that pool the queries in space (strides 4, 8, 16, 32).

    Any clip size works: the token grid is read from the patch embedding, v2's relative positions are
    interpolated by torchvision, and v1's absolute positional embeddings (learnt for 16x224x224) are
    interpolated here (bilinear in space, linear in time) when the grid differs.
    """

    stage_names = ["stage1", "stage2", "stage3", "stage4"]

    def __init__(self, *, arch: str = "mvit_v2_s") -> None:
        super().__init__()
        if arch not in _MVITS:
            raise ValueError(f"model.backbone.arch={arch!r} is not an MViT; choose one of {sorted(_MVITS)}")
        self.arch = arch
        net = _MVITS[arch](weights=None)
        self.conv_proj, self.pos_encoding, self.blocks, self.norm = (
            net.conv_proj,
            net.pos_encoding,
            net.blocks,
            net.norm,
        )
        starts = [0] + [i for i, b in enumerate(self.blocks) if i and _pools_space(b)]
        if len(starts) != len(self.stage_names):
            raise ValueError(f"{arch}: expected 3 query-pooling blocks, found them at {starts[1:]}")
        stops = [*starts[1:], len(self.blocks)]
        self.stage_slices = {n: (self.blocks, a, b) for n, a, b in zip(self.stage_names, starts, stops, strict=True)}
        self.stage_channels = {
            n: _out_channels(self.blocks[b - 1]) for n, b in zip(self.stage_names, stops, strict=True)
        }
        stride = self.conv_proj.stride[1]
        self.stage_strides = {name: stride * 2**i for i, name in enumerate(self.stage_names)}

    def embed_input(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        x = self.conv_proj(x)  # (B, C, t, h, w)
        thw = tuple(x.shape[2:])
        return self.add_positions(x.flatten(2).transpose(1, 2), thw), thw  # (B, 1 + t*h*w, C)

    def add_positions(self, tokens: Tensor, thw: tuple[int, int, int]) -> Tensor:
        pe = self.pos_encoding
        if pe.spatial_pos is None or (pe.temporal_size, *pe.spatial_size) == thw:
            return pe(tokens)  # v2 (class token only), or v1 at the size it was built for
        t, h, w = thw
        (h0, w0), c = pe.spatial_size, tokens.shape[-1]
        spatial = pe.spatial_pos.reshape(1, h0, w0, c).permute(0, 3, 1, 2)  # (1, C, h0, w0)
        spatial = F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=False)
        temporal = F.interpolate(pe.temporal_pos.T[None], size=t, mode="linear", align_corners=False)  # (1, C, t)
        pos = temporal[0].T[:, None, :] + spatial[0].flatten(1).T[None]  # (t, h*w, C)
        pos = torch.cat([pe.class_pos[None], pos.reshape(-1, c)])  # (1 + t*h*w, C)
        cls = pe.class_token.expand(tokens.shape[0], 1, -1)
        return torch.cat([cls, tokens], 1) + pos  # (B, 1 + t*h*w, C)

    def run_block(self, block: nn.Module, state: tuple[Tensor, tuple]) -> tuple[Tensor, tuple]:
        return block(*state)

    def to_map(self, state: tuple[Tensor, tuple]) -> Tensor:
        tokens, (t, h, w) = state
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, t, h, w)  # (B, C, t, h, w)

    def from_map(self, fmap: Tensor, state: tuple[Tensor, tuple]) -> tuple[Tensor, tuple]:
        tokens, thw = state
        return torch.cat([tokens[:, :1], fmap.flatten(2).transpose(1, 2)], 1), thw

    def finish(self, state: tuple[Tensor, tuple]) -> tuple[Tensor, tuple]:
        return self.norm(state[0]), state[1]

    def pool_state(self, state: tuple[Tensor, tuple]) -> Tensor:
        return state[0][:, 0]  # the class token (B, C), torchvision's pre-logits


def _pools_space(block: nn.Module) -> bool:
    pool = block.attn.pool_q
    return pool is not None and pool.pool.stride[1] > 1


def _out_channels(block: nn.Module) -> int:
    return [m for m in block.mlp.modules() if isinstance(m, nn.Linear)][-1].out_features
