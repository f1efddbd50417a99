"""Automatic prompt generation (APG): prompts from an instance decoder's maps, masks from SAM.

micro-sam's ``AutomaticPromptGenerator`` (1.8.14), step by step:

1. Seeds: pixels whose foreground is at least ``foreground_threshold`` and whose centre and
   boundary distances are both below their thresholds, unsmoothed; each 4-connected component
   is one object.
2. One positive point per seed, at its most interior pixel: the maximum of the distance to the
   seeds' outer boundaries (the image's edge counts as a boundary), first in raster order.
3. SAM's decoder answers every point (one mask, or the best scored of three with
   ``multimasking``); a mask is its upsampled logits above ``mask_threshold``, its stability
   the IoU of the masks at the threshold +-1. With ``refine_with_box_prompts`` every mask's
   box, widened by 1% of its size on each side, is asked again and replaces it.
4. Masks of more than ``min_size`` pixels go through a non-maximum suppression on mask IoU
   (or intersection over the smaller mask), best predicted IoU x stability first: a mask is
   dropped when it overlaps a kept one by more than ``nms_threshold``.
5. Labels: the kept masks painted largest first, each only where no larger one is; every
   4-connected piece of an id becomes its own object, pieces smaller than ``min_size`` pixels
   are removed, ids numbered 1..n in raster order.

The functions of the steps are public so that the one path
(:meth:`napari_sam.Segmenter.segment_all` with ``mode="apg"``) can run steps 1, 2, 4 and 5 once
on the stitched maps of a whole plane and step 3 (:func:`answered_points`) on the tile whose
core holds each prompt.

``tests/test_apg.py`` proves the masks equal micro-sam's. Three deliberate differences, none
seen on a test image: micro-sam measures the distances of step 2 in 512 x 512 blocks with a
16-pixel halo (ours are exact, so centres agree for objects within 16 pixels of a block seam);
it clips a widened box's x to the image height and its y to the width (ours clip each to its
own axis, at the image's edge, half a pixel past the last pixel centre); its suppression order
breaks ties of score arbitrarily (ours by prompt order).
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.segmentation import find_boundaries, relabel_sequential

from napari_sam.engine.checks import check_names, check_number
from napari_sam.engine.geometry import WindowMask
from napari_sam.engine.instances import check_map_settings, checked_maps
from napari_sam.engine.mask_ops import LogitUpsampler, meta_box, stability_score
from napari_sam.engine.predictor import Predictor

MIN_SIZE = 25  # micro-sam's default smallest object, in pixels
STABILITY_OFFSET = 1.0  # micro-sam's batched inference scores stability at the threshold +-1
BOX_EXTENSION = 0.01  # refinement boxes grow by this fraction of the mask's box on each side


@dataclass
class PromptedMask:
    """One mask SAM gave for a derived prompt.

    Attributes
    ----------
    mask : WindowMask
    predicted_iou, stability_score : float
    prompt : (2,) or (4,) float array
        The ``(row, col)`` point or the ``(min_row, min_col, max_row, max_col)`` box asked.
    """

    mask: WindowMask
    predicted_iou: float
    stability_score: float
    prompt: np.ndarray

    def moved(self, top: int, left: int, shape: tuple[int, int]) -> PromptedMask:
        """The same answer placed at ``(top, left)`` in a larger image of ``shape``."""
        offset = np.tile([top, left], len(self.prompt) // 2)
        return PromptedMask(self.mask.moved(top, left, shape), self.predicted_iou,
                            self.stability_score, self.prompt + offset)


def point_prompts(
    foreground: np.ndarray,
    center_distances: np.ndarray,
    boundary_distances: np.ndarray,
    *,
    foreground_threshold: float = 0.5,
    center_distance_threshold: float = 0.5,
    boundary_distance_threshold: float = 0.5,
) -> np.ndarray:
    """One point per object that an instance decoder's maps describe (steps 1-2 above).

    Parameters
    ----------
    foreground, center_distances, boundary_distances : (H, W) float arrays
        The decoder's maps at the plane's pixels; pixels where any is not finite are no seed.
    foreground_threshold, center_distance_threshold, boundary_distance_threshold : float
        Seeds have foreground >= the first and both distances below the others.

    Returns
    -------
    (N, 2) int64 array
        ``(row, col)`` of each seed's most interior pixel, seeds in raster order.

    Examples
    --------
    >>> rows, cols = np.mgrid[:20, :32]
    >>> to_centres = np.minimum(np.hypot(rows - 10, cols - 10), np.hypot(rows - 10, cols - 21))
    >>> foreground = (to_centres < 6).astype(np.float32)
    >>> distances = np.where(foreground > 0, to_centres / 6, 1).astype(np.float32)
    >>> point_prompts(foreground, distances, distances).tolist()
    [[10, 10], [10, 21]]
    """
    foreground, center_distances, boundary_distances = checked_maps(
        foreground=foreground, center_distances=center_distances,
        boundary_distances=boundary_distances,
    )
    thresholds = {"foreground_threshold": foreground_threshold,
                  "center_distance_threshold": center_distance_threshold,
                  "boundary_distance_threshold": boundary_distance_threshold}
    check_map_settings(thresholds=thresholds, sigmas={}, min_size=0)
    with np.errstate(invalid="ignore"):
        seeds = foreground >= foreground_threshold
        seeds &= center_distances < center_distance_threshold
        seeds &= boundary_distances < boundary_distance_threshold
    seeds &= np.isfinite(foreground) & np.isfinite(center_distances)
    seeds &= np.isfinite(boundary_distances)
    components = label(seeds, connectivity=1)
    inside = ~find_boundaries(components, mode="outer")
    for edge in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]):
        inside[edge] = False
    depth = ndimage.distance_transform_edt(inside)
    points = []
    for index, window in enumerate(ndimage.find_objects(components), 1):
        # Deepest pixel of the seed within its box; a seed with no depth (e.g. along the
        # image's edge) gets its box's first pixel, as micro-sam's argmax does.
        depth_in_seed = np.where(components[window] == index, depth[window], 0)
        row, col = np.unravel_index(np.argmax(depth_in_seed), depth_in_seed.shape)
        points.append((row + window[0].start, col + window[1].start))
    return np.array(points, dtype=np.int64).reshape(-1, 2)


def prompted_masks(
    predictor: Predictor,
    foreground: np.ndarray,
    center_distances: np.ndarray,
    boundary_distances: np.ndarray,
    *,
    min_size: int = MIN_SIZE,
    center_distance_threshold: float = 0.5,
    boundary_distance_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
    multimasking: bool = False,
    batch_size: int = 32,
    nms_threshold: float = 0.9,
    intersection_over_min: bool = False,
    mask_threshold: float | None = None,
    refine_with_box_prompts: bool = False,
) -> list[PromptedMask]:
    """The distinct masks SAM gives for prompts derived from an instance decoder's maps.

    Steps 1-4 above; :func:`prompted_labels` paints them (step 5). Parameters and defaults
    are micro-sam's (``AutomaticPromptGenerator.generate``).

    Parameters
    ----------
    predictor : Predictor
        With the image set (:meth:`~napari_sam.Predictor.set_image` or ``set_embedding``).
    foreground, center_distances, boundary_distances : (H, W) float arrays
        The instance decoder's maps of that image, at its pixels.
    min_size : int
        Masks of at most this many pixels are dropped before the suppression (and, in
        :func:`prompted_labels`, pieces of fewer pixels after painting).
    center_distance_threshold, boundary_distance_threshold, foreground_threshold : float
        Seeds for the prompts, see :func:`point_prompts`.
    multimasking : bool
        Ask for three masks per prompt and keep the best scored.
    batch_size : int
        Prompts decoded at once (the answers do not depend on it).
    nms_threshold : float
        Overlap above which the lower scored of two masks is dropped, in ``[0, 1]``.
    intersection_over_min : bool
        Overlap as intersection over the smaller mask instead of IoU.
    mask_threshold : float, optional
        Logit above which a pixel is in a mask; the model's (0) by default.
    refine_with_box_prompts : bool
        Ask again with each mask's box, widened by 1% on each side.

    Returns
    -------
    list of PromptedMask
        The masks kept by the suppression, best score first.

    Raises
    ------
    ValueError, TypeError
        Maps not 2D, of other shapes than the image or not real; a setting out of range.
    RuntimeError
        The predictor has no image.
    """
    _check_values(batch_size=batch_size, nms_threshold=nms_threshold, min_size=min_size,
                  mask_threshold=mask_threshold)
    if predictor.embedding is None:
        raise RuntimeError("the predictor has no image: call predictor.set_image(image) first")
    shape = tuple(int(s) for s in predictor.embedding.original_size)
    maps = checked_maps(foreground=foreground, center_distances=center_distances,
                         boundary_distances=boundary_distances)
    if maps[0].shape != shape:
        raise ValueError(
            f"the maps have shape {maps[0].shape} but the predictor's image has shape {shape}: "
            "give the maps at the image's pixels (resize the decoder's output to the image)"
        )
    points = point_prompts(*maps, foreground_threshold=foreground_threshold,
                           center_distance_threshold=center_distance_threshold,
                           boundary_distance_threshold=boundary_distance_threshold)
    found = answered_points(predictor, points, multimasking=multimasking, batch_size=batch_size,
                            mask_threshold=mask_threshold,
                            refine_with_box_prompts=refine_with_box_prompts)
    return distinct_masks(found, min_size=min_size, nms_threshold=nms_threshold,
                          intersection_over_min=intersection_over_min)


def prompted_labels(
    predictor: Predictor,
    foreground: np.ndarray,
    center_distances: np.ndarray,
    boundary_distances: np.ndarray,
    **settings,
) -> np.ndarray:
    """Label image of micro-sam's automatic prompt generation (APG) on the predictor's image.

    Parameters
    ----------
    predictor, foreground, center_distances, boundary_distances
        As in :func:`prompted_masks`.
    **settings
        micro-sam's settings, with its defaults: see :func:`prompted_masks`.

    Returns
    -------
    (H, W) uint32 array
        0 is background, objects 1..n in raster order of their first pixel.

    Examples
    --------
    >>> predictor.set_image(image)  # doctest: +SKIP
    >>> labels = prompted_labels(predictor, *decoder_maps, multimasking=True)  # doctest: +SKIP
    """
    found = prompted_masks(predictor, foreground, center_distances, boundary_distances,
                           **settings)
    shape = tuple(int(s) for s in predictor.embedding.original_size)
    return painted_labels(found, shape, min_size=settings.get("min_size", MIN_SIZE))


def answered_points(predictor: Predictor, points: np.ndarray, *, multimasking: bool = False,
                    batch_size: int = 32, mask_threshold: float | None = None,
                    refine_with_box_prompts: bool = False) -> list[PromptedMask]:
    """SAM's mask for each point prompt on the predictor's image (step 3 above).

    Parameters
    ----------
    predictor : Predictor
        With the image set.
    points : (N, 2) array
        ``(row, col)`` of the prompts, in the predictor's image.
    multimasking, batch_size, mask_threshold, refine_with_box_prompts
        As in :func:`prompted_masks`.

    Returns
    -------
    list of PromptedMask
        One per point, in the order of ``points``.
    """
    if mask_threshold is None:
        mask_threshold = predictor.model.mask_threshold
    shape = tuple(int(s) for s in predictor.embedding.original_size)
    decode = _Decoder(predictor, batch_size, multimasking, mask_threshold)
    found = decode(points=np.asarray(points))
    if refine_with_box_prompts and found:
        found = decode(boxes=np.array([_widened_box(m.mask, shape) for m in found]))
    return found


def distinct_masks(found: list[PromptedMask], *, min_size: int = MIN_SIZE,
                   nms_threshold: float = 0.9,
                   intersection_over_min: bool = False) -> list[PromptedMask]:
    """The masks of more than ``min_size`` pixels that survive the suppression (step 4 above).

    Parameters
    ----------
    found : list of PromptedMask
        Masks of one image (of one shape).
    min_size, nms_threshold, intersection_over_min
        As in :func:`prompted_masks`.

    Returns
    -------
    list of PromptedMask
        Best score first.
    """
    if min_size > 0:
        found = [m for m in found if m.mask.area > min_size]
    return [found[i] for i in _mask_nms(found, nms_threshold, intersection_over_min)]


def painted_labels(found: list[PromptedMask], shape: tuple[int, int], *,
                   min_size: int = MIN_SIZE) -> np.ndarray:
    """micro-sam's label image of the kept masks (step 5 above).

    Parameters
    ----------
    found : list of PromptedMask
        Masks of an image of ``shape`` (:func:`distinct_masks`).
    shape : (2,) tuple of int
    min_size : int
        Pieces of fewer pixels are removed.

    Returns
    -------
    (H, W) uint32 array
        0 is background, objects 1..n in raster order of their first pixel.
    """
    painted = np.zeros(shape, dtype=np.uint32)
    largest_first = sorted(found, key=lambda m: m.mask.area, reverse=True)
    for index, found_mask in enumerate(largest_first, 1):
        mask = found_mask.mask
        painted[mask.slices][mask.window & (painted[mask.slices] == 0)] = index
    pieces = label(painted, background=0, connectivity=1)
    small = np.bincount(pieces.ravel()) < min_size
    small[0] = False
    pieces[small[pieces]] = 0
    return relabel_sequential(pieces)[0].astype(np.uint32)


# The settings of prompted_masks (all but the predictor and the three maps), micro-sam's names
# and defaults.
SETTINGS = {name: parameter.default for name, parameter in
            tuple(inspect.signature(prompted_masks).parameters.items())[4:]}


def check_settings(settings: dict) -> dict:
    """``settings`` of :func:`prompted_masks` checked before any image is embedded, with the
    defaults for those not given.

    Raises
    ------
    TypeError
        An unknown setting, naming those there are.
    ValueError
        A value out of range, naming the setting and the valid range.
    """
    check_names(settings, SETTINGS, "APG")
    settings = {**SETTINGS, **settings}
    _check_values(**{name: settings[name] for name in
                     ("batch_size", "nms_threshold", "min_size", "mask_threshold")})
    seeds = ("foreground_threshold", "center_distance_threshold", "boundary_distance_threshold")
    check_map_settings(thresholds={name: settings[name] for name in seeds}, sigmas={}, min_size=0)
    return settings


def _check_values(*, batch_size, nms_threshold, min_size, mask_threshold) -> None:
    """Errors naming the setting and what to pass instead."""
    check_number("batch_size", batch_size, low=1, integer=True)
    check_number("nms_threshold", nms_threshold, low=0, high=1)
    check_map_settings(thresholds={}, sigmas={}, min_size=min_size)
    if mask_threshold is not None and (not isinstance(mask_threshold, numbers.Real)
                                       or not math.isfinite(mask_threshold)):
        raise ValueError(
            f"mask_threshold must be a finite number (a logit) or None for the model's "
            f"threshold, got {mask_threshold!r}; micro-sam's 'auto' (local Otsu) is not "
            "implemented"
        )


class _Decoder:
    """SAM's masks for batches of point or box prompts, as micro-sam's batched inference."""

    def __init__(self, predictor: Predictor, batch_size: int, multimask: bool,
                 threshold: float) -> None:
        model, embedding = predictor.model, predictor.embedding
        self.predictor, self.batch_size, self.multimask = predictor, batch_size, multimask
        self.threshold = threshold
        self.upsampler = LogitUpsampler(model.prompt_encoder.mask_input_size, model.img_size,
                                        embedding.input_size, embedding.original_size)

    def __call__(self, *, points: np.ndarray | None = None,
                 boxes: np.ndarray | None = None) -> list[PromptedMask]:
        prompts = points if boxes is None else boxes
        found = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start: start + self.batch_size]
            if boxes is None:
                decoded = self.predictor.predict_logits(
                    points=batch[:, None], labels=np.ones((len(batch), 1)), multimask=self.multimask)
            else:
                decoded = self.predictor.predict_logits(boxes=batch, multimask=self.multimask)
            scores = decoded.scores.float().cpu().numpy()
            logits = decoded.logits.float().cpu().numpy()
            best = scores.argmax(1)
            for i, prompt in enumerate(batch):
                found.append(self._mask(logits[i, best[i]], scores[i, best[i]], prompt))
        return found

    def _mask(self, logits: np.ndarray, score: float, prompt: np.ndarray) -> PromptedMask:
        """The upsampled mask of one answer and its stability."""
        shape = self.upsampler.shape
        window = self.upsampler.window(logits, self.threshold - STABILITY_OFFSET)
        if window is None:
            mask, stability = WindowMask(0, 0, np.zeros((0, 0), bool), shape), math.nan
        else:
            top, left, values = window
            stability = float(stability_score(values, self.threshold, STABILITY_OFFSET))
            mask = WindowMask.trimmed(top, left, values > self.threshold, shape)
        return PromptedMask(mask, float(score), stability, np.asarray(prompt, dtype=np.float64))


def _widened_box(mask: WindowMask, shape: tuple[int, int]) -> np.ndarray:
    """micro-sam's refinement box: the mask's box grown by ``BOX_EXTENSION`` of its width and
    height on each side, within the image, as ``(min_row, min_col, max_row, max_col)``."""
    x0, y0, x1, y1 = meta_box(mask).astype(np.float64)
    grow_x, grow_y = (x1 - x0) * BOX_EXTENSION, (y1 - y0) * BOX_EXTENSION
    return np.array([max(y0 - grow_y, 0), max(x0 - grow_x, 0),
                     min(y1 + grow_y, shape[0] - 0.5), min(x1 + grow_x, shape[1] - 0.5)])


def _mask_nms(found: list[PromptedMask], threshold: float, over_min: bool) -> list[int]:
    """Greedy suppression on mask overlap, highest predicted IoU x stability first.

    Overlap is measured only between masks whose boxes (maxima inclusive) share an area, as
    micro-sam does; a mask overlapping a kept one by more than ``threshold`` (or by NaN, two
    empty masks) is dropped.
    """
    if not found:
        return []
    boxes = np.array([meta_box(m.mask) for m in found])
    scores = np.array([m.predicted_iou for m in found], np.float32)
    scores *= np.array([m.stability_score for m in found], np.float32)
    areas = np.array([m.mask.area for m in found], np.float64)
    low, high = np.maximum(boxes[:, None, :2], boxes[None, :, :2]), \
        np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    touching = ((high - low) > 0).all(-1)
    order = np.argsort(-scores, kind="stable")
    alive = np.ones(len(found), bool)
    kept = []
    for i in order:
        if not alive[i]:
            continue
        kept.append(int(i))
        alive[i] = False
        others = np.flatnonzero(alive & touching[i])
        dense = found[i].mask.dense()
        shared = np.array([(dense[found[j].mask.slices] & found[j].mask.window).sum()
                           for j in others], np.float64)
        if over_min:
            overlap = shared / (np.minimum(areas[i], areas[others]) + 1e-6)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                overlap = shared / (areas[i] + areas[others] - shared)
        alive[others[~(overlap <= threshold)]] = False
    return kept
