"""Interactive prediction: embed an image once, then answer prompts with the decoder only."""

from __future__ import annotations

import numpy as np
import torch

from napari_sam.engine.denormals import flush_denormals
from napari_sam.engine.embeddings import Embedding
from napari_sam.engine.image import to_rgb_uint8
from napari_sam.engine.prompts import Prompts, box_rc_to_xy, check_prompts, rc_to_xy
from napari_sam.engine.resize import resize_rgb, resized_shape, scale_xy
from napari_sam.models.mask_decoder import DecoderImageContext
from napari_sam.models.sam import Sam


class Predictor:
    """Segment objects in one image from point, box and mask prompts.

    Coordinates are ``(row, col)`` and boxes ``(min_row, min_col, max_row, max_col)`` in pixels
    of the image, as in numpy, scikit-image and napari.

    Parameters
    ----------
    model : Sam
        A model from :func:`napari_sam.load_model`.

    Examples
    --------
    >>> predictor = Predictor(load_model("vit_t"))  # doctest: +SKIP
    >>> predictor.set_image(image)  # doctest: +SKIP
    >>> masks, scores, logits = predictor.predict(points=[[120, 64]], labels=[1])  # doctest: +SKIP
    >>> best = masks[scores.argmax()]  # doctest: +SKIP
    """

    def __init__(self, model: Sam) -> None:
        self.model = model.eval()
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
        resized = resize_rgb(rgb, self.model.img_size)
        model = self.model
        x = torch.as_tensor(resized, device=model.device).permute(2, 0, 1)[None].float()
        x = model.preprocess(x).to(model.dtype)
        features = model.image_encoder(x)
        embedding = Embedding(
            features=features, original_size=rgb.shape[:2], input_size=resized.shape[:2]
        )
        self.set_embedding(embedding)
        return embedding

    def set_embedding(self, embedding: Embedding) -> None:
        """Use an embedding computed before (by :meth:`set_image` or a cache)."""
        self._embedding = embedding
        self._context = None

    def predict(
        self,
        points=None,
        labels=None,
        box=None,
        mask_input=None,
        multimask: bool = True,
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

        Returns
        -------
        masks : (k, H, W) bool array
            ``k`` is 3 with ``multimask`` else 1.
        scores : (k,) float array
            Predicted IoU of each mask.
        logits : (k, h, w) float array
            Low-resolution logits (``h = w = 256`` for the official models).
        """
        masks, scores, logits = self.predict_batch(
            points=points, labels=labels, boxes=box, mask_input=mask_input, multimask=multimask,
            batched=False,
        )
        return masks[0], scores[0], logits[0]

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
        low_res, scores = self._decode(prompts, multimask)
        masks = self.model.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
        masks = masks > self.model.mask_threshold
        return masks.cpu().numpy(), scores.float().cpu().numpy(), low_res.float().cpu().numpy()

    def _require_embedding(self) -> Embedding:
        if self._embedding is None:
            raise RuntimeError("no image yet: call set_image(image) or set_embedding(...) first")
        return self._embedding

    def _decode(self, prompts: Prompts, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Run prompt encoder and decoder; returns low-res logits and predicted IoU."""
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
        masks = tensor(prompts.mask_input)

        sparse, dense = model.prompt_encoder(points, boxes, masks)
        if masks is None:
            if self._context is None:
                self._context = self._image_context(dense[:1])
            context = self._context
        else:
            context = self._image_context(dense)
        return model.mask_decoder.decode(context, sparse, multimask)

    def _image_context(self, dense: torch.Tensor) -> DecoderImageContext:
        prompt_encoder = self.model.prompt_encoder
        return self.model.mask_decoder.image_context(
            self._embedding.features, prompt_encoder.get_dense_pe(), dense
        )
