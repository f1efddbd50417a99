"""The instance decoder: foreground and distance maps from a SAM image embedding, in one pass.

A UNETR-style convolutional decoder over the image encoder, as micro-sam trains it for its
automatic instance segmentation (AIS). Module names follow the layout of micro-sam's decoder
checkpoints (``decoder_state``), so those load unchanged.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F


class DoubleConv(nn.Module):
    """Two 3 x 3 convolutions, each after an instance normalisation and followed by a ReLU.

    Parameters
    ----------
    in_channels, out_channels : int
        Widths of the input and of both convolutions' outputs.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.InstanceNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Upsample(nn.Module):
    """Double the resolution and change the width.

    Parameters
    ----------
    in_channels, out_channels : int
        Widths.
    transposed : bool
        A 2 x 2 transposed convolution of stride 2 (weights under ``block``); otherwise
        bilinear interpolation and a 1 x 1 convolution (weights under ``conv``). micro-sam's
        checkpoints use either.
    """

    def __init__(self, in_channels: int, out_channels: int, *, transposed: bool) -> None:
        super().__init__()
        self.transposed = transposed
        if transposed:
            self.block = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return self.block(x)
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class Conv3x3(nn.Module):
    """A 3 x 3 convolution that keeps the size (its weights under ``block``, as in the layout)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ImageBatchNorm(nn.BatchNorm2d):
    """Batch normalisation that can normalise each image by its own statistics.

    Parameters
    ----------
    channels : int
        Width.
    image_statistics : bool
        True: every image of the batch is normalised by its own per-channel mean and variance,
        in training and in evaluation alike, and the running statistics are kept unchanged and
        unused. False: PyTorch's batch normalisation (batch statistics in training, running
        statistics in evaluation).
    """

    def __init__(self, channels: int, *, image_statistics: bool) -> None:
        super().__init__(channels)
        self.image_statistics = image_statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_statistics:
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        return super().forward(x)


class UpBlock(nn.Module):
    """Double the resolution, then a 3 x 3 convolution, batch normalisation and ReLU.

    Parameters
    ----------
    in_channels, out_channels : int
        Widths.
    transposed, image_statistics : bool
        See :class:`Upsample` and :class:`ImageBatchNorm`.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, transposed: bool, image_statistics: bool
    ) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Upsample(in_channels, out_channels, transposed=transposed),
            Conv3x3(out_channels),
            ImageBatchNorm(out_channels, image_statistics=image_statistics),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DecoderPath(nn.Module):
    """The main path: at each stage, upsample, join the skip features of that size, convolve.

    The skip features of each stage are twice as wide as the upsampled path; only their middle
    half of channels is joined, as in micro-sam's network (torch-em's UNETR crops its skip
    features centrally in every dimension after the batch, channels included), so the other
    channels of the skip features feed only the next, finer skip stage.

    Parameters
    ----------
    widths : sequence of int
        Width at the input and after each stage, e.g. ``(512, 256, 128, 64)``.
    transposed : bool
        See :class:`Upsample`.
    """

    def __init__(self, widths: tuple[int, ...], *, transposed: bool) -> None:
        super().__init__()
        pairs = list(pairwise(widths))
        self.samplers = nn.ModuleList(Upsample(a, b, transposed=transposed) for a, b in pairs)
        self.blocks = nn.ModuleList(DoubleConv(2 * b, b) for _, b in pairs)

    def forward(self, x: torch.Tensor, skips: tuple[torch.Tensor, ...]) -> torch.Tensor:
        for sampler, block, skip in zip(self.samplers, self.blocks, skips):
            x = sampler(x)
            start = (skip.shape[1] - x.shape[1]) // 2
            x = block(torch.cat([x, skip[:, start : start + x.shape[1]]], dim=1))
        return x


class InstanceDecoder(nn.Module):
    """Foreground probability, distance to the object centre and to its boundary, per pixel.

    With micro-sam's weights the three output channels are the foreground probability, the
    distance to the object's centre and the inverted distance to its boundary, both scaled to
    [0, 1] and lowest deep inside an object (where AIS seeds its watershed).

    The embedding is upsampled 16-fold twice: once in four single steps that give skip
    features at 2, 4, 8 and 16 times its resolution, once along the main path of convolution
    stages that joins them. The decoder sees only the embedding (no intermediate encoder
    features, no image).

    Parameters
    ----------
    embed_dim : int
        Channels of the image embedding (256 for every SAM encoder).
    features : int
        Width at the finest level; the levels above are 2, 4 and 8 times as wide.
    out_channels : int
        Output maps (micro-sam: foreground, centre distance, boundary distance).
    transposed : bool
        Upsample by transposed convolutions rather than interpolation (see :class:`Upsample`).
    image_statistics : bool
        Batch normalisation by each image's own statistics (see :class:`ImageBatchNorm`): what
        micro-sam 1.8.14 computes, because it runs the decoder in training mode on one image
        at a time. False: the checkpoint's running statistics.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        features: int = 64,
        out_channels: int = 3,
        transposed: bool = False,
        image_statistics: bool = True,
    ) -> None:
        super().__init__()
        widths = (8 * features, 4 * features, 2 * features, features)
        up = {"transposed": transposed, "image_statistics": image_statistics}
        # Skip features (names as in the layout): 2x, 4x, 8x, 16x the embedding's resolution.
        self.deconv1 = UpBlock(embed_dim, widths[0], **up)
        self.deconv2 = UpBlock(widths[0], widths[1], **up)
        self.deconv3 = UpBlock(widths[1], widths[2], **up)
        self.deconv4 = UpBlock(widths[2], widths[3], **up)
        # Main path, from the embedding's resolution to 8x, then to 16x.
        self.base = DoubleConv(embed_dim, widths[0])
        self.decoder = DecoderPath(widths, transposed=transposed)
        self.deconv_out = Upsample(features, features, transposed=transposed)
        # Head at 16x: the main path joined with the finest skip features.
        self.decoder_head = DoubleConv(2 * features, features)
        self.out_conv = nn.Conv2d(features, out_channels, kernel_size=1)

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """Predict the maps from image embeddings.

        Parameters
        ----------
        image_embeddings : (B, embed_dim, h, w) tensor
            Output of the image encoder.

        Returns
        -------
        (B, out_channels, 16 h, 16 w) tensor
            Sigmoid outputs in [0, 1] on the grid of the padded model input (16 h is the input
            size of every registry encoder); :meth:`Sam.postprocess_masks
            <napari_sam.models.sam.Sam.postprocess_masks>` maps them to the image.
        """
        # Skip features, each from the one before
        skip2 = self.deconv1(image_embeddings)
        skip4 = self.deconv2(skip2)
        skip8 = self.deconv3(skip4)
        skip16 = self.deconv4(skip8)

        # Main path up to 8x, joining the skips on the way
        x = self.decoder(self.base(image_embeddings), skips=(skip2, skip4, skip8))

        # Head at 16x
        x = self.decoder_head(torch.cat([self.deconv_out(x), skip16], dim=1))
        return torch.sigmoid(self.out_conv(x))
