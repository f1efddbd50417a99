"""SAM 2's mask decoder: SAM's decoder with an object score, high-resolution skips, sigmoid IoU.

It differs from :class:`~napari_sam.models.mask_decoder.MaskDecoder` in four ways, and shares
everything else (transformer, upscaling, hypernetworks, the split API the predictor uses):

- an extra output token, first in line, whose MLP head says whether the object is present;
- two finer levels of the image encoder, projected by ``conv_s0`` / ``conv_s1`` (by the
  caller, once per image), are added after the first and second upsampling of the mask head;
- the IoU head ends in a sigmoid;
- a single-mask answer whose mask is unstable (its area changes with the threshold) is
  replaced, at inference, by the best-scored of the three multimask answers.

The parameter names are those of Meta's SAM 2.1 checkpoints (``sam_mask_decoder.*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from napari_sam.models.mask_decoder import (
    MLP,
    DecoderImageContext,
    DecoderOutputs,
    MaskDecoder,
)
from napari_sam.models.prompt_encoder import BOTTOM_RIGHT, TOP_LEFT, PromptEncoder
from napari_sam.models.transformer import TwoWayTransformer


@dataclass
class Sam2DecoderImageContext(DecoderImageContext):
    """:class:`DecoderImageContext` with the high-resolution features, ready to add.

    ``high_res`` holds the projected stride-8 and stride-4 features as ``(B or 1, 4*h*w, C/4)``
    and ``(B or 1, 16*h*w, C/8)`` tokens, in the sub-pixel order of the upscaling.
    """

    high_res: tuple[torch.Tensor, torch.Tensor]


@dataclass
class Sam2DecoderOutputs(DecoderOutputs):
    """:class:`DecoderOutputs` with SAM 2's object score.

    ``object_score_logits`` ``(B, 1)`` is > 0 where the object is present. ``high_res`` is
    carried from the image context for the mask head.
    """

    object_score_logits: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]
    # Which of the 4 masks answers each prompt with single-mask output (0, or the best
    # multimask one where mask 0 is unstable); set by the first head that needs it.
    single_mask_choice: torch.Tensor | None = field(default=None, repr=False)


class Sam2MaskDecoder(MaskDecoder):
    """Predict masks, their IoU and whether the object is present, from SAM 2's embeddings.

    Parameters
    ----------
    transformer_dim : int
        Channel width of the transformer.
    transformer : TwoWayTransformer
        Built with ``mlp_layout="sam2"`` for SAM 2's parameter names.
    num_multimask_outputs : int
        Number of masks for an ambiguous prompt.
    iou_head_depth, iou_head_hidden_dim : int
        Layers and hidden width of the IoU head.
    dynamic_multimask_via_stability : bool
        At inference (eval mode), answer a single-mask request with the best-scored multimask
        answer where the single mask is unstable.
    stability_delta, stability_thresh : float
        A mask is stable if its area above ``+delta`` is at least ``thresh`` times its area
        above ``-delta``.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        dynamic_multimask_via_stability: bool = True,
        stability_delta: float = 0.05,
        stability_thresh: float = 0.98,
    ) -> None:
        super().__init__(
            transformer_dim=transformer_dim,
            transformer=transformer,
            num_multimask_outputs=num_multimask_outputs,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.pred_obj_score_head = MLP(transformer_dim, transformer_dim, 1, 3)
        # Project the image encoder's stride-4 and stride-8 levels to the upscaling's widths.
        self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def project_high_res(
        self, level_s0: torch.Tensor, level_s1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv_s0`` / ``conv_s1`` on the image encoder's stride-4 and stride-8 levels.

        Parameters
        ----------
        level_s0 : (B, C, 4h, 4w) tensor
        level_s1 : (B, C, 2h, 2w) tensor

        Returns
        -------
        tuple of (B, C/8, 4h, 4w) and (B, C/4, 2h, 2w) tensors
            The ``high_res_features`` of :meth:`forward` and :meth:`image_context`.
        """
        return self.conv_s0(level_s0), self.conv_s1(level_s1)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predict masks (called as SAM 2 calls its decoder).

        Parameters
        ----------
        image_embeddings : (1 or B, C, h, w) tensor
            One image for all prompts (``repeat_image=True``) or one per prompt.
        image_pe : (1, C, h, w) tensor
            Positional encoding of the embedding grid.
        sparse_prompt_embeddings : (B, N, C) tensor
        dense_prompt_embeddings : (B or 1, C, h, w) tensor
        multimask_output : bool
            Return the 3 multimask answers instead of the single one.
        repeat_image : bool
            Whether one image serves all ``B`` prompts.
        high_res_features : sequence of (1 or B, C/8, 4h, 4w) and (1 or B, C/4, 2h, 2w) tensors
            The projected finer levels (:meth:`project_high_res`).

        Returns
        -------
        masks : (B, 3 or 1, 4h, 4w) tensor
            Mask logits.
        iou_pred : (B, 3 or 1) tensor
            Predicted IoU, in [0, 1].
        sam_tokens_out : (B, 3 or 1, C) tensor
            The mask tokens of the answer (the source of SAM 2's object pointer).
        object_score_logits : (B, 1) tensor
        """
        images, prompts = image_embeddings.shape[0], sparse_prompt_embeddings.shape[0]
        if repeat_image and images != 1:
            raise ValueError(f"repeat_image=True shares one image among the prompts; got {images}")
        if not repeat_image and images != prompts:
            raise ValueError(
                f"repeat_image=False needs one image per prompt: {images} images, {prompts} prompts"
            )
        context = self.image_context(
            image_embeddings, image_pe, dense_prompt_embeddings, high_res_features
        )
        outputs = self.transform(context, sparse_prompt_embeddings)
        masks = self.predict_masks(outputs, multimask_output)
        iou_pred = self.predict_iou(outputs, multimask_output)
        return masks, iou_pred, self.sam_tokens(outputs, multimask_output), outputs.object_score_logits

    def image_context(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: Sequence[torch.Tensor] | None = None,
    ) -> Sam2DecoderImageContext:
        """The image side of the decoder, with ``high_res_features`` as in :meth:`forward`."""
        if high_res_features is None or len(high_res_features) != 2:
            raise ValueError(
                "SAM 2's mask decoder needs high_res_features: the image encoder's stride-4 and "
                "stride-8 levels through project_high_res()"
            )
        level_s0, level_s1 = high_res_features
        (h, w), c = image_embeddings.shape[-2:], self.transformer_dim
        expected = ((c // 8, 4 * h, 4 * w), (c // 4, 2 * h, 2 * w))
        if (tuple(level_s0.shape[1:]), tuple(level_s1.shape[1:])) != expected:
            raise ValueError(
                f"high_res_features must be (B, *{expected[0]}) and (B, *{expected[1]}) for an "
                f"image embedding of {h} x {w}; got {tuple(level_s0.shape)} and "
                f"{tuple(level_s1.shape)}"
            )
        context = super().image_context(image_embeddings, image_pe, dense_prompt_embeddings)
        high_res = (_to_subpixels(level_s1, levels=1), _to_subpixels(level_s0, levels=2))
        return Sam2DecoderImageContext(**vars(context), high_res=high_res)

    def transform(
        self, context: Sam2DecoderImageContext, sparse_prompt_embeddings: torch.Tensor
    ) -> Sam2DecoderOutputs:
        """Mix prompt and image tokens, and score whether the object is present."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat(
            [self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0
        )
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1
        )
        hs, image_tokens = self.transformer(
            context.tokens, context.pe, tokens, first_projections=context.first_projections
        )
        return Sam2DecoderOutputs(
            iou_token=hs[:, 1, :],
            mask_tokens=hs[:, 2 : 2 + self.num_mask_tokens, :],
            image_tokens=image_tokens,
            size=context.size,
            object_score_logits=self.pred_obj_score_head(hs[:, 0, :]),
            high_res=context.high_res,
        )

    def predict_iou(self, outputs: Sam2DecoderOutputs, multimask_output: bool) -> torch.Tensor:
        """``(B, 3 or 1)`` predicted IoU in [0, 1].

        Cheap with multimask output; a single-mask answer with the stability fallback needs
        the first mask of every prompt (computed once per ``outputs``, shared with
        :meth:`predict_masks`).
        """
        scores = self.iou_prediction_head(outputs.iou_token).sigmoid()
        if not self._falls_back(multimask_output):
            return scores[:, self._selected(multimask_output)]
        if outputs.single_mask_choice is None:
            self.predict_masks(outputs, multimask_output)
        return scores.gather(1, outputs.single_mask_choice[:, None])

    def predict_masks(
        self,
        outputs: Sam2DecoderOutputs,
        multimask_output: bool,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, 3 or 1, 4h, 4w)`` mask logits, for the prompts in ``index`` only if given."""
        mask_tokens, image_tokens = outputs.mask_tokens, outputs.image_tokens
        high_res = outputs.high_res
        if index is not None:
            mask_tokens, image_tokens = mask_tokens[index], image_tokens[index]
            high_res = tuple(x if x.shape[0] == 1 else x[index] for x in high_res)
        upscaled = self._upscale(image_tokens, high_res)
        if not self._falls_back(multimask_output):
            hyper_in = self._hypernetworks(mask_tokens, self._selected(multimask_output))
            return self._dot(hyper_in, upscaled, outputs.size)

        # Single mask with the stability fallback: mask 0, or the best-scored multimask answer.
        hyper_in = self._hypernetworks(mask_tokens, slice(None))  # (B, 4, C/8)
        rows = torch.arange(hyper_in.shape[0], device=hyper_in.device)
        choice = outputs.single_mask_choice
        if choice is None:
            masks = self._dot(hyper_in, upscaled, outputs.size)
            iou_token = outputs.iou_token if index is None else outputs.iou_token[index]
            best = 1 + self.iou_prediction_head(iou_token)[:, 1:].argmax(dim=1)  # as after sigmoid
            choice = torch.where(self._is_stable(masks[:, 0]), 0, best)
            if index is None:
                outputs.single_mask_choice = choice
            return masks[rows, choice].unsqueeze(1)
        if index is not None:
            choice = choice[index]
        return self._dot(hyper_in[rows, choice].unsqueeze(1), upscaled, outputs.size)

    def sam_tokens(self, outputs: Sam2DecoderOutputs, multimask_output: bool) -> torch.Tensor:
        """``(B, 3 or 1, C)`` mask tokens of the answer, from which SAM 2 makes object pointers.

        The single-mask token unless multimask output is asked for, whatever mask the
        stability fallback chose.
        """
        return outputs.mask_tokens[:, self._selected(multimask_output)]

    def _falls_back(self, multimask_output: bool) -> bool:
        return not multimask_output and self.dynamic_multimask_via_stability and not self.training

    def _is_stable(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B,)`` whether each mask ``(B, H, W)`` keeps its area within the logit band."""
        flat = logits.flatten(1)
        inner = (flat > self.stability_delta).sum(dim=1).float()
        outer = (flat > -self.stability_delta).sum(dim=1).float()
        stability = torch.where(outer > 0, inner / outer, 1.0)
        return stability >= self.stability_thresh


def _to_subpixels(image: torch.Tensor, levels: int) -> torch.Tensor:
    """``(B, C, h * 2**L, w * 2**L)`` image as ``(B, h*w*4**L, C)`` sub-pixel tokens.

    The order is that of ``L`` successive :meth:`~napari_sam.models.mask_decoder.Upsample2x.subpixels`:
    pixel ``(r, c)`` of the coarse grid, then ``(dy, dx)`` of each upsampling in turn.
    """
    b, c, height, width = image.shape
    step = 2**levels
    h, w = height // step, width // step
    x = image.reshape(b, c, h, *(2,) * levels, w, *(2,) * levels)
    dy = range(3, 3 + levels)  # axes of the row offsets, coarsest first
    dx = range(4 + levels, 4 + 2 * levels)
    order = [0, 2, 3 + levels] + [axis for pair in zip(dy, dx) for axis in pair] + [1]
    return x.permute(order).reshape(b, h * w * step * step, c)


def points_with_box(
    coords: torch.Tensor | None, labels: torch.Tensor | None, boxes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Point prompts as SAM 2 gives them: a box's two corners (labels 2, 3) before the clicks.

    Pass the result as ``points`` to the prompt encoder, with ``boxes=None``.

    Parameters
    ----------
    coords : (B, N, 2) tensor, optional
        Clicks ``(x, y)`` in input pixels.
    labels : (B, N) tensor, optional
        Their labels (1 positive, 0 negative, -1 padding).
    boxes : (B, 4) tensor, optional
        Boxes ``(x0, y0, x1, y1)`` in input pixels.

    Returns
    -------
    tuple of (B, N + 2, 2) and (B, N + 2) tensors, or None
        None if there are neither clicks nor boxes.
    """
    if boxes is None:
        return None if coords is None else (coords, labels)
    corners = boxes.reshape(-1, 2, 2)
    corner_labels = torch.tensor([TOP_LEFT, BOTTOM_RIGHT], device=boxes.device)
    corner_labels = corner_labels.expand(corners.shape[0], 2)
    if coords is None:
        return corners, corner_labels
    return (torch.cat([corners.to(coords.dtype), coords], dim=1),
            torch.cat([corner_labels.to(labels.dtype), labels], dim=1))


def build_sam2_heads(
    *, image_size: int = 1024, backbone_stride: int = 16, dim: int = 256
) -> tuple[PromptEncoder, Sam2MaskDecoder]:
    """SAM 2.1's prompt encoder and mask decoder, as its checkpoints have them.

    Parameters
    ----------
    image_size : int
        Side of the square model input.
    backbone_stride : int
        Stride of the image embedding the decoder sees.
    dim : int
        Width of prompt tokens and decoder.

    Returns
    -------
    prompt_encoder : PromptEncoder
    mask_decoder : Sam2MaskDecoder
    """
    side = image_size // backbone_stride
    prompt_encoder = PromptEncoder(
        embed_dim=dim,
        image_embedding_size=(side, side),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    transformer = TwoWayTransformer(
        depth=2, embedding_dim=dim, num_heads=8, mlp_dim=2048, mlp_layout="sam2"
    )
    decoder = Sam2MaskDecoder(
        transformer_dim=dim, transformer=transformer, iou_head_depth=3, iou_head_hidden_dim=256
    )
    return prompt_encoder, decoder
