"""Training targets of the instance decoder (AIS): foreground, and per-object distances to the
centre and to the boundary, as micro-sam trains its decoders (torch-em's per-object distance
transform with micro-sam's settings)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as connected_components
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries, relabel_sequential

# micro-sam drops objects under 25 pixels from its training labels.
MIN_SIZE = 25
# Keeps the normalisation of a one-pixel object finite (torch-em's value).
EPS = 1e-7


def distance_targets(labels: np.ndarray, *, min_size: int = MIN_SIZE) -> np.ndarray:
    """The three maps the instance decoder learns to predict from a label image.

    Every connected piece of a label is an object; objects under ``min_size`` pixels are
    background. Inside each object, the distance to its centre (its centroid, or its most
    interior pixel when the centroid lies outside it) and the distance to its boundary counted
    from its most interior pixel, each divided by its largest value in the object, so that both
    are 0 at the centre and at most 1 at the edge. Background pixels have distance 1.

    Parameters
    ----------
    labels : (H, W) integer array
        0 is background.
    min_size : int
        Objects smaller than this are dropped.

    Returns
    -------
    (3, H, W) float32 array
        Foreground (0 / 1), centre distances, boundary distances.

    Raises
    ------
    ValueError
        ``labels`` is not a 2D integer array, or ``min_size`` is negative.

    Examples
    --------
    >>> labels = np.zeros((7, 7), int)
    >>> labels[1:6, 1:6] = 1
    >>> targets = distance_targets(labels, min_size=0)
    >>> targets[:, 3, 3].tolist(), float(targets[1, 1, 1]), float(targets[2, 0, 0])
    ([1.0, 0.0, 0.0], 1.0, 1.0)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be a 2D integer array, got {labels.dtype} of shape "
                         f"{labels.shape}")
    if min_size < 0:
        raise ValueError(f"min_size must be 0 or more, got {min_size}")
    objects = connected_components(labels, background=0, connectivity=2)
    if min_size > 0:
        ids, sizes = np.unique(objects, return_counts=True)
        objects[np.isin(objects, ids[sizes < min_size])] = 0
        objects = relabel_sequential(objects)[0]
    boundaries = find_boundaries(objects, mode="inner")
    distances = np.ones((2, *labels.shape), dtype=np.float32)
    for region in regionprops(objects):
        box = region.slice
        mask = region.image
        inner = ndi.distance_transform_edt(~boundaries[box]).astype(np.float32)
        inner[~mask] = 0
        deepest = np.unravel_index(np.argmax(inner), inner.shape)
        centre = tuple(int(c) - s.start for c, s in zip(np.round(region.centroid), box))
        if not mask[centre]:
            centre = deepest
        rows, cols = np.indices(mask.shape, dtype=np.float32)
        to_centre = np.sqrt((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2)
        to_boundary = inner[deepest] - inner
        for channel, values in enumerate((to_centre, to_boundary)):
            values[~mask] = 0
            values /= np.abs(values).max() + EPS
            distances[channel][box][mask] = values[mask]
    return np.concatenate([(objects > 0)[None].astype(np.float32), distances])
