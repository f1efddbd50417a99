"""Geometry of binary masks: bounding boxes, the most interior pixel, IoU, and masks kept as
the window that holds them.

Points are ``(row, col)`` and boxes ``(min_row, min_col, max_row, max_col)`` with inclusive
maxima (the centre of the last pixel, as SAM's own ``batched_mask_to_box``), in pixels of the
2D plane; the flip to SAM's ``(x, y)`` is :mod:`napari_sam.engine.prompts`' job.

Empty masks, one rule for every function here: the box or the centre of an empty mask is
refused (``ValueError``: it has none); a comparison with an empty mask is 0 (an empty mask
overlaps nothing, another empty mask included). A caller that wants something else for an
empty mask says so where it calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The box of the pixels of a mask.

    Parameters
    ----------
    mask : (H, W) array-like of bool
        Nonzero is inside; not empty.

    Returns
    -------
    tuple of int
        ``(min_row, min_col, max_row, max_col)``, maxima inclusive.

    Raises
    ------
    ValueError
        The mask is empty.

    Examples
    --------
    >>> mask = np.zeros((5, 6), bool)
    >>> mask[1:3, 2:5] = True
    >>> bounding_box(mask)
    (1, 2, 2, 4)
    """
    mask = np.asarray(mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"the mask of shape {mask.shape} is empty: it has no bounding box")
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def box_centre(box) -> tuple[float, float]:
    """``(row, col)`` of the middle of a ``(min_row, min_col, max_row, max_col)`` box."""
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def interior_distance(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Distance of each pixel of a mask to the nearest pixel outside it, within its box.

    The image edge counts as outside, so a mask touching it is not deepest there.

    Parameters
    ----------
    mask : (H, W) array-like of bool
        Not empty.

    Returns
    -------
    distances : (h, w) float64 array
        Euclidean distances over the mask's bounding box, 0 outside the mask.
    top, left : int
        Position of that box in the mask.

    Raises
    ------
    ValueError
        The mask is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    top, left, bottom, right = bounding_box(mask)
    window = np.pad(mask[top: bottom + 1, left: right + 1], 1)
    return ndimage.distance_transform_edt(window)[1:-1, 1:-1], top, left


def centre_point(mask: np.ndarray) -> tuple[int, int]:
    """The most interior pixel of a mask (farthest from its border): where a user would click.

    Of equally deep pixels, the first in raster order.

    Parameters
    ----------
    mask : (H, W) array-like of bool
        Not empty.

    Returns
    -------
    tuple of int
        ``(row, col)``.

    Raises
    ------
    ValueError
        The mask is empty.

    Examples
    --------
    >>> mask = np.zeros((5, 9), bool)
    >>> mask[1:4, 2:7] = True
    >>> centre_point(mask)
    (2, 3)
    """
    distances, top, left = interior_distance(mask)
    row, col = np.unravel_index(int(np.argmax(distances)), distances.shape)
    return int(row) + top, int(col) + left


def iou(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Intersection over union of masks, over their last two axes.

    Parameters
    ----------
    a, b : (..., H, W) arrays of bool
        Broadcast against each other: e.g. ``(B, 3, H, W)`` candidates and ``(B, 1, H, W)``
        truths give ``(B, 3)`` IoUs.

    Returns
    -------
    float or (...) float64 array
        A float for two ``(H, W)`` masks; 0 where both masks are empty.

    Examples
    --------
    >>> a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    >>> a[:2], b[1:3] = True, True
    >>> round(iou(a, b), 3), iou(a[:0], b[:0])
    (0.333, 0.0)
    """
    inter = np.logical_and(a, b).sum(axis=(-2, -1))
    union = np.logical_or(a, b).sum(axis=(-2, -1))
    values = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return float(values) if values.ndim == 0 else values


def label_iou(labels: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every object of one label image with every object of another.

    Parameters
    ----------
    labels, others : (H, W) int arrays
        Label images of the same shape, 0 for background.

    Returns
    -------
    ids, other_ids : (N,) and (M,) arrays
        The objects' ids (background left out), ascending.
    iou : (N, M) float64 array
        ``iou[i, j]`` of object ``ids[i]`` of ``labels`` and ``other_ids[j]`` of ``others``.
    """
    ids, index = np.unique(labels, return_inverse=True)
    other_ids, other_index = np.unique(others, return_inverse=True)
    pairs = np.zeros((len(ids), len(other_ids)), dtype=np.int64)
    np.add.at(pairs, (index.ravel(), other_index.ravel()), 1)
    area, other_area = pairs.sum(1), pairs.sum(0)
    matrix = pairs / (area[:, None] + other_area[None, :] - pairs)
    return ids[ids != 0], other_ids[other_ids != 0], matrix[ids != 0][:, other_ids != 0]


@dataclass
class WindowMask:
    """A binary mask kept as the window that holds all of its pixels.

    Attributes
    ----------
    top, left : int
        Position of the window in the full image.
    window : (h, w) bool array
    shape : tuple of int
        ``(H, W)`` of the full image.
    """

    top: int
    left: int
    window: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def trimmed(cls, top: int, left: int, window: np.ndarray, shape) -> WindowMask:
        """The mask in ``window`` at ``(top, left)``, cut down to the rows and columns it uses
        (an empty mask is an empty window at ``(0, 0)``)."""
        rows, cols = np.flatnonzero(window.any(1)), np.flatnonzero(window.any(0))
        if rows.size == 0:
            return cls(0, 0, np.zeros((0, 0), dtype=bool), tuple(shape))
        window = window[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
        return cls(top + int(rows[0]), left + int(cols[0]), np.ascontiguousarray(window),
                   tuple(shape))

    @property
    def area(self) -> int:
        return int(self.window.sum())

    @property
    def slices(self) -> tuple[slice, slice]:
        """Where the window lies in the full image."""
        h, w = self.window.shape
        return slice(self.top, self.top + h), slice(self.left, self.left + w)

    def dense(self) -> np.ndarray:
        """The full ``(H, W)`` bool mask."""
        mask = np.zeros(self.shape, dtype=bool)
        mask[self.slices] = self.window
        return mask

    def box(self) -> tuple[int, int, int, int]:
        """:func:`bounding_box` of the mask in the full image (``ValueError`` if it is empty)."""
        top, left, bottom, right = bounding_box(self.window)
        return top + self.top, left + self.left, bottom + self.top, right + self.left

    def moved(self, top: int, left: int, shape: tuple[int, int]) -> WindowMask:
        """The same pixels shifted by ``(top, left)`` into an image of ``shape``."""
        return WindowMask(self.top + top, self.left + left, self.window, tuple(shape))

    def overlap(self, other: WindowMask) -> float:
        """Shared pixels as a fraction of the smaller mask (0 when either is empty)."""
        top, left = max(self.top, other.top), max(self.left, other.left)
        bottom = min(self.top + self.window.shape[0], other.top + other.window.shape[0])
        right = min(self.left + self.window.shape[1], other.left + other.window.shape[1])
        if bottom <= top or right <= left:
            return 0.0
        shared = (self.window[top - self.top: bottom - self.top, left - self.left: right - self.left]
                  & other.window[top - other.top: bottom - other.top,
                                 left - other.left: right - other.left]).sum()
        return float(shared) / max(1, min(self.area, other.area))

    def union(self, other: WindowMask) -> WindowMask:
        """The pixels of both masks, in this mask's image."""
        top, left = min(self.top, other.top), min(self.left, other.left)
        bottom = max(self.top + self.window.shape[0], other.top + other.window.shape[0])
        right = max(self.left + self.window.shape[1], other.left + other.window.shape[1])
        window = np.zeros((bottom - top, right - left), dtype=bool)
        for mask in (self, other):
            window[mask.moved(-top, -left, window.shape).slices] |= mask.window
        return WindowMask(top, left, window, self.shape)
