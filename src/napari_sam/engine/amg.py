"""Automatic segmentation of a whole image: prompts everywhere, keep the good, distinct masks.

The defaults reproduce Meta's ``SamAutomaticMaskGenerator`` (same parameters, same decisions,
same records). The speed comes from doing less for the same answers: the predicted-IoU filter
runs before any upsampling, only the survivors are upsampled, and only inside the window where
their logits can exceed the thresholds (:class:`~napari_sam.engine.mask_ops.LogitUpsampler`);
masks are run-length encoded or painted only after non-maximum suppression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np
import torch

from napari_sam.engine.checks import check_number
from napari_sam.engine.embeddings import EmbeddingStore
from napari_sam.engine.geometry import WindowMask
from napari_sam.engine.image import to_rgb_uint8
from napari_sam.engine.mask_ops import (
    LogitUpsampler,
    coco_rle,
    mask_to_rle,
    meta_box,
    nms,
    paint_labels,
    remove_small_regions,
    stability_score,
)
from napari_sam.engine.predictor import Predictor
from napari_sam.engine.samplers import (
    AdaptiveSampler,
    BoxSampler,
    Coverage,
    GridSampler,
    PromptRound,
    PromptSampler,
)
from napari_sam.models.sam import Sam

SAMPLERS = ("grid", "boxes", "adaptive")
OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
CROP_EDGE_TOLERANCE = 20  # pixels: masks this close to an inner crop edge are cut, not whole
# On a CPU the decoder is fastest on a few prompts at a time: its (prompts, tokens, channels)
# activations then stay in cache (8 prompts: 2x faster per prompt than 64 for nuclei_s). The
# answers do not depend on the batch size.
CPU_BATCH = 8
# A grid of 1024 x 1024 prompts already takes long; 4096 per side (16.7 million) runs for hours.
MAX_POINTS_PER_SIDE = 1024


@dataclass
class _Masks:
    """Masks kept so far, with what the records need."""

    masks: list[WindowMask] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # predicted IoU
    stability: list[float] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)  # (x0, y0, x1, y1), maxima inclusive
    points: list[np.ndarray] = field(default_factory=list)  # (x, y) of the prompt
    crop_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.masks)

    def box_array(self) -> np.ndarray:
        return np.array(self.boxes, dtype=np.int64).reshape(-1, 4)

    def take(self, index) -> _Masks:
        return _Masks(*([values[i] for i in index] for values in self._columns()))

    def extend(self, other: _Masks) -> None:
        for mine, theirs in zip(self._columns(), other._columns()):
            mine.extend(theirs)

    def _columns(self) -> tuple[list, ...]:
        return (self.masks, self.scores, self.stability, self.boxes, self.points, self.crop_boxes)


class AutomaticMaskGenerator:
    """Segment everything in a 2D image, as Meta's generator does, faster.

    Parameters are Meta's (``SamAutomaticMaskGenerator``) with the same meaning and defaults;
    ``sampler`` and ``detector`` are ours.

    Parameters
    ----------
    model : Sam
        A model from :func:`napari_sam.load_model`.
    points_per_side : int or None
        Grid clicks per side (``grid``); the fine grid the ``adaptive`` sampler stands in for.
        1 to 1024.
    points_per_batch : int
        Prompts decoded at once (at most 8 on a CPU, where small batches are faster).
    pred_iou_thresh : float
        Keep masks whose predicted IoU is above this, in ``[0, 1]`` (0 keeps all).
    stability_score_thresh, stability_score_offset : float
        Keep masks whose stability (IoU of the masks thresholded at +-offset) is at least this
        threshold, in ``[0, 1]`` (0 keeps all); the offset is >= 0.
    box_nms_thresh : float
        Box IoU above which the lower-scoring of two masks of one crop is dropped, in ``[0, 1]``.
    crop_n_layers : int
        Also segment ``(2**i)**2`` overlapping crops in layers ``i = 1 .. crop_n_layers``.
    crop_nms_thresh : float
        Box IoU for dropping duplicates between crops (masks from smaller crops win), in
        ``[0, 1]``.
    crop_overlap_ratio : float
        Overlap of the crops of layer 1, as a fraction of the image's short side.
    crop_n_points_downscale_factor : int
        Grid points per side in layer ``i`` are divided by this to the power ``i``.
    point_grids : list of (N, 2) arrays, optional
        Normalised ``(x, y)`` grids, one per layer, instead of ``points_per_side``.
    min_mask_region_area : int
        Fill holes and drop islands smaller than this many pixels (>= 0), then suppress
        duplicates again.
    output_mode : {"binary_mask", "uncompressed_rle", "coco_rle"}
        Form of each record's ``segmentation``; ``coco_rle`` needs pycocotools.
    sampler : {"grid", "boxes", "adaptive"} or PromptSampler
        Where to prompt: Meta's grid; one box per object from ``detector``; or our adaptive
        sampling, which clicks only where nothing is segmented yet (far fewer decoder calls).
    detector : callable, optional
        For ``sampler="boxes"``: ``detector(rgb_image) -> (N, 4)`` boxes ``(min_row, min_col,
        max_row, max_col)``; by default :func:`napari_sam.engine.detection.detect_objects`.
    embedding_store : EmbeddingStore, optional
        Reuse embeddings stored there, and store the new ones.
    enlarge : bool
        Enlarge images (and crops) smaller than the model input to it, as Meta does; False
        pads them instead (see :class:`~napari_sam.Predictor`).

    Attributes
    ----------
    decoder_calls : int
        Prompts the decoder answered in the last :meth:`generate`.

    Raises
    ------
    ValueError
        A setting outside its range, NaN or of the wrong type; the message names it, its value
        and the valid range.

    Notes
    -----
    Records keep Meta's fields and conventions so that tools written for them (COCO
    evaluation, Meta's notebooks) work unchanged: ``bbox`` and ``crop_box`` are ``(x, y, w, h)``
    and ``point_coords`` ``[[x, y]]``. Meta's ``bbox`` width and height are ``max - min`` of the
    mask's pixel coordinates (one less than the pixel extent); we keep that too.

    Examples
    --------
    >>> generator = AutomaticMaskGenerator(load_model())  # doctest: +SKIP
    >>> labels = generator.generate_labels(image)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        sampler: str | PromptSampler = "grid",
        detector=None,
        embedding_store: EmbeddingStore | None = None,
        enlarge: bool = True,
    ) -> None:
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, not {output_mode!r}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be at least 1, not {points_per_batch}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be 0 or more, not {crop_n_layers}")
        if points_per_side is not None:
            check_number("points_per_side", points_per_side, low=1, integer=True)
            if points_per_side > MAX_POINTS_PER_SIDE:
                raise ValueError(
                    f"points_per_side={points_per_side} is a grid of {points_per_side ** 2:,} "
                    f"prompts per crop, hours of decoding; use at most {MAX_POINTS_PER_SIDE} "
                    "(Meta's default is 32; for small objects try crop_n_layers=1 or "
                    "sampler='adaptive')"
                )
        for name, value in (("pred_iou_thresh", pred_iou_thresh),
                            ("stability_score_thresh", stability_score_thresh),
                            ("box_nms_thresh", box_nms_thresh),
                            ("crop_nms_thresh", crop_nms_thresh)):
            check_number(name, value, low=0, high=1)
        check_number("stability_score_offset", stability_score_offset, low=0)
        check_number("min_mask_region_area", min_mask_region_area, low=0)
        self.predictor = Predictor(model, enlarge=enlarge)
        self.sampler = _make_sampler(sampler, points_per_side, point_grids, crop_n_layers,
                                     crop_n_points_downscale_factor, detector)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.embedding_store = embedding_store
        self.decoder_calls = 0
        self._upsamplers: dict[tuple, LogitUpsampler] = {}

    def generate(self, image: np.ndarray, *, channel_axis: int | None = None,
                 limits=None) -> list[dict[str, Any]]:
        """Masks of everything in ``image``.

        Parameters
        ----------
        image : (H, W[, C]) array
            Grey, RGB or 2-channel image of any numeric type (see
            :meth:`napari_sam.Predictor.set_image`).
        channel_axis : int, optional
            Axis of the channels when it is not the last.
        limits : array-like, optional
            Intensities mapped to 0 and 255 for non-uint8 images.

        Returns
        -------
        list of dict
            One record per mask, with Meta's fields: ``segmentation`` (bool (H, W) mask or RLE
            dict, see ``output_mode``), ``area``, ``bbox``, ``predicted_iou``,
            ``point_coords``, ``stability_score``, ``crop_box``. An image without objects gives
            an empty list.
        """
        found = self._masks(to_rgb_uint8(image, channel_axis=channel_axis, limits=limits))
        return [self._record(found, i) for i in range(len(found))]

    def generate_labels(self, image: np.ndarray, *, channel_axis: int | None = None,
                        limits=None) -> np.ndarray:
        """A uint32 label image of everything in ``image``: ids 1..n, 0 for background.

        Larger masks are painted first, so smaller ones on top of them stay visible; ids follow
        that order (1 is the largest visible object). Arguments as in :meth:`generate`.
        """
        rgb = to_rgb_uint8(image, channel_axis=channel_axis, limits=limits)
        return paint_labels(self._masks(rgb).masks, rgb.shape[:2])

    def generate_masks(self, image: np.ndarray, *, channel_axis: int | None = None,
                       limits=None) -> list[WindowMask]:
        """The masks of :meth:`generate`, each kept as the window that holds it (memory-light).

        Arguments as in :meth:`generate`.
        """
        return self._masks(to_rgb_uint8(image, channel_axis=channel_axis, limits=limits)).masks

    # -- the pipeline -------------------------------------------------------------------------

    def _masks(self, rgb: np.ndarray) -> _Masks:
        self.decoder_calls = 0
        shape = rgb.shape[:2]
        crops = crop_boxes(shape, self.crop_n_layers, self.crop_overlap_ratio)
        found = _Masks()
        for crop_box, layer in crops:
            found.extend(self._crop_masks(rgb, crop_box, layer))
        if len(crops) > 1 and len(found):  # duplicates between crops: the smaller crop wins
            areas = np.array([(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in found.crop_boxes])
            scores = np.float32(1) / areas.astype(np.float32)
            found = found.take(nms(found.box_array(), scores, self.crop_nms_thresh))
        if self.min_mask_region_area > 0 and len(found):
            found = self._remove_small_regions(found)
        return found

    @torch.inference_mode()
    def _crop_masks(self, rgb: np.ndarray, crop_box, layer: int) -> _Masks:
        x0, y0, x1, y1 = crop_box
        crop = rgb[y0:y1, x0:x1]
        if self.embedding_store is None:
            embedding = self.predictor.set_image(crop)
        else:
            embedding = self.embedding_store.embed(self.predictor, crop)
        upsampler = self._upsampler(embedding.input_size, embedding.original_size)
        coverage = Coverage(np.zeros(crop.shape[:2], dtype=bool))
        candidates, kept = _Masks(), np.zeros(0, dtype=np.int64)
        batch_size = self.points_per_batch
        if self.predictor.model.device.type == "cpu":
            batch_size = min(batch_size, CPU_BATCH)
        for prompts in self.sampler.rounds(crop, layer, coverage):
            for start in range(0, len(prompts), batch_size):
                batch = _slice(prompts, start, start + batch_size)
                candidates.extend(self._batch_masks(batch, upsampler, crop_box, rgb.shape[:2]))
            kept = nms(candidates.box_array(), candidates.scores, self.box_nms_thresh)
            coverage.mask[:] = False
            for i in kept:
                mask = candidates.masks[i]
                coverage.mask[mask.slices] |= mask.window
            coverage.history.append(int(coverage.mask.sum()))
        found = candidates.take(kept)
        offset = np.array([x0, y0, x0, y0])
        found.masks = [m.moved(y0, x0, rgb.shape[:2]) for m in found.masks]
        found.boxes = [box + offset for box in found.boxes]
        found.points = [point + offset[:2] for point in found.points]
        return found

    def _batch_masks(self, prompts: PromptRound, upsampler: LogitUpsampler, crop_box,
                     image_shape) -> _Masks:
        """Decode one batch and keep the masks that pass the filters, as Meta decides."""
        model = self.predictor.model
        # The IoU filter needs no mask, so masks are made only for prompts that pass it.
        min_score = self.pred_iou_thresh if self.pred_iou_thresh > 0 else None
        if prompts.points is not None:
            decoded = self.predictor.predict_logits(
                points=prompts.points[:, None], labels=np.ones((len(prompts), 1)),
                multimask=prompts.multimask, min_score=min_score)
            centres = prompts.points
        else:
            decoded = self.predictor.predict_logits(
                boxes=prompts.boxes, multimask=prompts.multimask, min_score=min_score)
            centres = (prompts.boxes[:, :2] + prompts.boxes[:, 2:]) / 2
        self.decoder_calls += len(prompts)
        k = decoded.scores.shape[1]
        logits = decoded.logits.flatten(0, 1).float().cpu().numpy()
        scores = decoded.scores[decoded.index].flatten().float().cpu().numpy()
        prompt_of = decoded.index.cpu().numpy().repeat(k)
        survivors = np.arange(len(scores))
        if min_score is not None:
            survivors = survivors[scores > min_score]

        threshold, offset = model.mask_threshold, self.stability_score_offset
        lowest = min(threshold, threshold - offset, threshold + offset)
        shape = tuple(int(s) for s in upsampler.shape)
        kept = _Masks()
        for i in survivors.tolist():
            window = upsampler.window(logits[i], lowest)
            if window is None:
                stability, mask = math.nan, WindowMask(0, 0, np.zeros((0, 0), bool), shape)
            else:
                top, left, values = window
                stability = float(stability_score(values, threshold, offset))
                mask = WindowMask.trimmed(top, left, values > threshold, shape)
            if self.stability_score_thresh > 0 and not stability >= self.stability_score_thresh:
                continue
            box = meta_box(mask)
            if _near_crop_edge(box, crop_box, image_shape):
                continue
            kept.masks.append(mask)
            kept.scores.append(float(scores[i]))
            kept.stability.append(stability)
            kept.boxes.append(box)
            kept.points.append(centres[prompt_of[i]][::-1].astype(np.float64))
            kept.crop_boxes.append(tuple(int(c) for c in crop_box))
        return kept

    def _upsampler(self, input_size, original_size) -> LogitUpsampler:
        """One upsampler per crop size: crops of a layer share it."""
        key = (tuple(input_size), tuple(original_size))
        if key not in self._upsamplers:
            model = self.predictor.model
            self._upsamplers[key] = LogitUpsampler(
                model.prompt_encoder.mask_input_size, model.img_size, input_size, original_size)
        return self._upsamplers[key]

    def _remove_small_regions(self, found: _Masks) -> _Masks:
        """Fill small holes, drop small islands, then suppress duplicates again (Meta's rule:
        unchanged masks win over changed ones)."""
        masks, unchanged = [], []
        for mask in found.masks:
            dense, filled = remove_small_regions(mask.dense(), self.min_mask_region_area, "holes")
            dense, dropped = remove_small_regions(dense, self.min_mask_region_area, "islands")
            masks.append(WindowMask.trimmed(0, 0, dense, mask.shape))
            unchanged.append(float(not (filled or dropped)))
        boxes = np.array([meta_box(m) for m in masks])
        keep = nms(boxes, unchanged, max(self.box_nms_thresh, self.crop_nms_thresh))
        for i in keep:
            if not unchanged[i]:
                found.masks[i], found.boxes[i] = masks[i], boxes[i]
        return found.take(keep)

    def _record(self, found: _Masks, i: int) -> dict[str, Any]:
        mask = found.masks[i]
        x0, y0, x1, y1 = (int(v) for v in found.boxes[i])
        cx0, cy0, cx1, cy1 = found.crop_boxes[i]
        if self.output_mode == "binary_mask":
            segmentation = mask.dense()
        elif self.output_mode == "uncompressed_rle":
            segmentation = mask_to_rle(mask.dense())
        else:
            segmentation = coco_rle(mask.dense())
        return {
            "segmentation": segmentation,
            "area": mask.area,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "predicted_iou": found.scores[i],
            "point_coords": [found.points[i].tolist()],
            "stability_score": found.stability[i],
            "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
        }


def crop_boxes(shape: tuple[int, int], n_layers: int,
               overlap_ratio: float) -> list[tuple[tuple[int, int, int, int], int]]:
    """Meta's crops: the whole image, then ``(2**i)**2`` overlapping crops in layer ``i``.

    Returns
    -------
    list of ((x0, y0, x1, y1), layer)
    """
    height, width = shape
    crops = [((0, 0, width, height), 0)]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(shape) * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        starts_x = [int((crop_w - overlap) * i) for i in range(per_side)]
        starts_y = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(starts_x, starts_y):
            crops.append(((x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)), layer))
    return crops


