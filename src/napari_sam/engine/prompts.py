"""Prompt checking, and the one place where ``(row, col)`` becomes SAM's ``(x, y)``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Prompts:
    """Checked prompts for a batch of ``B`` objects, in the public ``(row, col)`` order.

    Attributes
    ----------
    points : (B, N, 2) float array or None
    labels : (B, N) int array or None
        1 for a positive (foreground) point, 0 for a negative one.
    boxes : (B, 4) float array or None
        ``(min_row, min_col, max_row, max_col)``.
    mask_input : (B, 1, h, w) float array or None
        Low-resolution logits, e.g. from a previous prediction.
    """

    points: np.ndarray | None
    labels: np.ndarray | None
    boxes: np.ndarray | None
    mask_input: np.ndarray | None

    @property
    def batch(self) -> int:
        for array in (self.points, self.boxes, self.mask_input):
            if array is not None:
                return array.shape[0]
        return 0


def rc_to_xy(coords: np.ndarray) -> np.ndarray:
    """Swap ``(..., 2)`` ``(row, col)`` coordinates to SAM's ``(x, y)``."""
    return np.asarray(coords)[..., ::-1]


def box_rc_to_xy(boxes: np.ndarray) -> np.ndarray:
    """Turn ``(..., 4)`` ``(min_row, min_col, max_row, max_col)`` into SAM's ``(x0, y0, x1, y1)``."""
    boxes = np.asarray(boxes)
    return boxes[..., [1, 0, 3, 2]]


def check_prompts(
    *,
    points,
    labels,
    boxes,
    mask_input,
    image_shape: tuple[int, int],
    mask_shape: tuple[int, int],
    batched: bool,
) -> Prompts:
    """Validate prompts and bring them to batch form.

    Parameters
    ----------
    points : (N, 2) or, batched, (B, N, 2) array-like, optional
        ``(row, col)`` pixel coordinates; pixel centres are whole numbers, so the image covers
        ``-0.5`` to ``H - 0.5``.
    labels : (N,) or (B, N) array-like, optional
        1 positive, 0 negative; all positive when omitted.
    boxes : (4,) or (B, 4) array-like, optional
        ``(min_row, min_col, max_row, max_col)`` inside the image.
    mask_input : (h, w), (1, h, w) or, batched, (B, 1, h, w) array-like, optional
        Low-resolution mask logits of shape ``mask_shape``.
    image_shape, mask_shape : tuple of int
        ``(H, W)`` of the image and ``(h, w)`` of the low-resolution masks.
    batched : bool
        Whether the inputs carry a leading batch axis.

    Raises
    ------
    ValueError
        No prompt at all, wrong shapes, non-finite values, points or boxes outside the image,
        labels other than 0/1, a box whose max is below its min, or batches of different sizes.
    """
    if points is None and boxes is None and mask_input is None:
        raise ValueError("no prompt: give points (with labels), a box, or a mask_input")
    if labels is not None and points is None:
        raise ValueError("labels were given without points")
    lead = "(B, " if batched else "("
    bounds = np.array([[-0.5, image_shape[0] - 0.5], [-0.5, image_shape[1] - 0.5]])

    if points is not None:
        points = _float_array(points, "points")
        given = points.shape
        if not batched:  # one image: (N, 2), or a single (2,) point
            points = points.reshape(1, -1, 2) if points.ndim in (1, 2) and points.shape[-1] == 2 else points[None]
        if points.ndim != 3 or points.shape[-1] != 2 or points.shape[1] == 0:
            raise ValueError(f"points must have shape {lead}N, 2) as (row, col), got {given}")
        outside = (points < bounds[:, 0]) | (points > bounds[:, 1])
        if outside.any():
            bad = points[outside.any(axis=-1)][0]
            raise ValueError(
                f"point (row, col) = {tuple(bad.tolist())} is outside the image of shape "
                f"{tuple(image_shape)}: points are (row, col) pixel coordinates"
            )
        if labels is None:
            labels = np.ones(points.shape[:2], dtype=np.int64)
        given = np.shape(labels)
        labels = np.asarray(labels) if batched or given == points.shape[:2] else np.atleast_1d(labels)[None]
        if labels.shape != points.shape[:2]:
            expected = points.shape[:2] if batched else points.shape[1:2]
            raise ValueError(f"labels must have one value per point, shape {expected}, got {given}")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"labels must be 1 (positive) or 0 (negative), got values {np.unique(labels).tolist()}"
            )
        labels = labels.astype(np.int64)

    if boxes is not None:
        boxes = _float_array(boxes, "box")
        given = boxes.shape
        if not batched:
            boxes = boxes[None]
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(
                f"box must have shape {lead}4) as (min_row, min_col, max_row, max_col), got {given}"
            )
        if (boxes[:, 2:] < boxes[:, :2]).any():
            raise ValueError(
                "box max is below its min: boxes are (min_row, min_col, max_row, max_col), got "
                f"{boxes[(boxes[:, 2:] < boxes[:, :2]).any(axis=1)][0].tolist()}"
            )
        corners = boxes.reshape(-1, 2, 2)
        if ((corners < bounds[:, 0]) | (corners > bounds[:, 1])).any():
            raise ValueError(
                f"box {boxes[0].tolist()} reaches outside the image of shape {tuple(image_shape)}: "
                "clip it to the image first"
            )

    if mask_input is not None:
        mask_input = _float_array(mask_input, "mask_input")
        given = mask_input.shape
        if not batched and (mask_input.ndim == 2 or (mask_input.ndim == 3 and len(mask_input) == 1)):
            mask_input = mask_input.reshape((1, 1) + mask_input.shape[-2:])
        if mask_input.ndim != 4 or mask_input.shape[1] != 1 or mask_input.shape[-2:] != tuple(mask_shape):
            shape = f"{lead}1, {mask_shape[0]}, {mask_shape[1]})"
            raise ValueError(
                f"mask_input must be low-resolution logits of shape {shape}, e.g. one mask of the "
                f"logits a previous predict() returned; got {given}"
            )

    prompts = Prompts(points, labels, boxes, mask_input)
    sizes = {a.shape[0] for a in (points, boxes, mask_input) if a is not None}
    if len(sizes) > 1:
        raise ValueError(f"points, boxes and mask_input have different batch sizes {sorted(sizes)}")
    return prompts


def _float_array(value, name: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {value!r}") from None
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array
