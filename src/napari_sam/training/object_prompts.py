"""Random prompts for one object of a label image, as SAM's training simulates a user: points
inside it, points near it, a jittered box around it, and a correction click in the error of a
prediction.

Points are ``(row, col)`` pixel indices (pixel centres are whole numbers), boxes are
``(min_row, min_col, max_row, max_col)`` with **inclusive** max (the centre of the last pixel of
the object, as the engine's :class:`~napari_sam.engine.predictor.Predictor` takes them). Masks are
``(H, W)`` boolean arrays (0/1 numbers are accepted). Randomness comes only from the
``numpy.random.Generator`` passed in, so that a fixed seed gives identical prompts.

The ``check_*`` functions validate the arguments of this module and of
:mod:`napari_sam.training.prompts`; each returns the value in its checked form or raises
``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import ndimage as ndi

from napari_sam.engine.geometry import bounding_box, interior_distance

__all__ = ["positive_points", "negative_points", "jittered_box", "correction_point"]


def check_rng(rng) -> np.random.Generator:
    """``rng`` if it is a ``numpy.random.Generator``."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy.random.Generator, e.g. np.random.default_rng(0), got {type(rng).__name__}"
        )
    return rng


def check_labels(labels) -> np.ndarray:
    """``labels`` as a 2D array of non-negative integer ids."""
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


def check_mask(mask, name: str = "mask", *, nonempty: bool = True) -> np.ndarray:
    """``mask`` as a 2D bool array (nonzero numbers are inside); not empty if ``nonempty``."""
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


def check_count(name: str, value, *, low: int = 0) -> int:
    """``value`` as an int of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_margin(value, *, zero_ok: bool) -> float:
    """A distance in pixels: > 0, or >= 0 with ``zero_ok``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
        value >= 0 if zero_ok else value > 0
    ):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"margin must be a number of pixels {bound}, got {value!r}")
    return float(value)


def check_fraction(name: str, value, *, high: float = 1.0, high_open: bool = False) -> float:
    """``value`` as a float in ``[0, high]`` (``[0, high)`` with ``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if v < 0 or v > high or (high_open and v == high):
        bound = f"< {high:g}" if high_open else f"<= {high:g}"
        raise ValueError(f"{name} must be >= 0 and {bound}, got {v:g}")
    return v


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
    mask = check_mask(mask)
    k = check_count("k", k)
    rng = check_rng(rng)
    dist, r0, c0 = interior_distance(mask)
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
    mask = check_mask(mask)
    k = check_count("k", k)
    rng = check_rng(rng)
    if labels is not None:
        labels = check_labels(labels)
        if labels.shape != mask.shape:
            raise ValueError(f"labels must have the mask's shape {mask.shape}, got {labels.shape}")
    if margin is None:
        margin = max(3.0, 0.5 * math.sqrt(float(mask.sum())))
    else:
        margin = check_margin(margin, zero_ok=False)
    if k == 0:
        return np.zeros((0, 2), dtype=np.int64)

    h, w = mask.shape
    r0, c0, r1, c1 = bounding_box(mask)
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
    mask = check_mask(mask)
    rng = check_rng(rng)
    jitter = check_fraction("jitter", jitter, high=0.5, high_open=True)
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
    r0, c0, r1, c1 = bounding_box(mask)
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
    pred = check_mask(pred_mask, "pred_mask", nonempty=False)
    true = check_mask(true_mask, "true_mask", nonempty=False)
    if pred.shape != true.shape:
        raise ValueError(f"pred_mask and true_mask must have the same shape, got {pred.shape} and {true.shape}")
    rng = check_rng(rng)
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
    dist, r0, c0 = interior_distance(regions == region_id)
    rows, cols = np.nonzero(dist == dist.max())
    i = int(rng.integers(len(rows))) if len(rows) > 1 else 0
    return (int(rows[i] + r0), int(cols[i] + c0)), label
