"""The airbench94 network (K. Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", arXiv:2404.00498).

    (B, 3, 32, 32) -> whiten: 2x2 conv, 24 = 2 * 3 * 2 * 2 filters, no padding, then GELU  -> (B, 24, 31, 31)
                   -> block1, block2, block3: each conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU
                                              (B, w1, 15, 15) -> (B, w2, 7, 7) -> (B, w3, 3, 3)
                   -> max-pool 3 -> (B, w3)          (the head: a bias-free linear layer times 1/9, in models.net.Net)

What makes it train fast, and where each part lives in visfeat:
- ``whiten`` is initialised from the training images (``init_whitening``: the eigenvectors of the 2x2 patch
  covariance, scaled by 1/sqrt(eigenvalue + eps), and their negatives) and its weight is never trained; its
  bias trains for the first epochs only (trainer.callbacks.whitening.WhiteningInit does both).
- The 3x3 convs start as identities on their first ``in_channels`` filters (``dirac_``) after PyTorch's
  default init of the rest.
- BatchNorm weights are frozen at 1 (only the biases train), with eps 1e-12 and a high momentum
  (airbench's 0.6, i.e. PyTorch's ``momentum=0.4``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones import StagedBackbone


class Conv(nn.Conv2d):
    """3x3 'same' conv without bias whose first ``in_channels`` filters start as the identity."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        nn.init.dirac_(w[: w.size(1)])


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with a frozen unit weight; ``momentum`` in airbench's convention (weight of the old stats)."""

    def __init__(self, num_features: int, *, momentum: float, eps: float) -> None:
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class ConvGroup(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, *, bn_momentum: float, bn_eps: float) -> None:
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, momentum=bn_momentum, eps=bn_eps)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, momentum=bn_momentum, eps=bn_eps)
        self.activ = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))  # (B, C_out, H/2, W/2)
        return self.activ(self.norm2(self.conv2(x)))


class AirbenchNet(StagedBackbone):
    """airbench94's net without its head; stages ``block1``..``block3`` of widths ``widths``."""

    stage_names = ["block1", "block2", "block3"]

    def __init__(
        self,
        *,
        widths: Sequence[int] = (64, 256, 256),
        bn_momentum: float = 0.6,
        bn_eps: float = 1e-12,
        whiten_kernel_size: int = 2,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(widths) != 3 or any(int(w) < 1 for w in widths):
            raise ValueError(f"model.backbone.widths={list(widths)} must be three positive channel counts")
        if not 0.0 <= bn_momentum < 1.0:
            raise ValueError(f"model.backbone.bn_momentum={bn_momentum} must be in [0, 1) (airbench's 0.6)")
        k = int(whiten_kernel_size)
        whiten_width = 2 * in_chans * k * k
        self.whiten_kernel_size = k
        self.stem = nn.Sequential(nn.Conv2d(in_chans, whiten_width, k, padding=0, bias=True), nn.GELU())
        self.stem[0].weight.requires_grad = False  # set from the data (init_whitening), never trained
        widths = [int(w) for w in widths]
        ins = [whiten_width, *widths[:-1]]
        for name, c_in, c_out in zip(self.stage_names, ins, widths, strict=True):
            group = ConvGroup(c_in, c_out, bn_momentum=bn_momentum, bn_eps=bn_eps)
            setattr(self, name, nn.Sequential(group))
        self.stage_channels = dict(zip(self.stage_names, widths, strict=True))
        self.stage_strides = {"block1": 2, "block2": 4, "block3": 8}
        # Whether the whitening holds data statistics: saved with the weights, so a net fine-tuned from a
        # checkpoint keeps the whitening it was trained with (trainer.callbacks.whitening.WhiteningInit checks it).
        self.register_buffer("whitened", torch.zeros((), dtype=torch.bool))

    @property
    def whiten(self) -> nn.Conv2d:
        return self.stem[0]

    def forward_pooled(self, x: Tensor) -> Tensor:
        fmap = self.forward_stages(x, ["block3"])["block3"]  # (B, w3, 3, 3) for 32x32 inputs
        # airbench's MaxPool2d(3): the global max of a 3x3 map; larger inputs get the max of those windows.
        return F.max_pool2d(fmap, 3).amax((2, 3))  # (B, w3)

    @torch.no_grad()
    def init_whitening(self, images: Tensor, *, eps: float = 5e-4) -> None:
        """Whitening filters from normalised training images ``(N, C, H, W)``: the eigenvectors of the
        covariance of all k x k patches, scaled by 1/sqrt(eigenvalue + eps), then their negatives (the GELU
        after it keeps both signs). The bias is set to zero."""
        w = self.whiten.weight
        c, k = w.shape[1], self.whiten_kernel_size
        if images.ndim != 4 or images.shape[1] != c:
            raise ValueError(f"init_whitening needs images (N, {c}, H, W); got {tuple(images.shape)}")
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H', W', k, k)
        patches = patches.transpose(1, 3).reshape(-1, c * k * k)  # (N * H' * W', C*k*k), airbench's layout
        cov = patches.T @ patches / len(patches)  # (C*k*k, C*k*k), uncentred as in airbench
        eigenvalues, eigenvectors = torch.linalg.eigh(cov, UPLO="U")  # float32, as airbench
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # largest first
        # a patch is flattened in (C, kh, kw) order, so each eigenvector reshapes straight into a filter
        filters = eigenvectors.reshape(c * k * k, c, k, k) / torch.sqrt(eigenvalues + eps).view(-1, 1, 1, 1)
        w.copy_(torch.cat([filters, -filters]).to(w.dtype))
        self.whiten.bias.zero_()
        self.whitened.fill_(True)