def _make_sampler(sampler, points_per_side, point_grids, crop_n_layers, downscale, detector):
    if not isinstance(sampler, str):
        if not hasattr(sampler, "rounds"):
            raise ValueError(f"sampler must be one of {SAMPLERS} or have a rounds() method")
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
    if sampler == "boxes":
        return BoxSampler(detector)
    if (points_per_side is None) == (point_grids is None):
        raise ValueError("give exactly one of points_per_side and point_grids")
    if sampler == "adaptive":
        if points_per_side is None:
            raise ValueError("the adaptive sampler needs points_per_side, not point_grids")
        return AdaptiveSampler(points_per_side, coarse_per_side=max(1, points_per_side // 4))
    if point_grids is not None:
        return GridSampler([np.asarray(grid, dtype=np.float64) for grid in point_grids])
    return GridSampler.per_side(points_per_side, crop_n_layers, downscale)


def _slice(prompts: PromptRound, start: int, stop: int) -> PromptRound:
    if prompts.points is not None:
        return PromptRound(points=prompts.points[start:stop], multimask=prompts.multimask)
    return PromptRound(boxes=prompts.boxes[start:stop], multimask=prompts.multimask)


def _near_crop_edge(box: np.ndarray, crop_box, image_shape) -> bool:
    """Meta's rule: a mask near an edge of its crop that is not an edge of the image was cut."""
    x0, y0 = crop_box[:2]
    box = box + np.array([x0, y0, x0, y0])
    image_box = np.array([0, 0, image_shape[1], image_shape[0]])
    near_crop = np.abs(box - np.asarray(crop_box)) <= CROP_EDGE_TOLERANCE
    near_image = np.abs(box - image_box) <= CROP_EDGE_TOLERANCE
    return bool(np.any(near_crop & ~near_image))
