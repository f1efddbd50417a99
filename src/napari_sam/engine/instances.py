"""Instances from the maps of an instance decoder (AIS): seeds, seeded watershed, size filter.

The decoder (micro-sam's UNETR layout) predicts three maps for each pixel of the plane: the
probability of foreground, the distance to the centre of its object and the distance to the
boundary of its object, both distances normalised per object to [0, 1] and inverted so that they
are 0 deep inside an object and 1 at its edge and in the background. Objects are then:

1. the foreground map smoothed, the foreground the pixels above ``foreground_threshold``;
2. both distance maps smoothed; seeds the 8-connected components of foreground pixels that are
   close to a centre and far from a boundary (both distances below their thresholds), so that
   neither two narrow touching objects share a seed nor one bent object gets two;
3. a watershed from the seeds over the boundary distances, 4-connected, within the foreground;
4. objects smaller than ``min_size`` pixels removed, ids made consecutive again.

Parameters and defaults are micro-sam's (1.8.14, ``InstanceSegmentationWithDecoder.generate``),
and the labels equal theirs (``tests/test_instance_segmentation.py``). Their Gaussian is vigra's:
the kernel reaches ``ceil(3 sigma)`` pixels and the border is mirrored without repeating the edge
pixel, computed in float32; scipy's filter with that radius and ``mode="mirror"`` is the same to
float rounding. Their watershed floods 65,536 quantised levels, last in first out within a level;
scikit-image's floods the exact values, first in first out, so where two seeds reach a pixel at
the same height the two may give it to different objects: a few boundary pixels, no object
gained or lost.

The maps are at the plane's own pixels: micro-sam's decoder resizes its output to the image
exactly as SAM resizes mask logits (:meth:`napari_sam.models.sam.Sam.postprocess_masks`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.segmentation import relabel_sequential, watershed

from napari_sam.engine.checks import check_number


def labels_from_maps(
    foreground: np.ndarray,
    center_distances: np.ndarray,
    boundary_distances: np.ndarray,
    *,
    center_distance_threshold: float = 0.5,
    boundary_distance_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
    foreground_smoothing: float = 1.0,
    distance_smoothing: float = 1.6,
    min_size: int = 0,
) -> np.ndarray:
    """Label image of the objects that an instance decoder's three maps describe.

    Parameters
    ----------
    foreground, center_distances, boundary_distances : (H, W) float arrays
        The decoder's maps of one plane, at the plane's pixels. Pixels where any map is not
        finite (NaN, inf) are background.
    center_distance_threshold, boundary_distance_threshold : float
        Seeds are foreground pixels whose smoothed distances are both below these.
    foreground_threshold : float
        Foreground is where the smoothed foreground map is above this.
    foreground_smoothing, distance_smoothing : float
        Sigma, in pixels, of the Gaussian applied to the foreground map and to both distance
        maps; 0 leaves them as they are.
    min_size : int
        Objects with fewer pixels are removed (0 keeps all).

    Returns
    -------
    (H, W) uint32 array
        0 is background, objects are 1..n in the row-major order of their seeds' first pixels.

    Raises
    ------
    ValueError, TypeError
        A map is not 2D, not real-valued, or the maps differ in shape; a threshold is not a
        finite number, a sigma is negative, ``min_size`` is not a non-negative integer.

    See Also
    --------
    skimage.segmentation.watershed : the flooding used.

    Examples
    --------
    Two touching discs of radius 6: the distances fall towards each centre.

    >>> rows, cols = np.mgrid[:20, :32]
    >>> to_centres = np.minimum(np.hypot(rows - 10, cols - 10), np.hypot(rows - 10, cols - 21))
    >>> foreground = (to_centres < 6).astype(np.float32)
    >>> distances = np.where(foreground > 0, to_centres / 6, 1).astype(np.float32)
    >>> labels = labels_from_maps(foreground, distances, distances)
    >>> labels.dtype, np.unique(labels).tolist(), int(labels[10, 10]), int(labels[10, 21])
    (dtype('uint32'), [0, 1, 2], 1, 2)
    """
    foreground, center_distances, boundary_distances = checked_maps(
        foreground=foreground, center_distances=center_distances,
        boundary_distances=boundary_distances,
    )
    check_map_settings(
        thresholds=dict(center_distance_threshold=center_distance_threshold,
                        boundary_distance_threshold=boundary_distance_threshold,
                        foreground_threshold=foreground_threshold),
        sigmas=dict(foreground_smoothing=foreground_smoothing,
                    distance_smoothing=distance_smoothing),
        min_size=min_size,
    )
    finite = np.isfinite(foreground) & np.isfinite(center_distances)
    finite &= np.isfinite(boundary_distances)
    if not finite.any():
        return np.zeros(finite.shape, dtype=np.uint32)

    # Smoothing; pixels that are not finite count as background with the largest distance.
    foreground = _smoothed(np.where(finite, foreground, 0), foreground_smoothing)
    far = max(float(center_distances[finite].max()), float(boundary_distances[finite].max()))
    center_distances = _smoothed(np.where(finite, center_distances, far), distance_smoothing)
    boundary_distances = _smoothed(np.where(finite, boundary_distances, far), distance_smoothing)

    # Seeds and flooding within the foreground.
    inside = (foreground > foreground_threshold) & finite
    seeds = inside & (center_distances < center_distance_threshold)
    seeds &= boundary_distances < boundary_distance_threshold
    markers = label(seeds, connectivity=2)
    if markers.max() == 0:
        return np.zeros(foreground.shape, dtype=np.uint32)
    labels = watershed(boundary_distances, markers, connectivity=1, mask=inside)

    # Size filter.
    if min_size > 0:
        small = np.bincount(labels.ravel()) < min_size
        small[0] = False
        labels[small[labels]] = 0
        labels = relabel_sequential(labels)[0]
    return labels.astype(np.uint32)


def _smoothed(values: np.ndarray, sigma: float) -> np.ndarray:
    """vigra's Gaussian as micro-sam applies it (float32, radius ``ceil(3 sigma)``, mirrored)."""
    if sigma == 0:
        return values
    return ndimage.gaussian_filter(values, sigma, mode="mirror", radius=math.ceil(3 * sigma))


def checked_maps(**maps: np.ndarray) -> list[np.ndarray]:
    """The maps as float32 arrays of one 2D shape, or an error naming the map at fault (shared
    with :mod:`~napari_sam.engine.apg`)."""
    checked = []
    for name, values in maps.items():
        values = np.asarray(values)
        if values.ndim != 2:
            raise ValueError(
                f"{name} must be one (H, W) map, got shape {values.shape}; pass the decoder's "
                "three output channels separately, resized to the plane"
            )
        if values.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {values.dtype}")
        checked.append(values.astype(np.float32))
    shapes = {name: values.shape for name, values in zip(maps, checked)}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"the maps differ in shape ({shapes}); pass the three maps of one plane, each "
            "resized to the plane's pixels"
        )
    return checked


def check_map_settings(*, thresholds: dict, sigmas: dict, min_size) -> None:
    """Thresholds, smoothing sigmas and minimum size of settings on the maps; errors name the
    setting and what to pass instead."""
    for name, value in {**thresholds, **sigmas}.items():
        check_number(name, value)
    for name, value in sigmas.items():
        if value < 0:
            raise ValueError(f"{name} is a Gaussian sigma in pixels: pass 0 or more, got {value}")
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or min_size < 0:
        raise ValueError(f"min_size is a number of pixels: pass an integer >= 0, got {min_size!r}")
