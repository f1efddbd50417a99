"""SAM's mask decoder: masks and predicted IoU from image and prompt embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from napari_sam.models.common import LayerNorm2d
from napari_sam.models.transformer import MLP, ImageProjections, TwoWayTransformer


@dataclass
class DecoderImageContext:
    """Image-side inputs of the decoder that do not change from one prompt to the next.

    Built by :meth:`MaskDecoder.image_context`; an interactive session builds it once per image
    (and once more for each mask prompt, which changes the image tokens).
    """

    tokens: torch.Tensor  # (B or 1, h*w, C): image embedding plus dense prompt embedding
    pe: torch.Tensor  # (1, h*w, C): positional encoding of the embedding grid
    size: tuple[int, int]  # (h, w)
    first_projections: ImageProjections


@dataclass
class DecoderOutputs:
    """The transformer's output for a batch of prompts, before the IoU and mask heads."""

    iou_token: torch.Tensor  # (B, C)
    mask_tokens: torch.Tensor  # (B, K, C)
    image_tokens: torch.Tensor  # (B, h*w, C)
    size: tuple[int, int]  # (h, w)


class MaskDecoder(nn.Module):
    """Predict masks and their IoU from image and prompt embeddings.

    Parameters
    ----------
    transformer_dim : int
        Channel width of the transformer.
    transformer : TwoWayTransformer
        The transformer that mixes prompt and image tokens.
    num_multimask_outputs : int
        Number of masks for an ambiguous prompt (a further token gives the single-mask answer).
    iou_head_depth, iou_head_hidden_dim : int
        Layers and hidden width of the IoU prediction head.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            Upsample2x(transformer_dim, transformer_dim // 4),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            Upsample2x(transformer_dim // 4, transformer_dim // 8),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks.

        Parameters
        ----------
        image_embeddings : (B or 1, C, h, w) tensor
            Image embeddings; one image is shared by all prompts.
        image_pe : (1, C, h, w) tensor
            Positional encoding of the embedding grid.
        sparse_prompt_embeddings : (B, N, C) tensor
        dense_prompt_embeddings : (B or 1, C, h, w) tensor
        multimask_output : bool
            Return the 3 masks for ambiguous prompts instead of the single one.

        Returns
        -------
        masks : (B, 3 or 1, 4h, 4w) tensor
            Mask logits.
        iou_pred : (B, 3 or 1) tensor
        """
        context = self.image_context(image_embeddings, image_pe, dense_prompt_embeddings)
        return self.decode(context, sparse_prompt_embeddings, multimask_output)

    def image_context(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: Sequence[torch.Tensor] | None = None,
    ) -> DecoderImageContext:
        """Everything the decoder computes on the image side before it sees sparse prompts.

        ``high_res_features`` exists for the signature shared with SAM 2's decoder
        (:class:`~napari_sam.models.sam2.mask_decoder.Sam2MaskDecoder`); SAM takes none.
        """
        if high_res_features is not None:
            raise ValueError("SAM's mask decoder takes no high_res_features; pass None")
        h, w = image_embeddings.shape[-2:]
        # Contiguous token layouts keep every later residual sum and layer norm copy-free.
        tokens = (image_embeddings + dense_prompt_embeddings).flatten(2).transpose(1, 2).contiguous()
        pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        projections = self.transformer.layers[0].project_image(tokens, pe)
        return DecoderImageContext(tokens=tokens, pe=pe, size=(h, w), first_projections=projections)

    def decode(
        self,
        context: DecoderImageContext,
        sparse_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks from a prepared image context; see :meth:`forward`."""
        outputs = self.transform(context, sparse_prompt_embeddings)
        return self.predict_masks(outputs, multimask_output), self.predict_iou(outputs, multimask_output)

    def transform(
        self, context: DecoderImageContext, sparse_prompt_embeddings: torch.Tensor
    ) -> DecoderOutputs:
        """Mix prompt and image tokens: the part shared by the IoU and mask heads."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)
        hs, image_tokens = self.transformer(
            context.tokens, context.pe, tokens, first_projections=context.first_projections
        )
        return DecoderOutputs(
            iou_token=hs[:, 0, :],
            mask_tokens=hs[:, 1 : 1 + self.num_mask_tokens, :],
            image_tokens=image_tokens,
            size=context.size,
        )

    def predict_iou(self, outputs: DecoderOutputs, multimask_output: bool) -> torch.Tensor:
        """``(B, 3 or 1)`` predicted IoU; cheap, so callers can filter before making masks."""
        return self.iou_prediction_head(outputs.iou_token)[:, self._selected(multimask_output)]

    def predict_masks(
        self, outputs: DecoderOutputs, multimask_output: bool, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, 3 or 1, 4h, 4w)`` mask logits, for the prompts in ``index`` only if given."""
        mask_tokens, image_tokens = outputs.mask_tokens, outputs.image_tokens
        if index is not None:
            mask_tokens, image_tokens = mask_tokens[index], image_tokens[index]
        hyper_in = self._hypernetworks(mask_tokens, self._selected(multimask_output))
        return self._dot(hyper_in, self._upscale(image_tokens), outputs.size)

    def _hypernetworks(self, mask_tokens: torch.Tensor, selected: slice) -> torch.Tensor:
        """``(B, k, C/8)`` hypernetwork outputs of the ``selected`` mask tokens."""
        mlps = self.output_hypernetworks_mlps
        indices = range(self.num_mask_tokens)[selected]
        return torch.stack([mlps[i](mask_tokens[:, i, :]) for i in indices], dim=1)

    @staticmethod
    def _dot(hyper_in: torch.Tensor, upscaled: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Mask logits ``(B, k, 4h, 4w)``: hypernetwork outputs dotted with upscaled tokens."""
        (batch, k, _), (h, w) = hyper_in.shape, size
        masks = hyper_in @ upscaled.transpose(1, 2)  # (B, k, h*w*16), in sub-pixel order
        # Sub-pixel order (row, col, dy1, dx1, dy2, dx2) to rows 4*row + 2*dy1 + dy2 (columns alike).
        masks = masks.view(batch, k, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        return masks.reshape(batch, k, 4 * h, 4 * w)

    def _selected(self, multimask_output: bool) -> slice:
        return slice(1, None) if multimask_output else slice(0, 1)

    def _upscale(
        self, tokens: torch.Tensor, skips: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``output_upscaling`` on image tokens ``(B, h*w, C)``, giving ``(B, h*w*16, C/8)``.

        Each 2x upsampling turns a pixel into 4 sub-pixels in place, and the layer norm and
        activations act per pixel, so the tokens stay in sub-pixel order throughout; only the
        final masks (far fewer channels) are rearranged into an image.

        ``skips``, if given, are added after the first and the second upsampling (SAM 2's
        high-resolution features): ``(B or 1, h*w*4, C/4)`` and ``(B or 1, h*w*16, C/8)``, in
        the same sub-pixel order.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        x = up1.subpixels(tokens)
        if skips is not None:
            x = x + skips[0]
        x = act1(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        x = up2.subpixels(x)
        if skips is not None:
            x = x + skips[1]
        return act2(x)


class Upsample2x(nn.ConvTranspose2d):
    """2x2 transposed convolution with stride 2: each pixel becomes a 2x2 block of new channels.

    Keeps the parameters (and checkpoint keys) of ``nn.ConvTranspose2d``; :meth:`subpixels`
    computes the same thing as one matrix product on channels-last pixels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=2, stride=2)

    def subpixels(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C_in)`` pixels to ``(B, 4N, C_out)`` sub-pixels, ordered (pixel, dy, dx)."""
        b, n, c_in = x.shape
        weight = self.weight.permute(0, 2, 3, 1).reshape(c_in, -1)  # columns ordered (dy, dx, c)
        y = torch.addmm(self.bias.repeat(4), x.reshape(-1, c_in), weight)
        return y.view(b, 4 * n, self.out_channels)
