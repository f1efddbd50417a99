"""The SAM model: image encoder, prompt encoder and mask decoder, with pre/post-processing."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from napari_sam.models.mask_decoder import MaskDecoder
from napari_sam.models.prompt_encoder import PromptEncoder

# ImageNet statistics in 0-255 units, as SAM was trained with.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment Anything: composed from its three networks.

    Parameters
    ----------
    image_encoder : nn.Module
        Maps ``(B, 3, S, S)`` normalised images to ``(B, C, h, w)`` embeddings; has ``img_size``.
    prompt_encoder : PromptEncoder
    mask_decoder : MaskDecoder
    pixel_mean, pixel_std : tuple of float
        Per-channel normalisation of 0-255 RGB input.

    Notes
    -----
    The normalisation constants are non-persistent buffers, so the state dict has exactly the
    keys of the official checkpoints.
    """

    mask_threshold: float = 0.0
    #: Registry name of the architecture (set by :func:`napari_sam.load_model`; None for a model
    #: built by hand). Settings that suit a model (object diameter, automatic thresholds) follow it.
    name: str | None = None

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def img_size(self) -> int:
        """Side of the square model input."""
        return self.image_encoder.img_size

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the weights (float32, or bfloat16/float16 when reduced)."""
        return self.mask_decoder.iou_token.weight.dtype

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, 3, h, w)`` 0-255 RGB and zero-pad bottom/right to the model input."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """Upscale low-resolution mask logits to the original image.

        Parameters
        ----------
        masks : (B, K, h, w) tensor
            Logits from the decoder.
        input_size : tuple of int
            Size of the resized image before padding.
        original_size : tuple of int
            Size of the image the user gave.

        Returns
        -------
        (B, K, *original_size) tensor
            Logits; threshold them at :attr:`mask_threshold`.
        """
        masks = F.interpolate(
            masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        masks = masks[..., : input_size[0], : input_size[1]]
        if tuple(input_size) != tuple(original_size):
            masks = F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
        return masks
