"""Simulated prompts for training SAM: batches of prompts for the objects of a label image.

:func:`simulate_prompts` follows SAM's training recipe (Kirillov et al. 2023, appendix A): a
first prompt made of random points inside the object and / or its jittered bounding box (the
prompts on one object are :mod:`napari_sam.training.object_prompts`, whose conventions hold here:
``(row, col)`` points, inclusive ``(min_row, min_col, max_row, max_col)`` boxes, randomness only
from the ``numpy.random.Generator`` passed in), then correction points placed in the error
region of the previous prediction (:func:`correction_points`); the previous prediction's logits
are the mask input of the next round (the trainer's job). The flip to SAM's ``(x, y)`` happens
only at the boundary into ``models/``: :meth:`PromptBatch.points_xy` and
:meth:`PromptBatch.boxes_xy`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_sam.engine.prompts import box_rc_to_xy, rc_to_xy
from napari_sam.training.object_prompts import (
    check_count,
    check_fraction,
    check_labels,
    check_margin,
    check_rng,
    correction_point,
    jittered_box,
    negative_points,
    positive_points,
)

__all__ = [
    "sample_objects",
    "background_points",
    "correction_points",
    "PromptBatch",
    "simulate_prompts",
    "MODES",
]

#: Prompt modes of :func:`simulate_prompts`.
MODES = ("point", "box", "point+box", "mixed")


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
    labels = check_labels(labels)
    n = check_count("n", n)
    min_area = check_count("min_area", min_area, low=1)
    rng = check_rng(rng)
    ids, counts = np.unique(labels, return_counts=True)
    keep = (ids != 0) & (counts >= min_area)
    ids = ids[keep]
    m = min(n, len(ids))
    if m == 0:
        return ids[:0]
    return ids[rng.choice(len(ids), size=m, replace=False)]


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
    labels = check_labels(labels)
    k = check_count("k", k)
    rng = check_rng(rng)
    far = ndi.distance_transform_edt(labels == 0) > check_margin(margin, zero_ok=True)
    rows, cols = np.nonzero(far)
    pick = rng.choice(len(rows), size=min(k, len(rows)), replace=False)
    return np.stack([rows[pick], cols[pick]], axis=1).astype(np.int64)


def correction_points(pred_masks, true_masks, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~napari_sam.training.object_prompts.correction_point` for a batch, padded with label -1 where a prediction is perfect.

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
    lo = check_count("n_points[0] (min)", lo, low=1)
    hi = check_count("n_points[1] (max)", hi, low=1)
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
      :func:`~napari_sam.training.object_prompts.negative_points`) and positive otherwise (:func:`~napari_sam.training.object_prompts.positive_points`). Positives come
      first, then negatives, then padding (label -1 at ``(0, 0)``) up to the batch's largest
      count ``N``: an object can have fewer points than drawn when it is tiny or its
      surroundings are full;
    - box (modes "box" and "point+box"): :func:`~napari_sam.training.object_prompts.jittered_box` with ``jitter``.

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
        Box jitter, see :func:`~napari_sam.training.object_prompts.jittered_box`.
    p_negative : float in [0, 1]
        Probability that each point after the first is negative.
    min_area : int >= 1
        Objects smaller than this are never chosen.
    margin : float, optional
        Band width for negative points, see :func:`~napari_sam.training.object_prompts.negative_points`.

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
    labels = check_labels(labels)
    rng = check_rng(rng)
    n_objects = check_count("n_objects", n_objects, low=1)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    lo, hi = _check_n_points(n_points)
    jitter = check_fraction("jitter", jitter, high=0.5, high_open=True)
    p_negative = check_fraction("p_negative", p_negative)

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
