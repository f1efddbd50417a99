"""Propagation of one segmented object through the neighbouring planes of a stack.

Each step prompts the next plane with the previous plane's mask, so an object drawn (or clicked)
in one plane is followed up and down through z until it ends. Headless: the napari widget runs
:func:`propagate` in a thread worker and writes each yielded plane.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import ndimage as ndi

from napari_sam.engine.geometry import bounding_box, centre_point, iou

DIRECTIONS = {"up": (1,), "down": (-1,), "both": (1, -1)}
# The box prompt is the previous mask's bounding box grown by this fraction of its side on
# each side, and by at least BOX_MARGIN_MIN pixels, so that an object growing from one plane
# to the next still fits in it.
BOX_MARGIN = 0.1
BOX_MARGIN_MIN = 2
# The local background of a mask: a ring from 2 to 6 pixels outside it (the first pixels are
# the object's blurred edge).
RING = (2, 6)
# Below this contrast (in 8-bit grey levels) the starting object does not stand out from its
# surroundings and contrast cannot tell where it ends.
MIN_REFERENCE_CONTRAST = 2.0


class PlanePredictor(Protocol):
    """What :func:`propagate` needs of one plane of the stack.

    :class:`~napari_sam.engine.tiling.TiledPredictor` and :class:`~napari_sam.Segmenter` after
    ``set_image`` are such predictors.
    """

    @property
    def image(self) -> np.ndarray | None:
        """The ``(H, W[, C])`` plane as the model sees it (8-bit), for the contrast stop; None
        when the predictor cannot tell (then propagate with ``min_contrast=0``)."""

    def predict(self, *, points=None, labels=None, box=None, mask=None,
                multimask: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks ``(k, H, W)`` bool, scores ``(k,)`` and logits for one object, from prompts in
        ``(row, col)`` pixels of the whole plane (``mask`` a ``(H, W)`` mask prompt)."""


@dataclass
class PropagatedPlane:
    """One plane of a propagated object.

    Attributes
    ----------
    plane : int
        Index of the plane in the stack.
    mask : (H, W) bool array
        The object in that plane.
    score : float
        The model's predicted IoU of the mask.
    """

    plane: int
    mask: np.ndarray
    score: float


