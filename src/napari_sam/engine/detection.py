"""Weight-free detection of bright objects (nuclei, cells): one box prompt per object, for SAM."""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed
from skimage.transform import resize

from napari_sam.engine.image import channels_last, intensity_range

# Objects are brighter than the background by more than this many standard deviations of the
# (smoothed) noise, so that an empty, noisy field gives no boxes.
_NOISE_SIGMAS = 5.0


def detect_objects(
    image: np.ndarray,
    *,
    channel_axis: int | None = None,
    min_size: float | None = None,
    max_boxes: int | None = None,
    padding: float = 1.0,
) -> np.ndarray:
    """Find bright objects on a dark background, one box per object.

    Meant for fluorescence images of nuclei or cells, as object-aware box prompts in the spirit
    of MobileSAMv2. The image is made grey (the brightest of its normalised channels), smoothed
    and freed of its uneven background, and thresholded at half the Otsu threshold (and at least
    a few noise levels); touching objects are split by a watershed of the distance to
    the background, then each object is cut at half its own brightness, so that dim and bright
    objects get equally close boxes. Scales follow the typical object radius, estimated from the
    image.

    Parameters
    ----------
    image : (H, W), (H, W, C) or (C, H, W) array
        Grey, RGB(A) or multichannel image of any numeric type; NaN counts as background.
    channel_axis : int, optional
        Axis of the channels, when the guess of :func:`~napari_sam.engine.image.channels_last`
        is wrong.
    min_size : float, optional
        Smallest object kept, in pixels. By default a fifth of the area of a disc of the typical
        object radius, and at least 9 (specks of noise are smaller).
    max_boxes : int, optional
        Keep only the ``max_boxes`` largest objects (by area).
    padding : float
        Pixels added on every side of each object; boxes are clipped to the image.

    Returns
    -------
    (N, 4) float array
        ``(min_row, min_col, max_row, max_col)`` of each object in pixels, the max inclusive
        (the coordinates of the last pixel, not one past it), sorted by ``(min_row, min_col)``.
        ``(0, 4)`` when nothing is found, e.g. in an empty or constant image.

    Raises
    ------
    ValueError
        The image is not 2D once its channel axis is set aside, or an option is out of range.

    Examples
    --------
    >>> image = np.zeros((20, 30))
    >>> image[4:9, 5:12] = 1.0
    >>> image[12:17, 20:26] = 1.0
    >>> detect_objects(image, padding=0)
    array([[ 4.,  5.,  8., 11.],
           [12., 20., 16., 25.]])
    """
    if max_boxes is not None and not (
        _is_number(max_boxes, low=0) and isinstance(max_boxes, numbers.Integral)
    ):
        raise ValueError(f"max_boxes must be an integer >= 0 or None, got {max_boxes!r}")
    if not _is_number(padding, low=0):
        raise ValueError(f"padding must be a number of pixels >= 0, got {padding!r}")
    labels = object_labels(image, channel_axis=channel_axis, min_size=min_size)
    areas = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(areas > 0)
    if max_boxes is not None:
        keep = keep[np.argsort(-areas[keep], kind="stable")[:max_boxes]]
    slices = ndi.find_objects(labels)
    boxes = np.array(
        [[slices[i][0].start, slices[i][1].start, slices[i][0].stop - 1, slices[i][1].stop - 1]
         for i in keep],
        dtype=np.float64,
    ).reshape(-1, 4)
    boxes[:, :2] -= padding
    boxes[:, 2:] += padding
    last = np.array(labels.shape, dtype=np.float64) - 1
    boxes = np.clip(boxes, 0, np.concatenate([last, last]))
    return boxes[np.lexsort(boxes.T[::-1])]


def object_labels(image: np.ndarray, *, channel_axis: int | None = None,
                  min_size: float | None = None) -> np.ndarray:
    """The label image of the objects :func:`detect_objects` boxes (arguments as there).

    Returns
    -------
    (H, W) int array
        0 for background; ids need not be consecutive.
    """
    grey = _grey(image, channel_axis)
    if min_size is not None and not _is_number(min_size, low=0):
        raise ValueError(f"min_size must be a number of pixels >= 0 or None, got {min_size!r}")
    if not np.ptp(grey) > 0:
        return np.zeros(grey.shape, dtype=np.int64)
    residual, mask, radius = _foreground(grey)
    if not mask.any():
        return np.zeros(grey.shape, dtype=np.int64)
    labels = _trim(_split(mask, radius), residual)
    if min_size is None:
        min_size = max(9.0, 0.2 * np.pi * radius**2)
    areas = np.bincount(labels.ravel())
    small = areas < min_size
    small[0] = False
    labels[small[labels]] = 0
    return labels


def noise_to_contrast(image: np.ndarray, *, channel_axis: int | None = None) -> float:
    """The pixel noise of an image over the contrast of its objects (those of
    :func:`object_labels`): their median above the median of the background; 0 without objects.

    Parameters
    ----------
    image : (H, W), (H, W, C) or (C, H, W) array
        As :func:`detect_objects` takes it.
    channel_axis : int, optional
        Axis of the channels, when not guessed right.
    """
    grey = _grey(image, channel_axis)
    labels = object_labels(image, channel_axis=channel_axis)
    if not labels.any() or labels.all():
        return 0.0
    contrast = np.median(grey[labels > 0]) - np.median(grey[labels == 0])
    return _noise_level(grey) / contrast if contrast > 0 else 0.0


def _is_number(value, *, low: float) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and np.isfinite(value) and value >= low)


