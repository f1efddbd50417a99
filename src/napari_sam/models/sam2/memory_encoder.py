"""SAM 2's memory encoder: a plane's features fused with its predicted mask into memory.

The mask is downsampled to the feature grid by strided convolutions, added to the projected
features, mixed by two ConvNeXt blocks and compressed to the memory's width (64 channels).
Parameter names follow Meta's ``sam2`` so that its checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from napari_sam.models.common import LayerNorm2d
from napari_sam.models.sam2.positions import sine_grid


class MaskDownsampler(nn.Module):
    """Strided convolutions from a 1-channel mask to ``embed_dim`` channels.

    Each step divides the size by ``stride`` and multiplies the channels by ``stride ** 2``
    (convolution, LayerNorm2d, GELU); a final 1x1 convolution gives ``embed_dim`` channels.

    Parameters
    ----------
    embed_dim : int
        Output channels.
    kernel_size, stride, padding : int
        Of each strided convolution.
    total_stride : int
        Size reduction of the whole stack, a power of ``stride``.
    """

    def __init__(self, embed_dim: int = 256, *, kernel_size: int = 3, stride: int = 2,
                 padding: int = 1, total_stride: int = 16) -> None:
        super().__init__()
        steps = round(math.log(total_stride, stride))
        if stride**steps != total_stride:
            raise ValueError(f"total_stride={total_stride} is not a power of stride={stride}")
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(steps):
            wider = channels * stride**2
            layers += [nn.Conv2d(channels, wider, kernel_size, stride, padding),
                       LayerNorm2d(wider), nn.GELU()]
            channels = wider
        layers.append(nn.Conv2d(channels, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` masks to ``(B, embed_dim, H / total_stride, W / total_stride)``."""
        return self.encoder(masks)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise convolution, LayerNorm, pointwise MLP, layer scale, residual.

    Parameters
    ----------
    dim : int
        Channels.
    kernel_size : int
        Of the depthwise convolution (padded to keep the size).
    layer_scale : float
        Initial value of the per-channel output scale ``gamma``.
    """

    def __init__(self, dim: int = 256, *, kernel_size: int = 7, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        # Normalises channels-last (the layout of the MLP); same parameters as a LayerNorm2d.
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, dim, h, w)`` to the same shape."""
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """A stack of ConvNeXt blocks."""

    def __init__(self, dim: int = 256, *, depth: int = 2, kernel_size: int = 7) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim, kernel_size=kernel_size) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Encode a plane's features and mask into memory (Meta's ``sam2`` ``MemoryEncoder``).

    Parameters
    ----------
    in_dim : int
        Channels of the image features.
    out_dim : int
        Channels of the memory.
    mask_stride : int
        Size reduction from the mask to the feature grid (16 for SAM 2).
    fuser_depth : int
        ConvNeXt blocks after the mask is added.
    """

    def __init__(self, *, in_dim: int = 256, out_dim: int = 64, mask_stride: int = 16,
                 fuser_depth: int = 2) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownsampler(in_dim, total_stride=mask_stride)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim, depth=fuser_depth)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, pix_feat: torch.Tensor, masks: torch.Tensor,
                skip_mask_sigmoid: bool = False) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Memory features and their position encoding.

        Parameters
        ----------
        pix_feat : (B, in_dim, h, w) tensor
            Image features of the plane (moved to the masks' device).
        masks : (B, 1, h * mask_stride, w * mask_stride) tensor
            Mask logits, or probabilities with ``skip_mask_sigmoid=True``.
        skip_mask_sigmoid : bool
            The masks are already in [0, 1].

        Returns
        -------
        dict
            ``"vision_features"``: (B, out_dim, h, w) memory; ``"vision_pos_enc"``: a list with
            its (B, out_dim, h, w) sine position encoding (as Meta's returns them).
        """
        # Channels-last on the CPU: its convolutions are faster so, and the channel-wise norms
        # and MLPs then need no copies.
        layout = torch.channels_last if masks.device.type == "cpu" else torch.contiguous_format

        # Masks down to the feature grid, added to the projected features.
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        masks = self.mask_downsampler(masks.contiguous(memory_format=layout))
        pix_feat = pix_feat.to(masks.device).contiguous(memory_format=layout)
        x = self.pix_feat_proj(pix_feat) + masks

        # Mixed by the ConvNeXt blocks and compressed to the memory's width.
        x = self.out_proj(self.fuser(x)).contiguous()

        batch, channels, height, width = x.shape
        pos = sine_grid(channels, height, width, x.device).to(x.dtype).repeat(batch, 1, 1, 1)
        return {"vision_features": x, "vision_pos_enc": [pos]}
