"""SAM 2.1's image encoder: the Hiera trunk, a feature-pyramid neck, and the builders per size.

The state dict is laid out as in Meta's ``sam2`` (``trunk.*``, ``neck.convs.{i}.conv.*``), so the
image-encoder part of an official checkpoint loads unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from napari_sam.models.sam2.hiera import Hiera
from napari_sam.models.sam2.positions import sine_grid


class FpnNeck(nn.Module):
    """Feature pyramid over the trunk's stage outputs: 1x1 lateral convolutions to ``d_model``
    channels, plus the 2x nearest upsampled coarser level on the ``top_down_levels``.

    Parameters
    ----------
    backbone_channel_list : sequence of int
        Widths of the trunk's outputs, coarsest first; ``convs[i]`` maps the i-th of them.
    d_model : int
        Output width.
    top_down_levels : sequence of int
        Levels (0 = finest) that add the level above them; SAM 2.1 uses the two coarsest, so the
        two finest levels are lateral features only.
    """

    def __init__(self, *, backbone_channel_list: tuple[int, ...] = (768, 384, 192, 96),
                 d_model: int = 256, top_down_levels: tuple[int, ...] = (2, 3)):
        super().__init__()
        self.backbone_channel_list = list(backbone_channel_list)
        self.d_model = d_model
        self.top_down_levels = tuple(top_down_levels)
        self.convs = nn.ModuleList()
        for channels in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(channels, d_model, kernel_size=1))
            self.convs.append(lateral)

    def lateral(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 convolution of ``level`` (0 = finest), done as a matrix product over channels.

        Hiera's outputs are channels-last in memory, so the channels-last view needs no copy; the
        result is returned as a channels-first view of channels-last memory.
        """
        conv = self.convs[len(self.convs) - 1 - level].conv
        out = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)
        return out.permute(0, 3, 1, 2)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Stage outputs, finest first, to ``(pyramid, positions)``: two lists, finest first, of
        ``(B, d_model, h, w)`` tensors. The positions are shared expanded views (read-only)."""
        if len(features) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} feature maps, got {len(features)}")
        pyramid = [None] * len(features)
        above = None
        for level in reversed(range(len(features))):
            out = self.lateral(level, features[level])
            if above is not None and level in self.top_down_levels:
                out = out + F.interpolate(above, scale_factor=2.0, mode="nearest")
            pyramid[level] = above = out
        positions = [self.positions(x) for x in pyramid]
        return pyramid, positions

    def positions(self, x: torch.Tensor) -> torch.Tensor:
        """Sine positions of the grid of ``x`` ``(B, C, h, w)``, expanded over the batch."""
        b, c, h, w = x.shape
        grid = sine_grid(c, h, w, device=x.device)
        if grid.is_inference() and not torch.is_inference_mode_enabled():
            grid = grid.clone()  # cached under inference mode, which autograd would refuse
        return grid.to(x.dtype).expand(b, -1, -1, -1)


class Sam2ImageEncoder(nn.Module):
    """Trunk and neck, with SAM 2's output dictionary.

    Parameters
    ----------
    trunk : Hiera
    neck : FpnNeck
    scalp : int
        Number of coarsest pyramid levels left out of the output (1 in SAM 2.1: the stride-32
        level only feeds the top-down path).
    img_size : int
        Side of the square input the model is used at.
    """

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 1, *, img_size: int = 1024):
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(f"trunk widths {trunk.channel_list} do not match the neck's "
                             f"{neck.backbone_channel_list}")
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> dict:
        """Encode normalised images.

        Parameters
        ----------
        x : (B, 3, H, W) tensor
            ``H`` and ``W`` multiples of 32 (normally both ``img_size``).

        Returns
        -------
        dict
            ``"backbone_fpn"``: list of ``(B, 256, H / 4, W / 4)``, ``(B, 256, H / 8, W / 8)``,
            ``(B, 256, H / 16, W / 16)`` tensors (finest first); ``"vision_pos_enc"``: their sine
            positions, same shapes; ``"vision_features"``: the last (coarsest) of the pyramid.
            The pyramid is channels-last in memory (as most of sam2's is): ``reshape``, not
            ``view``. The positions are shared read-only views.
        """
        pyramid, positions = self.neck(self.trunk(x))
        if self.scalp > 0:
            pyramid, positions = pyramid[: -self.scalp], positions[: -self.scalp]
        return {
            "vision_features": pyramid[-1],
            "vision_pos_enc": positions,
            "backbone_fpn": pyramid,
        }


# SAM 2.1's trunk settings per size (sam2's configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml).
HIERA_CONFIGS = {
    "tiny": {"embed_dim": 96, "num_heads": 1, "stages": (1, 2, 7, 2),
             "global_blocks": (5, 7, 9), "window_sizes": (8, 4, 14, 7),
             "background_size": (7, 7)},
    "small": {"embed_dim": 96, "num_heads": 1, "stages": (1, 2, 11, 2),
              "global_blocks": (7, 10, 13), "window_sizes": (8, 4, 14, 7),
              "background_size": (7, 7)},
    "base_plus": {"embed_dim": 112, "num_heads": 2, "stages": (2, 3, 16, 3),
                  "global_blocks": (12, 16, 20), "window_sizes": (8, 4, 14, 7),
                  "background_size": (14, 14)},
    "large": {"embed_dim": 144, "num_heads": 2, "stages": (2, 6, 36, 4),
              "global_blocks": (23, 33, 43), "window_sizes": (8, 4, 16, 8),
              "background_size": (7, 7)},
}


def build_hiera_encoder(size: str, img_size: int = 1024) -> Sam2ImageEncoder:
    """SAM 2.1's image encoder of one size, with untrained weights.

    Parameters
    ----------
    size : {"tiny", "small", "base_plus", "large"}
    img_size : int
        Input side (a multiple of 32).

    Returns
    -------
    Sam2ImageEncoder
        In training mode, as any new module; load weights, then call ``.eval()``.
    """
    if size not in HIERA_CONFIGS:
        raise ValueError(f"unknown SAM 2.1 size {size!r}: choose one of {sorted(HIERA_CONFIGS)}")
    if img_size % 32:
        raise ValueError(f"img_size must be a multiple of 32, got {img_size}")
    trunk = Hiera(**HIERA_CONFIGS[size])
    neck = FpnNeck(backbone_channel_list=tuple(trunk.channel_list), d_model=256,
                   top_down_levels=(2, 3))
    return Sam2ImageEncoder(trunk, neck, scalp=1, img_size=img_size)
