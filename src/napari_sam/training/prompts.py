"""Prompt simulation from ground-truth label images, for training SAM.

Everything here is numpy in, numpy out, in the public ``(row, col)`` order: points are
``(row, col)`` pixel indices (pixel centres are whole numbers), boxes are
``(min_row, min_col, max_row, max_col)`` with **inclusive** max (the centre of the last pixel of
the object, as the engine's :class:`~napari_sam.engine.predictor.Predictor` takes them, and as
SAM's own ``batched_mask_to_box``). The flip to SAM's ``(x, y)`` happens only at the boundary into
``models/``, with :func:`napari_sam.engine.prompts.rc_to_xy` and
:func:`~napari_sam.engine.prompts.box_rc_to_xy` (or :meth:`PromptBatch.points_xy` /
:meth:`PromptBatch.boxes_xy`).

Randomness comes only from the ``numpy.random.Generator`` passed in, so that a fixed seed gives
identical prompts.

The simulation follows SAM's training recipe (Kirillov et al. 2023, appendix A): a first prompt
made of random points inside the object and / or its jittered bounding box, then correction
points placed in the error region of the previous prediction (:func:`correction_point`); the
previous prediction's logits are the mask input of the next round (the trainer's job).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_sam.engine.prompts import box_rc_to_xy, rc_to_xy

__all__ = [
    "sample_objects",
    "positive_points",
    "negative_points",
    "background_points",
    "jittered_box",
    "correction_point",
    "correction_points",
    "PromptBatch",
    "simulate_prompts",
    "MODES",
]

#: Prompt modes of :func:`simulate_prompts`.
MODES = ("point", "box", "point+box", "mixed")


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy.random.Generator, e.g. np.random.default_rng(0), got {type(rng).__name__}"
        )
    return rng


def _check_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"labels must be a 2D label image (H, W), got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer label image (0 = background, one id per object), got dtype "
            f"{arr.dtype}; for a single boolean mask use labels = mask.astype(np.uint32)"
        )
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() < 0:
        raise ValueError("labels must not contain negative ids (0 = background)")
    return arr


def _check_mask(mask, name: str = "mask", *, nonempty: bool = True) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D mask (H, W), got shape {arr.shape}")
    if arr.dtype != bool:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(f"{name} must be a boolean (or 0/1 numeric) mask, got dtype {arr.dtype}")
        arr = arr != 0
    if nonempty and not arr.any():
        raise ValueError(f"{name} is empty: it contains no object pixel")
    return arr


def _check_count(name: str, value, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_margin(value, *, zero_ok: bool) -> float:
    """A distance in pixels: > 0, or >= 0 with ``zero_ok``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
        value >= 0 if zero_ok else value > 0
    ):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"margin must be a number of pixels {bound}, got {value!r}")
    return float(value)