def _grey(image: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """The brightest of the robustly normalised channels, as float; NaN and inf become 0."""
    image = channels_last(image, channel_axis)
    if image.shape[-1] == 4:
        image = image[..., :3]  # alpha
    low, high = intensity_range(image)
    span = np.where(high > low, high - low, 1.0)
    scaled = (image.astype(np.float64) - low) / span
    scaled[~np.isfinite(scaled)] = 0.0
    return scaled.max(axis=-1)


def _typical_radius(mask: np.ndarray, *, by_area: bool = False) -> float:
    """Median over connected objects of the radius of their largest inscribed disc (>= 1).

    With ``by_area`` each object counts by its area, so that many specks of noise (or bright
    spots inside nuclei) do not outvote the few large objects.
    """
    components, n = ndi.label(mask)
    if n == 0:
        return 1.0
    inscribed = ndi.maximum(ndi.distance_transform_edt(mask), components, np.arange(1, n + 1))
    if not by_area:
        return max(1.0, float(np.median(inscribed)))
    order = np.argsort(inscribed)
    weight = np.cumsum(np.bincount(components.ravel())[1:][order])
    return max(1.0, float(inscribed[order][np.searchsorted(weight, weight[-1] / 2)]))


def _foreground(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Background-free smoothed image, mask of the objects and their typical radius.

    A first Otsu threshold gives the object scale (weighted by area: on dim, noisy images that
    threshold also passes hundreds of specks of noise), which sets the smoothing and the scale of
    the background; the background is estimated twice, the second time without the objects found
    by the first.
    """
    rough = ndi.gaussian_filter(grey, 1.0, mode="nearest")
    mask = rough > threshold_otsu(rough)
    radius = _typical_radius(mask, by_area=True)
    sigma = max(0.5, 0.15 * radius)
    smooth = ndi.gaussian_filter(grey, sigma, mode="nearest")
    noise = _noise_level(grey) * _gaussian_noise_gain(sigma)
    for _ in range(2):
        background = ~ndi.binary_dilation(mask, iterations=2)
        if not background.any():
            background[:] = True
        residual = smooth - _smooth_background(smooth, background, 8.0 * radius)
        threshold = max(0.5 * threshold_otsu(residual), _NOISE_SIGMAS * noise)
        mask = residual > threshold
    return residual, mask, _typical_radius(mask)


def _noise_level(grey: np.ndarray) -> float:
    """Standard deviation of pixel noise, from differences of neighbouring pixels.

    The largest tenth of the differences (edges of objects) is left out and the rest is scaled
    as for Gaussian noise; unlike the median this also works for low photon counts, where most
    differences are exactly 0.
    """
    steps = np.abs(np.concatenate([np.diff(grey, axis=0).ravel(), np.diff(grey, axis=1).ravel()]))
    tenth = int(0.9 * (steps.size - 1))
    kept = np.partition(steps, tenth)[: tenth + 1]
    # E[d^2 | |d| < 1.645 sd] = 0.623 sd^2 for Gaussian d; neighbour differences have sd sqrt(2)
    return float(np.sqrt(np.mean(kept**2) / 0.623 / 2.0))


def _gaussian_noise_gain(sigma: float) -> float:
    """Factor by which a Gaussian filter of ``sigma`` reduces the deviation of white noise."""
    half = int(4 * sigma) + 1
    impulse = np.zeros((2 * half + 1,) * 2)
    impulse[half, half] = 1.0
    return float(np.sqrt((ndi.gaussian_filter(impulse, sigma) ** 2).sum()))


def _smooth_background(image: np.ndarray, background: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian average of the ``background`` pixels only (normalised convolution).

    Computed on a grid a few times coarser than ``sigma``, then interpolated back.
    """
    step = max(1, int(sigma // 4))
    weight = background[::step, ::step].astype(np.float64)
    values = np.where(background, image, 0.0)[::step, ::step]
    total = ndi.gaussian_filter(values, sigma / step, mode="nearest")
    count = ndi.gaussian_filter(weight, sigma / step, mode="nearest")
    # far from any background pixel, fall back to the median background
    prior, eps = float(np.median(image[background])), 1e-3
    level = (total + eps * prior) / (count + eps)
    return resize(level, image.shape, order=1, mode="edge", anti_aliasing=False)


def _split(mask: np.ndarray, radius: float) -> np.ndarray:
    """Label image of the objects: touching ones split by a watershed of the distance transform.

    Each maximum of the (slightly smoothed) distance to the background seeds an object; maxima
    of one object closer than about ``0.4 * radius`` (plateaus, ripples of the outline) seed the
    same one.
    """
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(mask), min(1.0, 0.15 * radius))
    peaks = (distance == ndi.maximum_filter(distance, size=3)) & mask
    reach = max(1, round(0.4 * radius))
    markers, n_markers = ndi.label(ndi.binary_dilation(peaks, iterations=reach, mask=mask))
    labels = watershed(-distance, markers, mask=mask)
    components, _ = ndi.label(mask)
    # a small object next to a larger one may have no maximum of its own: it keeps its own label
    return np.where(labels > 0, labels, np.where(mask, components + n_markers, 0))


def _trim(labels: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """Keep the pixels of each object brighter than half its upper quartile (its half maximum)."""
    index = np.arange(labels.max() + 1)
    level = ndi.labeled_comprehension(residual, labels, index, lambda v: np.percentile(v, 75),
                                      np.float64, 0.0)
    return np.where(residual > 0.5 * level[labels], labels, 0)