def propagate(
    predictor_for: Callable[[int], PlanePredictor],
    mask,
    plane: int,
    *,
    n_planes: int,
    direction: str = "both",
    min_score: float = 0.5,
    min_overlap: float = 0.3,
    min_contrast: float = 0.4,
    max_planes: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[PropagatedPlane]:
    """Follow an object from one plane through its neighbours.

    Each step prompts the next plane with the previous plane's mask: its bounding box (grown by
    10 %, at least 2 pixels), one positive point at its most interior pixel, and the mask
    itself as a mask prompt. A direction ends at the first plane where the answer is empty,
    its predicted IoU is below ``min_score``, it overlaps the previous plane's mask by less
    than ``min_overlap`` (IoU), or it stands out from its surroundings by less than
    ``min_contrast`` times the object in ``plane``; or at the edge of the stack, or after
    ``max_planes`` planes.

    Parameters
    ----------
    predictor_for : callable
        ``predictor_for(p)`` returns the :class:`PlanePredictor` of plane ``p``, such as a
        :class:`~napari_sam.engine.tiling.TiledPredictor` set to that plane. The caller owns
        the embeddings (and their cache); ``predictor_for(plane)`` is asked for its ``image``
        only.
    mask : (H, W) array-like of bool
        The object in plane ``plane``; not empty.
    plane : int
        Index of the plane holding ``mask``.
    n_planes : int
        Number of planes in the stack.
    direction : {"both", "up", "down"}
        ``"up"`` is towards higher plane indices, ``"down"`` towards lower ones.
    min_score : float
        Stop at a mask with a lower predicted IoU.
    min_overlap : float
        Stop at a mask whose IoU with the previous plane's mask is lower.
    min_contrast : float
        Stop at a mask whose contrast (mean intensity inside minus the median of a ring 2 to 6
        pixels around it, in the model's 8-bit image) is less than this fraction of the
        contrast of ``mask`` in ``plane``. The model segments the blurred light beyond an
        object's end as readily as the object (predicted IoU about 0.8 either way), so this is
        what stops a propagation where the object ends. 0 switches it off (and ``image`` is not
        needed); so does an object that does not stand out in ``plane``.
    max_planes : int, optional
        Propagate at most this many planes in each direction.
    should_stop : callable, optional
        Called before each plane; returning True ends the propagation at once (a cancel button).

    Yields
    ------
    PropagatedPlane
        In the order computed: all planes up (``plane + 1``, ``plane + 2``, ...), then all planes
        down (``plane - 1``, ...); ``plane`` itself is not yielded.

    Raises
    ------
    ValueError
        Invalid arguments (checked at the call, before anything is predicted).

    Examples
    --------
    >>> def predictor_for(p):  # doctest: +SKIP
    ...     predictor = TiledPredictor(model)
    ...     predictor.set_image(volume[p], limits=limits)
    ...     return predictor
    >>> for found in propagate(predictor_for, mask, 5, n_planes=len(volume)):  # doctest: +SKIP
    ...     labels[found.plane][found.mask] = object_id
    """
    mask = _check_arguments(mask, plane, n_planes, direction, min_score, min_overlap,
                            min_contrast, max_planes, should_stop)
    stops = _Stops(min_score, min_overlap, min_contrast, max_planes)
    return _walk(predictor_for, mask, plane, n_planes, DIRECTIONS[direction], stops, should_stop)


@dataclass(frozen=True)
class _Stops:
    min_score: float
    min_overlap: float
    min_contrast: float
    max_planes: int | None


def _walk(predictor_for: Callable[[int], PlanePredictor], mask, plane, n_planes, steps,
          stops: _Stops, should_stop) -> Iterator[PropagatedPlane]:
    # Contrast is compared with the committed object's, not the previous plane's: an object that
    # fades a little in each plane passes every plane-to-plane test (docs/benchmarks.md).
    reference = None
    if stops.min_contrast > 0:
        reference = _contrast(_image(predictor_for(plane), plane, mask.shape), mask)
        if abs(reference) < MIN_REFERENCE_CONTRAST:
            reference = None
    for step in steps:
        previous = mask
        last = n_planes - 1 if step > 0 else 0
        if stops.max_planes is not None:
            last = plane + step * min(stops.max_planes, abs(last - plane))
        for current in range(plane + step, last + step, step):
            if should_stop is not None and should_stop():
                return
            predictor = predictor_for(current)
            found, score = _next_mask(predictor, previous)
            if (not found.any() or score < stops.min_score
                    or iou(found, previous) < stops.min_overlap):
                break
            if reference is not None:
                contrast = _contrast(_image(predictor, current, mask.shape), found)
                if contrast / reference < stops.min_contrast:
                    break
            yield PropagatedPlane(current, found, score)
            previous = found


def _next_mask(predictor: PlanePredictor, previous: np.ndarray) -> tuple[np.ndarray, float]:
    """The object in the predictor's plane, prompted by its mask in the neighbouring plane.

    Box, point and mask prompt together follow an object best, and a single mask is asked for
    because choosing among three did no better (figures: docs/benchmarks.md, "Propagation").
    """
    masks, scores, _ = predictor.predict(
        points=[centre_point(previous)], labels=[1], box=_grown_box(previous),
        mask=previous, multimask=False,
    )
    return np.asarray(masks[0], dtype=bool), float(scores[0])


def _image(predictor: PlanePredictor, plane: int, shape: tuple[int, int]) -> np.ndarray:
    image = predictor.image
    if image is None:
        raise ValueError(
            f"the predictor of plane {plane} has no image to measure contrast on: give "
            "predictors with an `image` (such as TiledPredictor after set_image), or pass "
            "min_contrast=0"
        )
    if image.shape[:2] != shape:
        raise ValueError(
            f"plane {plane} has shape {image.shape[:2]} but the mask has shape {shape}: give a "
            "mask of the whole plane"
        )
    return image


def _contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``image`` in ``mask`` minus the median of a ring around it (the local background,
    robust to a neighbouring object covering part of the ring); channels are averaged."""
    top, left, bottom, right = bounding_box(mask)
    pad = RING[1] + 1
    window = (slice(max(top - pad, 0), bottom + pad + 1), slice(max(left - pad, 0), right + pad + 1))
    mask, image = mask[window], np.asarray(image[window], dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=-1)
    inner = ndi.binary_dilation(mask, iterations=RING[0])
    ring = ndi.binary_dilation(mask, iterations=RING[1]) & ~inner
    if not ring.any():  # the mask fills the plane
        return 0.0
    return float(image[mask].mean() - np.median(image[ring]))


def _grown_box(mask: np.ndarray) -> np.ndarray:
    box = np.array(bounding_box(mask), dtype=float)
    margin = np.maximum(BOX_MARGIN * (box[2:] - box[:2] + 1), BOX_MARGIN_MIN)
    low = np.maximum(box[:2] - margin, 0)
    high = np.minimum(box[2:] + margin, np.array(mask.shape) - 1)
    return np.concatenate([low, high])


def _check_arguments(mask, plane, n_planes, direction, min_score, min_overlap, min_contrast,
                     max_planes, should_stop) -> np.ndarray:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'both', 'up' or 'down', got {direction!r}")
    if not _is_int(n_planes) or n_planes < 1:
        raise ValueError(f"n_planes must be a positive integer (planes in the stack), "
                         f"got {n_planes!r}")
    if not _is_int(plane) or not 0 <= plane < n_planes:
        raise ValueError(f"plane must be an integer in [0, {n_planes - 1}] "
                         f"(n_planes={n_planes}), got {plane!r}")
    if max_planes is not None and (not _is_int(max_planes) or max_planes < 0):
        raise ValueError(f"max_planes must be None (no limit) or an integer >= 0, "
                         f"got {max_planes!r}")
    for name, value in (("min_score", min_score), ("min_overlap", min_overlap),
                        ("min_contrast", min_contrast)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if should_stop is not None and not callable(should_stop):
        raise ValueError(f"should_stop must be a function returning True to stop, "
                         f"got {should_stop!r}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be one (H, W) plane, got shape {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError(f"mask of plane {plane} is empty: segment the object in that plane first")
    return mask


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
