"""Interactive prediction: embed an image once, then answer prompts with the decoder only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from napari_sam.engine.denormals import flush_denormals
from napari_sam.engine.embeddings import Embedding
from napari_sam.engine.image import to_rgb_uint8
from napari_sam.engine.prompts import Prompts, box_rc_to_xy, check_prompts, rc_to_xy
from napari_sam.engine.resize import resize_rgb, scale_xy
from napari_sam.engine.selection import check_strategy, select_mask
from napari_sam.models.mask_decoder import DecoderImageContext, DecoderOutputs
from napari_sam.models.sam import Sam
from napari_sam.models.sam2.mask_decoder import points_with_box
from napari_sam.models.sam2.model import Sam2

# Logit given to a low-resolution pixel wholly inside (+) or outside (-) a mask prompt. The
# decoder learnt mask prompts from its own earlier logits, which inside a confident mask average
# about +9 (nuclei_s), so +-10 reads as "certainly in / out" without leaving the range it saw.
# The value matters little: the answers barely change between +-4 and +-20.
MASK_PROMPT_LOGIT = 10.0
# SAM 2's predictor clips the low-resolution logits it returns to this range.
SAM2_LOGIT_CLIP = 32.0


@dataclass
class DecodedPrompts:
    """The decoder's answer to ``B`` prompts, at low resolution.

    Attributes
    ----------
    scores : (B, k) tensor
        Predicted IoU of every mask.
    logits : (B', k, h, w) tensor
        Low-resolution mask logits of the prompts in ``index``.
    index : (B',) int tensor
        Which prompts have logits (all, unless a minimum score was asked for).
    """

    scores: torch.Tensor
    logits: torch.Tensor
    index: torch.Tensor


class Predictor:
    """Segment objects in one image from point, box and mask prompts.

    Coordinates are ``(row, col)`` and boxes ``(min_row, min_col, max_row, max_col)`` in pixels
    of the image, as in numpy, scikit-image and napari.

    Parameters
    ----------
    model : Sam or Sam2
        A model from :func:`napari_sam.load_model`.
    enlarge : bool
        Images smaller than the model input are enlarged to it, as Meta's ``SamPredictor``
        does (the default). With False they are only padded, so objects keep their size in
        pixels: the one path (:class:`~napari_sam.Segmenter`) sizes its tiles so.

    Examples
    --------
    >>> predictor = Predictor(load_model("vit_t"))  # doctest: +SKIP
    >>> predictor.set_image(image)  # doctest: +SKIP
    >>> masks, scores, logits = predictor.predict(points=[[120, 64]], labels=[1])  # doctest: +SKIP
    >>> best = masks[scores.argmax()]  # doctest: +SKIP
    """

    def __init__(self, model: Sam | Sam2, *, enlarge: bool = True) -> None:
        self.model = model.eval()
        self.enlarge = enlarge
        self._embedding: Embedding | None = None
        self._context: DecoderImageContext | None = None  # decoder's image side, no mask prompt

    @property
    def embedding(self) -> Embedding | None:
        """The current image's embedding, to store or to give to :meth:`set_embedding` later."""
        return self._embedding

    @flush_denormals
    @torch.inference_mode()
    def set_image(self, image: np.ndarray, *, channel_axis: int | None = None, limits=None) -> Embedding:
        """Embed a 2D image; following :meth:`predict` calls run the decoder only.

        Parameters
        ----------
        image : (H, W[, C]) array
            Grey, RGB or 2-channel image of any numeric type; see
            :func:`napari_sam.engine.image.to_rgb_uint8` for the intensity handling.
        channel_axis : int, optional
            Axis of the channels when it is not the last.
        limits : array-like, optional
            Intensities mapped to 0 and 255 (for non-uint8 images); by default robust
            percentiles of this image.

        Returns
        -------
        Embedding
        """
        rgb = to_rgb_uint8(image, channel_axis=channel_axis, limits=limits)
        model = self.model
        if self._square:
            # SAM 2 was trained on images stretched to its square input, resized in floating
            # point (torchvision's antialiased bilinear), not padded.
            x = torch.as_tensor(rgb, device=model.device).permute(2, 0, 1)[None].float()
            side = model.img_size
            if rgb.shape[:2] != (side, side):
                x = F.interpolate(x, (side, side), mode="bilinear", align_corners=False,
                                  antialias=True)
            input_size = (side, side)
        else:
            resized = resize_rgb(rgb, self.long_side(rgb.shape[:2]))
            x = torch.as_tensor(resized, device=model.device).permute(2, 0, 1)[None].float()
            input_size = resized.shape[:2]
        x = model.preprocess(x).to(model.dtype)
        if isinstance(model, Sam2):
            plane = model.encode_image(x)
            features, high_res = plane.features, plane.high_res
        else:
            features, high_res = model.image_encoder(x), ()
        embedding = Embedding(features=features, original_size=rgb.shape[:2],
                              input_size=input_size, high_res=tuple(high_res))
        self.set_embedding(embedding)
        return embedding

    @property
    def _square(self) -> bool:
        """Whether images are stretched to the square model input (SAM 2 with ``enlarge``)."""
        return self.enlarge and isinstance(self.model, Sam2)

    def long_side(self, shape: tuple[int, int]) -> int:
        """The longer side an image of ``shape`` gets before padding to the model input."""
        size = self.model.img_size
        return size if self.enlarge else min(size, max(shape))

    def set_embedding(self, embedding: Embedding) -> None:
        """Use an embedding computed before (by :meth:`set_image` or a cache)."""
        self._embedding = embedding
        self._context = None

    def mask_prompt(self, mask) -> np.ndarray:
        """Low-resolution logits of a mask of the current image, to give as ``mask_input``.

        The mask is resized exactly as the image was for the model (bilinear, antialiased),
        zero-padded at the bottom and right to the square model input, averaged down to the
        decoder's mask size, and mapped to logits: ``+MASK_PROMPT_LOGIT`` where a low-resolution
        pixel is wholly inside the mask, ``-MASK_PROMPT_LOGIT`` wholly outside (and in the
        padding), linear in between, so the sign flips where half of the pixel is covered.

        Parameters
        ----------
        mask : (H, W) array-like of bool
            A mask of the image given to :meth:`set_image`, same shape; nonzero is inside.

        Returns
        -------
        (h, w) float32 array
            ``h, w`` is the decoder's mask size (256 for the official models).

        Raises
        ------
        RuntimeError
            No image is set.
        ValueError
            ``mask`` is not 2D of the image's shape.

        Examples
        --------
        >>> masks, scores, logits = predictor.predict(
        ...     box=box, mask_input=predictor.mask_prompt(mask))  # doctest: +SKIP
        """
        embedding = self._require_embedding()
        mask = np.asarray(mask)
        original = tuple(embedding.original_size)
        if mask.shape != original:
            raise ValueError(
                f"mask has shape {mask.shape} but the image given to set_image has shape "
                f"{original}: give a (H, W) mask of that image (crop or pad it to {original})"
            )
        soft = _resize_float((mask != 0).astype(np.float32), embedding.input_size)
        side = self.model.img_size
        padded = np.zeros((side, side), np.float32)
        padded[: soft.shape[0], : soft.shape[1]] = soft
        low = _resize_float(padded, self.model.prompt_encoder.mask_input_size, Image.BOX)
        return (2 * np.clip(low, 0, 1) - 1) * MASK_PROMPT_LOGIT

    def predict(
        self,
        points=None,
        labels=None,
        box=None,
        mask_input=None,
        multimask: bool = True,
        *,
        select: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for one object.

        Parameters
        ----------
        points : (N, 2) array-like, optional
            ``(row, col)`` of clicks.
        labels : (N,) array-like, optional
            1 for a point on the object, 0 for a point off it; all 1 by default.
        box : (4,) array-like, optional
            ``(min_row, min_col, max_row, max_col)``.
        mask_input : (h, w) array-like, optional
            Low-resolution logits from an earlier call, to refine that mask.
        multimask : bool
            Return 3 candidate masks (for an ambiguous prompt such as one click) instead of one.
        select : {"score", "largest", "smallest", "balanced"}, optional
            Keep only the candidate that :func:`~napari_sam.select_mask` chooses with this
            strategy: the outputs then have ``k = 1``, the shapes of ``multimask=False``.

        Returns
        -------
        masks : (k, H, W) bool array
            ``k`` is 3 with ``multimask`` (and no ``select``) else 1.
        scores : (k,) float array
            Predicted IoU of each mask.
        logits : (k, h, w) float array
            Low-resolution logits (``h = w = 256`` for the official models).
        """
        if select is not None:
            check_strategy(select)
        masks, scores, logits = self.predict_batch(
            points=points, labels=labels, boxes=box, mask_input=mask_input, multimask=multimask,
            batched=False,
        )
        masks, scores, logits = masks[0], scores[0], logits[0]
        if select is None:
            return masks, scores, logits
        i = select_mask(masks, scores, select)
        return masks[i : i + 1], scores[i : i + 1], logits[i : i + 1]

    @flush_denormals
    @torch.inference_mode()
    def predict_batch(
        self,
        points=None,
        labels=None,
        boxes=None,
        mask_input=None,
        multimask: bool = True,
        *,
        batched: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for ``B`` objects at once.

        Parameters
        ----------
        points : (B, N, 2) array-like, optional
        labels : (B, N) array-like, optional
        boxes : (B, 4) array-like, optional
        mask_input : (B, 1, h, w) array-like, optional
        multimask : bool
            See :meth:`predict`.
        batched : bool
            ``False`` accepts the unbatched shapes of :meth:`predict`.

        Returns
        -------
        masks : (B, k, H, W) bool array
        scores : (B, k) float array
        logits : (B, k, h, w) float array
        """
        embedding = self._require_embedding()
        prompts = check_prompts(
            points=points,
            labels=labels,
            boxes=boxes,
            mask_input=mask_input,
            image_shape=embedding.original_size,
            mask_shape=self.model.prompt_encoder.mask_input_size,
            batched=batched,
        )
        if prompts.batch == 0:  # e.g. a detector found no boxes: nothing to decode
            k, (h, w) = (3 if multimask else 1), self.model.prompt_encoder.mask_input_size
            return (np.zeros((0, k, *embedding.original_size), bool), np.zeros((0, k), np.float32),
                    np.zeros((0, k, h, w), np.float32))
        outputs = self._transform(prompts)
        decoder = self.model.mask_decoder
        low_res, scores = decoder.predict_masks(outputs, multimask), decoder.predict_iou(outputs, multimask)
        masks = self.model.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
        masks = masks > self.model.mask_threshold
        if isinstance(self.model, Sam2):  # as SAM 2's predictor, to feed back as mask_input
            low_res = low_res.clamp(-SAM2_LOGIT_CLIP, SAM2_LOGIT_CLIP)
        return masks.cpu().numpy(), scores.float().cpu().numpy(), low_res.float().cpu().numpy()

    @flush_denormals
    @torch.inference_mode()
    def predict_logits(
        self, points=None, labels=None, boxes=None, multimask: bool = True, *,
        min_score: float | None = None,
    ) -> DecodedPrompts:
        """The decoder's raw answer for ``B`` objects, without upsampling.

        For callers that decide on low-resolution logits before upsampling, such as the
        automatic mask generator. Arguments as in :meth:`predict_batch`.

        Parameters
        ----------
        min_score : float, optional
            Make logits only for the prompts with a predicted IoU above this (the IoU head runs
            first and is cheap; the mask head is most of the decoder's work).

        Returns
        -------
        DecodedPrompts
        """
        embedding = self._require_embedding()
        prompts = check_prompts(
            points=points, labels=labels, boxes=boxes, mask_input=None,
            image_shape=embedding.original_size,
            mask_shape=self.model.prompt_encoder.mask_input_size, batched=True,
        )
        decoder, device = self.model.mask_decoder, self.model.device
        if prompts.batch == 0:
            k, (h, w) = (3 if multimask else 1), self.model.prompt_encoder.mask_input_size
            return DecodedPrompts(torch.zeros(0, k, device=device),
                                  torch.zeros(0, k, h, w, device=device),
                                  torch.zeros(0, dtype=torch.int64, device=device))
        outputs = self._transform(prompts)
        scores = decoder.predict_iou(outputs, multimask)
        index = torch.arange(prompts.batch, device=device)
        if min_score is not None:
            index = index[(scores > min_score).any(1)]
        return DecodedPrompts(scores, decoder.predict_masks(outputs, multimask, index), index)

    def _require_embedding(self) -> Embedding:
        if self._embedding is None:
            raise RuntimeError("no image yet: call set_image(image) or set_embedding(...) first")
        return self._embedding

    def _transform(self, prompts: Prompts) -> DecoderOutputs:
        """Run the prompt encoder and the decoder's transformer (not yet its heads)."""
        model, embedding = self.model, self._embedding
        device, dtype = model.device, model.dtype
        original, resized = embedding.original_size, embedding.input_size

        def tensor(array: np.ndarray | None, kind=dtype):
            return None if array is None else torch.as_tensor(array, device=device).to(kind)

        points = None
        if prompts.points is not None:
            xy = scale_xy(rc_to_xy(prompts.points), original, resized)
            points = (tensor(xy, torch.float32), tensor(prompts.labels, torch.int64))
        boxes = None
        if prompts.boxes is not None:
            corners = scale_xy(box_rc_to_xy(prompts.boxes).reshape(-1, 2, 2), original, resized)
            boxes = tensor(corners.reshape(-1, 4), torch.float32)
        if boxes is not None and isinstance(model, Sam2):  # corners as points, before the clicks
            points, boxes = points_with_box(*(points or (None, None)), boxes), None
        masks = tensor(prompts.mask_input)

        sparse, dense = model.prompt_encoder(points, boxes, masks)
        if masks is None:
            if self._context is None:
                self._context = self._image_context(dense[:1])
            context = self._context
        else:
            context = self._image_context(dense)
        return model.mask_decoder.transform(context, sparse)

    def _image_context(self, dense: torch.Tensor) -> DecoderImageContext:
        model, embedding = self.model, self._embedding
        pe = model.prompt_encoder.get_dense_pe()
        if isinstance(model, Sam2):  # a single image is a first plane: "no memory"
            features = model.condition(embedding.features, [], [], 1)
            return model.mask_decoder.image_context(features, pe, dense,
                                                    high_res_features=embedding.high_res)
        return model.mask_decoder.image_context(embedding.features, pe, dense)


def _resize_float(array: np.ndarray, shape: tuple[int, int], resample=Image.BILINEAR) -> np.ndarray:
    """Resize a 2D float32 array to ``shape`` with Pillow, by default as
    :func:`~napari_sam.engine.resize.resize_rgb` resizes images (bilinear, antialiased)."""
    if tuple(shape) == array.shape:
        return array
    resized = Image.fromarray(array).resize((shape[1], shape[0]), resample)
    return np.asarray(resized, dtype=np.float32)