def _check_fraction(name: str, value, *, high: float = 1.0, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if v < 0 or v > high or (high_open and v == high):
        bound = f"< {high:g}" if high_open else f"<= {high:g}"
        raise ValueError(f"{name} must be >= 0 and {bound}, got {v:g}")
    return v


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive ``(min_row, min_col, max_row, max_col)`` of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def _inner_distance(region: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Distance of each pixel of ``region`` to the nearest pixel outside it, in its bbox crop.

    The crop is padded with one background pixel, so the image edge counts as a border too.
    Returns (distances of the crop, row offset, col offset).
    """
    r0, c0, r1, c1 = _bbox(region)
    crop = np.pad(region[r0:r1 + 1, c0:c1 + 1], 1)
    return ndi.distance_transform_edt(crop)[1:-1, 1:-1], r0, c0


# --------------------------------------------------------------------------- #
# objects and points
# --------------------------------------------------------------------------- #
def sample_objects(labels, n: int, rng: np.random.Generator, *, min_area: int = 16) -> np.ndarray:
    """Ids of up to ``n`` distinct objects of a label image, drawn uniformly without replacement.

    Parameters
    ----------
    labels : (H, W) integer array
        Label image, 0 = background.
    n : int >= 0
        Number of objects wanted.
    rng : numpy.random.Generator
    min_area : int >= 1
        Objects with fewer pixels are skipped (too small to prompt meaningfully).

    Returns
    -------
    (m,) array of the labels' dtype
        ``m = min(n, number of objects with area >= min_area)`` distinct ids in random order;
        empty when no object qualifies (the caller decides whether to skip the image).

    Raises
    ------
    ValueError
        If ``labels`` is not a 2D non-negative integer array, or ``n`` / ``min_area`` are invalid.
    """
    labels = _check_labels(labels)
    n = _check_count("n", n)
    min_area = _check_count("min_area", min_area, low=1)
    rng = _check_rng(rng)
    ids, counts = np.unique(labels, return_counts=True)
    keep = (ids != 0) & (counts >= min_area)
    ids = ids[keep]
    m = min(n, len(ids))
    if m == 0:
        return ids[:0]
    return ids[rng.choice(len(ids), size=m, replace=False)]


def positive_points(mask, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` distinct points inside the object, preferring points far from its border.

    Each object pixel is drawn (without replacement) with probability proportional to its
    Euclidean distance to the nearest pixel outside the object (``distance_transform_edt``,
    with the image edge counting as border): border pixels (distance 1) are possible but rare,
    the middle of the object is the most likely.

    Parameters
    ----------
    mask : (H, W) bool array
        The object (non-empty).
    k : int >= 0
        Number of points wanted.
    rng : numpy.random.Generator

    Returns
    -------
    (m, 2) int64 array
        ``(row, col)`` of ``m = min(k, object area)`` distinct object pixels.

    Raises
    ------
    ValueError
        If ``mask`` is not 2D or empty, or ``k`` is invalid.
    """
    mask = _check_mask(mask)
    k = _check_count("k", k)
    rng = _check_rng(rng)
    dist, r0, c0 = _inner_distance(mask)
    rows, cols = np.nonzero(dist)
    weights = dist[rows, cols]
    m = min(k, len(rows))
    if m == 0:
        return np.zeros((0, 2), dtype=np.int64)
    pick = rng.choice(len(rows), size=m, replace=False, p=weights / weights.sum())
    return np.stack([rows[pick] + r0, cols[pick] + c0], axis=1).astype(np.int64)


def negative_points(
    mask,
    k: int,
    rng: np.random.Generator,
    *,
    labels=None,
    margin: float | None = None,
) -> np.ndarray:
    """Up to ``k`` distinct points outside the object but near it, where they are informative.

    Points are drawn without replacement from the band of pixels outside the object whose
    distance to it is at most ``margin``. Without ``labels`` the band is sampled uniformly. With
    ``labels``, pixels on other objects (typically touching neighbours, the hardest negatives)
    and background pixels of the band each get half of the probability, when the band has both.
    If the band is empty (the object fills its surroundings), any pixel outside the object is
    used; if there is none, no point is returned.

    Parameters
    ----------
    mask : (H, W) bool array
        The object (non-empty).
    k : int >= 0
        Number of points wanted.
    rng : numpy.random.Generator
    labels : (H, W) integer array, optional
        The label image, to balance points between other objects and background.
    margin : float > 0, optional
        Width of the band in pixels; default ``max(3, 0.5 * sqrt(area))`` (about one radius of
        a round object, 3 pixels at least).

    Returns
    -------
    (m, 2) int64 array
        ``(row, col)`` of ``m <= k`` distinct pixels outside the object.

    Raises
    ------
    ValueError
        If ``mask`` is not 2D or empty, ``labels`` has another shape, or ``k`` / ``margin`` are
        invalid.
    """
    mask = _check_mask(mask)
    k = _check_count("k", k)
    rng = _check_rng(rng)
    if labels is not None:
        labels = _check_labels(labels)
        if labels.shape != mask.shape:
            raise ValueError(f"labels must have the mask's shape {mask.shape}, got {labels.shape}")
    if margin is None:
        margin = max(3.0, 0.5 * math.sqrt(float(mask.sum())))
    else:
        margin = _check_margin(margin, zero_ok=False)
    if k == 0:
        return np.zeros((0, 2), dtype=np.int64)

    h, w = mask.shape
    r0, c0, r1, c1 = _bbox(mask)
    pad = int(math.ceil(margin)) + 1
    r0, c0 = max(r0 - pad, 0), max(c0 - pad, 0)
    r1, c1 = min(r1 + pad, h - 1), min(c1 + pad, w - 1)
    crop = mask[r0:r1 + 1, c0:c1 + 1]
    band = ~crop & (ndi.distance_transform_edt(~crop) <= margin)
    if not band.any():  # the object fills its surroundings: take any outside pixel
        r0 = c0 = 0
        band = ~mask
        if not band.any():
            return np.zeros((0, 2), dtype=np.int64)
    rows, cols = np.nonzero(band)
    weights = np.ones(len(rows))
    if labels is not None:
        other = labels[rows + r0, cols + c0] != 0
        n_other = int(other.sum())
        if 0 < n_other < len(rows):
            weights = np.where(other, 0.5 / n_other, 0.5 / (len(rows) - n_other))
    m = min(k, len(rows))
    pick = rng.choice(len(rows), size=m, replace=False, p=weights / weights.sum())
    return np.stack([rows[pick] + r0, cols[pick] + c0], axis=1).astype(np.int64)


def background_points(labels, k: int, rng: np.random.Generator, *, margin: float = 3.0) -> np.ndarray:
    """Up to ``k`` distinct background pixels at least ``margin`` pixels away from every object.

    Clicks that point at no object. SAM never sees them in training, so its predicted IoU for
    them is arbitrary, and automatic segmentation keeps masks from grid points that fall on
    background; trained with an empty target and a true IoU of 0 (see
    :meth:`PromptBatch.with_background_clicks`), they teach the IoU head to score them low.
    Pixels right next to an object are left out: a click there may well be meant for it.

    Parameters
    ----------
    labels : (H, W) integer array
        Ground-truth label image, 0 = background.
    k : int >= 0
        Number of points wanted.
    rng : numpy.random.Generator
    margin : float >= 0
        Smallest distance to an object, in pixels.

    Returns
    -------
    (m, 2) int64 array
        ``(row, col)`` of ``m <= k`` distinct pixels, fewer when the background is smaller.
    """
    labels = _check_labels(labels)
    k = _check_count("k", k)
    rng = _check_rng(rng)
    far = ndi.distance_transform_edt(labels == 0) > _check_margin(margin, zero_ok=True)
    rows, cols = np.nonzero(far)
    pick = rng.choice(len(rows), size=min(k, len(rows)), replace=False)
    return np.stack([rows[pick], cols[pick]], axis=1).astype(np.int64)


def jittered_box(
    mask,
    rng: np.random.Generator,
    *,
    jitter: float = 0.1,
    image_shape: tuple[int, int] | None = None,
    max_shift: float | None = None,
) -> np.ndarray:
    """The object's bounding box with each side moved at random, clipped to the image.

    Each of the four sides moves by ``u * jitter * L`` with ``u`` uniform in ``[-1, 1]``
    (independently per side) and ``L`` the box's extent along that side's axis in pixels
    (height for the row sides, width for the column sides), optionally capped at ``max_shift``
    pixels (SAM caps its noise at 20 pixels). Since a side moves inwards by at most
    ``jitter * L``, the box always keeps the central ``(1 - 2 * jitter)`` of the bounding box
    along each axis (80% x 80% for the default 0.1), so it still contains most of the object;
    with ``jitter=0`` it is exactly the bounding box and contains the whole object. Four uniform
    numbers are drawn from ``rng`` whatever the jitter, so the random stream does not depend on it.

    Parameters
    ----------
    mask : (H, W) bool array
        The object (non-empty).
    rng : numpy.random.Generator
    jitter : float in [0, 0.5)
        Maximum shift of each side as a fraction of the box's extent.
    image_shape : (int, int), optional
        ``(H, W)`` to clip to; default ``mask.shape``.
    max_shift : float >= 0, optional
        Cap of the shift in pixels; None (default) for no cap.

    Returns
    -------
    (4,) float64 array
        ``(min_row, min_col, max_row, max_col)``, inclusive pixel coordinates with
        ``0 <= min <= max <= size - 1``.

    Raises
    ------
    ValueError
        If ``mask`` is not 2D or empty, or ``jitter``, ``image_shape``, ``max_shift`` are invalid.
    """
    mask = _check_mask(mask)
    rng = _check_rng(rng)
    jitter = _check_fraction("jitter", jitter, high=0.5, high_open=True)
    if image_shape is None:
        image_shape = mask.shape
    try:
        image_shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be a (H, W) pair of positive ints, got {image_shape!r}") from None
    if len(image_shape) != 2 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be a (H, W) pair of positive ints, got {image_shape!r}")
    if max_shift is not None and (
        isinstance(max_shift, bool) or not isinstance(max_shift, numbers.Real) or not max_shift >= 0
    ):
        raise ValueError(f"max_shift must be a number of pixels >= 0 or None, got {max_shift!r}")
    r0, c0, r1, c1 = _bbox(mask)
    box = np.array([r0, c0, r1, c1], dtype=np.float64)
    extent = np.array([r1 - r0 + 1, c1 - c0 + 1] * 2, dtype=np.float64)
    shift = rng.uniform(-1.0, 1.0, 4) * jitter * extent
    if max_shift is not None:
        shift = np.clip(shift, -max_shift, max_shift)
    box = box + shift
    hi = np.array([image_shape[0] - 1, image_shape[1] - 1] * 2, dtype=np.float64)
    box = np.clip(box, 0.0, hi)
    for lo_i, hi_i in ((0, 2), (1, 3)):  # sides that crossed: collapse to their middle
        if box[lo_i] > box[hi_i]:
            box[lo_i] = box[hi_i] = 0.5 * (box[lo_i] + box[hi_i])
    return box


# --------------------------------------------------------------------------- #
# correction points
# --------------------------------------------------------------------------- #
def correction_point(
    pred_mask, true_mask, rng: np.random.Generator
) -> tuple[tuple[int, int], int] | None:
    """A corrective click in the largest error region of a prediction, as in SAM's training.

    The error is split into false-negative pixels (object missed: ``true & ~pred``) and
    false-positive pixels (spill-over: ``pred & ~true``), each into 4-connected regions. The
    region with the most pixels is chosen (ties broken by ``rng``); the click goes to its pixel
    farthest from the region's border (maximum of the Euclidean distance transform, the image
    edge counting as border; ties broken by ``rng``). A false-negative region gives a positive
    point (label 1), a false-positive region a negative one (label 0).

    Parameters
    ----------
    pred_mask : (H, W) bool array
        The previous prediction, at the resolution of the ground truth (upsample low-res logits
        first, ``logits > 0``).
    true_mask : (H, W) bool array
        The ground truth.
    rng : numpy.random.Generator

    Returns
    -------
    ((row, col), label) or None
        The point as Python ints and its label (1 or 0); None if the prediction is perfect.

    Raises
    ------
    ValueError
        If the masks are not 2D or have different shapes.
    """
    pred = _check_mask(pred_mask, "pred_mask", nonempty=False)
    true = _check_mask(true_mask, "true_mask", nonempty=False)
    if pred.shape != true.shape:
        raise ValueError(f"pred_mask and true_mask must have the same shape, got {pred.shape} and {true.shape}")
    rng = _check_rng(rng)
    candidates = []  # (area, label, region labels, region id)
    for error, label in ((true & ~pred, 1), (pred & ~true, 0)):
        if not error.any():
            continue
        regions, n = ndi.label(error)
        areas = np.bincount(regions.ravel(), minlength=n + 1)
        areas[0] = 0
        best = int(areas.max())
        for region_id in np.flatnonzero(areas == best):
            candidates.append((best, label, regions, int(region_id)))
    if not candidates:
        return None
    top = max(c[0] for c in candidates)
    candidates = [c for c in candidates if c[0] == top]
    choice = int(rng.integers(len(candidates))) if len(candidates) > 1 else 0
    _, label, regions, region_id = candidates[choice]
    dist, r0, c0 = _inner_distance(regions == region_id)
    rows, cols = np.nonzero(dist == dist.max())
    i = int(rng.integers(len(rows))) if len(rows) > 1 else 0
    return (int(rows[i] + r0), int(cols[i] + c0)), label


def correction_points(pred_masks, true_masks, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`correction_point` for a batch, padded with label -1 where a prediction is perfect.

    Parameters
    ----------
    pred_masks, true_masks : (B, H, W) bool arrays
    rng : numpy.random.Generator

    Returns
    -------
    points : (B, 1, 2) float32 array
        ``(row, col)``; ``(0, 0)`` for padding.
    labels : (B, 1) int64 array
        1, 0, or -1 (padding: the prediction was perfect, nothing to correct).
        Ready to append to a :class:`PromptBatch` with :meth:`PromptBatch.with_points`.
    """
    pred = np.asarray(pred_masks)
    true = np.asarray(true_masks)
    if pred.ndim != 3 or pred.shape != true.shape:
        raise ValueError(
            f"pred_masks and true_masks must both have shape (B, H, W), got {pred.shape} and {true.shape}"
        )
    points = np.zeros((len(pred), 1, 2), dtype=np.float32)
    labels = np.full((len(pred), 1), -1, dtype=np.int64)
    for i in range(len(pred)):
        click = correction_point(pred[i], true[i], rng)
        if click is not None:
            points[i, 0] = click[0]
            labels[i, 0] = click[1]
    return points, labels


# --------------------------------------------------------------------------- #
# a batch of prompts
# --------------------------------------------------------------------------- #
@dataclass
class PromptBatch:
    """Prompts for ``B`` objects of one image, ready for SAM once flipped to ``(x, y)``.

    Attributes
    ----------
    points : (B, N, 2) float32 array or None
        ``(row, col)`` pixel coordinates; None when the batch has boxes only.
    labels : (B, N) int64 array or None
        1 positive, 0 negative, **-1 padding** (SAM's convention: the prompt encoder gives a
        padding point its "not a point" embedding and ignores its coordinates, which are
        ``(0, 0)``). Objects with fewer points than ``N`` are padded at the end, so the arrays go
        straight to the prompt encoder after :func:`~napari_sam.engine.prompts.rc_to_xy`.
    boxes : (B, 4) float32 array or None
        ``(min_row, min_col, max_row, max_col)``, inclusive pixel coordinates; None for points
        only.
    masks : (B, H, W) bool array
        Ground truth of each object.
    ids : (B,) array
        The objects' ids in the label image.
    mode : str
        The prompt mode used: "point", "box" or "point+box" (never "mixed").
    """

    points: np.ndarray | None
    labels: np.ndarray | None
    boxes: np.ndarray | None
    masks: np.ndarray
    ids: np.ndarray
    mode: str

    @property
    def batch(self) -> int:
        """Number of objects ``B``."""
        return len(self.masks)

    @property
    def single_clicks(self) -> bool:
        """Whether every object has exactly one point and no box: SAM's ambiguous prompt."""
        return self.boxes is None and self.points is not None and self.points.shape[1] == 1

    def points_xy(self) -> np.ndarray | None:
        """Points as SAM's ``(x, y)``, C-contiguous (``torch.from_numpy`` takes it), or None."""
        return None if self.points is None else np.ascontiguousarray(rc_to_xy(self.points))

    def boxes_xy(self) -> np.ndarray | None:
        """Boxes as SAM's ``(x0, y0, x1, y1)``, C-contiguous, or None."""
        return None if self.boxes is None else np.ascontiguousarray(box_rc_to_xy(self.boxes))

    def with_points(self, points, labels) -> PromptBatch:
        """A new batch with ``points`` (B, M, 2) and ``labels`` (B, M) appended to each object.

        Useful for the correction rounds (:func:`correction_points`); a box-only batch gets its
        first points (its mode becomes "point+box").
        """
        points = np.asarray(points, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if points.ndim != 3 or points.shape[-1] != 2 or points.shape[0] != self.batch:
            raise ValueError(f"points must have shape ({self.batch}, M, 2), got {points.shape}")
        if labels.shape != points.shape[:2]:
            raise ValueError(f"labels must have shape {points.shape[:2]}, got {labels.shape}")
        if self.points is None:
            new_points, new_labels = points.copy(), labels.copy()
            mode = "point+box" if self.boxes is not None else self.mode
        else:
            new_points = np.concatenate([self.points, points], axis=1)
            new_labels = np.concatenate([self.labels, labels], axis=1)
            mode = self.mode
        return PromptBatch(new_points, new_labels, self.boxes, self.masks, self.ids, mode)

    def with_background_clicks(self, points) -> PromptBatch:
        """A new batch with one more prompt per point: a single click on background.

        Their ground truth is empty and their id 0 (no object). Only for batches of single
        clicks (one positive point per object, no box), the prompts that must tell an object
        from background on their own.

        Parameters
        ----------
        points : (M, 2) array
            ``(row, col)`` of the clicks, e.g. from :func:`background_points`.
        """
        points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        if not self.single_clicks:
            raise ValueError(
                "background clicks join batches of single clicks (mode 'point', one point per "
                f"object); this batch has mode {self.mode!r} with "
                f"{0 if self.points is None else self.points.shape[1]} point(s) per object"
            )
        m = len(points)
        empty = np.zeros((m, *self.masks.shape[1:]), dtype=bool)
        return PromptBatch(
            np.concatenate([self.points, points[:, None]]),
            np.concatenate([self.labels, np.ones((m, 1), np.int64)]),
            None,
            np.concatenate([self.masks, empty]),
            np.concatenate([self.ids, np.zeros(m, self.ids.dtype)]),
            self.mode,
        )


def _check_n_points(n_points) -> tuple[int, int]:
    if isinstance(n_points, numbers.Integral) and not isinstance(n_points, bool):
        n_points = (n_points, n_points)
    try:
        lo, hi = n_points
    except (TypeError, ValueError):
        raise ValueError(f"n_points must be an int or a (min, max) pair of ints >= 1, got {n_points!r}") from None
    lo = _check_count("n_points[0] (min)", lo, low=1)
    hi = _check_count("n_points[1] (max)", hi, low=1)
    if lo > hi:
        raise ValueError(f"n_points minimum must not exceed its maximum, got {(lo, hi)}")
    return lo, hi


def simulate_prompts(
    labels,
    n_objects: int,
    rng: np.random.Generator,
    *,
    mode: str = "point",
    n_points: int | tuple[int, int] = (1, 3),
    jitter: float = 0.1,
    p_negative: float = 0.5,
    min_area: int = 16,
    margin: float | None = None,
) -> PromptBatch:
    """Simulated prompts for up to ``n_objects`` objects of one label image.

    Objects are drawn with :func:`sample_objects`. Then, per object:

    - points (modes "point" and "point+box"): a number of points uniform in
      ``[n_points[0], n_points[1]]``; the first is always positive, each further point is
      negative with probability ``p_negative`` (near the object, on neighbours or background,
      :func:`negative_points`) and positive otherwise (:func:`positive_points`). Positives come
      first, then negatives, then padding (label -1 at ``(0, 0)``) up to the batch's largest
      count ``N``: an object can have fewer points than drawn when it is tiny or its
      surroundings are full;
    - box (modes "box" and "point+box"): :func:`jittered_box` with ``jitter``.

    Mode "mixed" draws one of "point", "box", "point+box" (equally likely) **for the whole
    batch**: SAM's prompt encoder needs the same kinds of prompts for every object of a batch.

    Parameters
    ----------
    labels : (H, W) integer array
        Ground-truth label image, 0 = background.
    n_objects : int >= 1
        Maximum number of objects (the batch size ``B`` is ``min(n_objects, objects)``).
    rng : numpy.random.Generator
    mode : {"point", "box", "point+box", "mixed"}
    n_points : int or (int, int)
        Number (range, inclusive) of points per object, >= 1.
    jitter : float in [0, 0.5)
        Box jitter, see :func:`jittered_box`.
    p_negative : float in [0, 1]
        Probability that each point after the first is negative.
    min_area : int >= 1
        Objects smaller than this are never chosen.
    margin : float, optional
        Band width for negative points, see :func:`negative_points`.

    Returns
    -------
    PromptBatch
        ``points`` (B, N, 2) float32 and ``labels`` (B, N) int64 (or None in box mode),
        ``boxes`` (B, 4) float32 (or None in point mode), ``masks`` (B, H, W) bool, ``ids``.

    Raises
    ------
    ValueError
        If ``labels`` is not a 2D non-negative integer image, it has no object of at least
        ``min_area`` pixels, or ``mode``, ``n_points``, ``jitter``, ``p_negative``,
        ``n_objects`` or ``rng`` are invalid.
    """
    labels = _check_labels(labels)
    rng = _check_rng(rng)
    n_objects = _check_count("n_objects", n_objects, low=1)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    lo, hi = _check_n_points(n_points)
    jitter = _check_fraction("jitter", jitter, high=0.5, high_open=True)
    p_negative = _check_fraction("p_negative", p_negative)

    if mode == "mixed":
        mode = ("point", "box", "point+box")[int(rng.integers(3))]
    ids = sample_objects(labels, n_objects, rng, min_area=min_area)
    if len(ids) == 0:
        raise ValueError(
            f"labels has no object of at least min_area={min_area} pixels to prompt "
            f"(ids present: {np.unique(labels[labels != 0])[:10].tolist()}...)"
            if (labels != 0).any() else "labels has no object (all pixels are background, 0)"
        )
    masks = labels[None] == ids[:, None, None]
    want_points = mode in ("point", "point+box")
    want_box = mode in ("box", "point+box")

    all_points, all_labels, boxes = [], [], []
    for mask in masks:
        if want_points:
            count = int(rng.integers(lo, hi + 1))
            n_neg = int(rng.binomial(count - 1, p_negative)) if count > 1 else 0
            pos = positive_points(mask, count - n_neg, rng)
            neg = negative_points(mask, n_neg, rng, labels=labels, margin=margin)
            all_points.append(np.concatenate([pos, neg]))
            all_labels.append(np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)]))
        if want_box:
            boxes.append(jittered_box(mask, rng, jitter=jitter, image_shape=labels.shape))

    points = point_labels = None
    if want_points:
        n = max(len(p) for p in all_points)
        points = np.zeros((len(ids), n, 2), dtype=np.float32)
        point_labels = np.full((len(ids), n), -1, dtype=np.int64)
        for i, (p, lab) in enumerate(zip(all_points, all_labels)):
            points[i, : len(p)] = p
            point_labels[i, : len(lab)] = lab
    box_array = np.stack(boxes).astype(np.float32) if want_box else None
    return PromptBatch(points, point_labels, box_array, masks, ids, mode)
