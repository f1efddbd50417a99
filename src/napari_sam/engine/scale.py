"""Object scale: estimate how large the objects of an image are, and resample a plane so that
they arrive at the size a model works best at, then map masks back to the plane's own pixels.

A model sees objects well only near the size it was trained at (the ``diameter`` of its
:class:`~napari_sam.models.registry.ModelSpec`); a microscopist's nuclei are 8 px across at 10x
and 60 px at 63x. Like Cellpose's size model, but without weights: the estimate is the median
equivalent diameter (``2 * sqrt(area / pi)``) of the objects that the built-in detector finds.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

from napari_sam.engine.detection import object_labels
from napari_sam.engine.geometry import WindowMask
from napari_sam.engine.image import channels_last

# Fewer objects than this give no estimate: the median of one or two sizes says little.
MIN_OBJECTS = 3
# The estimate looks at a central crop of at most this side: enough objects, bounded time.
ESTIMATE_CROP = 1024
# A plane whose pixel noise is over this share of its objects' contrast is noisy: enlarged at
# most its model's max_enlargement. Measured with benchmarks/scale.py --small: the dim
# held-out image whose nuclei the model cut along enlarged noise is at 0.41, noisy small
# nuclei at 0.22-0.39; dense 6-7 px nuclei that want their full enlargement (downsampled,
# smoother) at 0.11-0.15, the DSB image at 0.07-0.13.
NOISY = 0.2


def object_diameters(image: np.ndarray, *, channel_axis: int | None = None) -> np.ndarray:
    """Equivalent diameters (``2 * sqrt(area / pi)``, pixels) of the bright objects in an image.

    The objects are those of :func:`~napari_sam.engine.detection.detect_objects`; a plane larger
    than ``ESTIMATE_CROP`` pixels a side is measured on its central crop of that size.

    Parameters
    ----------
    image : (H, W[, C]) array
        Any 2D image :func:`~napari_sam.engine.detection.detect_objects` takes.
    channel_axis : int, optional
        Axis of the channels, when not guessed right.

    Returns
    -------
    (N,) float array
        One diameter per object found; empty when there are none.
    """
    image = channels_last(image, channel_axis)
    crop = tuple(slice(max(0, (n - ESTIMATE_CROP) // 2), max(0, (n - ESTIMATE_CROP) // 2) + ESTIMATE_CROP)
                 for n in image.shape[:2])
    labels = object_labels(image[crop], channel_axis=-1)
    areas = np.bincount(labels.ravel())[1:]
    return 2.0 * np.sqrt(areas[areas > 0] / np.pi)


def estimate_diameter(diameters: np.ndarray) -> float | None:
    """The typical object diameter of ``diameters`` (pooled over one image or over planes of a
    volume), or None with fewer than ``MIN_OBJECTS`` objects.

    The median of the objects at least half as wide as the area-weighted median: specks of
    noise and fragments, however many, do not pull the estimate down, and merged clusters
    (few, though large) do not pull it up.

    Examples
    --------
    >>> estimate_diameter([20, 22, 24, 4, 5, 4, 3])
    22.0
    """
    diameters = np.sort(np.asarray(diameters, dtype=float).ravel())
    if diameters.size < MIN_OBJECTS:
        return None
    area = np.cumsum(diameters**2)
    weighted_median = diameters[np.searchsorted(area, area[-1] / 2)]
    return float(np.median(diameters[diameters >= 0.5 * weighted_median]))


def check_diameter(diameter, shape: tuple[int, int]) -> float:
    """``diameter`` as a float, or a ValueError that says what is wrong with it.

    Parameters
    ----------
    diameter : float
        Object diameter in pixels of a plane of ``shape``.
    shape : tuple of int
        ``(H, W)`` of the plane.
    """
    if (isinstance(diameter, bool) or not isinstance(diameter, numbers.Real)
            or not math.isfinite(diameter) or diameter <= 0):
        raise ValueError(
            f"diameter must be a positive number of pixels (the typical object's width), "
            f"'auto' to estimate it, or None to keep the plane's pixels; got {diameter!r}"
        )
    if diameter > max(shape):
        raise ValueError(
            f"diameter {diameter:g} px is larger than the plane ({shape[0]} x {shape[1]} px): "
            "give the width of one object in pixels, or 'auto'"
        )
    return float(diameter)


def resample_factor(diameter: float | None, model_diameter: float | None,
                    max_enlargement: float | None = None, *, noise: float = 0.0) -> float:
    """How much a plane is enlarged (> 1) or shrunk (< 1) so that its objects of ``diameter``
    pixels arrive at the model's ``model_diameter``; a noisy plane is enlarged at most
    ``max_enlargement`` times.

    Enlarging a plane also enlarges its pixel noise into smooth blobs, which a model trained on
    images at their own pixels has never seen, and which it cuts objects along: where the noise
    is over ``NOISY`` times the objects' contrast, small objects are better segmented a little
    smaller than the model prefers. A clean plane is enlarged fully.

    Parameters
    ----------
    diameter, model_diameter : float or None
        The objects' diameter in the plane and the one the model works best at (its
        :class:`~napari_sam.models.registry.ModelSpec`); either None keeps the plane's pixels.
    max_enlargement : float, optional
        The model's limit for noisy planes (``ModelSpec.max_enlargement``); None: no limit.
    noise : float
        The plane's pixel noise over its objects' contrast
        (:func:`~napari_sam.engine.detection.noise_to_contrast`).

    Examples
    --------
    >>> resample_factor(20.0, 30.0)
    1.5
    >>> resample_factor(6.0, 30.0, max_enlargement=2.5, noise=0.4)
    2.5
    >>> resample_factor(6.0, 30.0, max_enlargement=2.5, noise=0.1)
    5.0
    """
    if diameter is None or model_diameter is None:
        return 1.0
    factor = model_diameter / diameter
    if max_enlargement is not None and noise > NOISY:
        factor = min(factor, max_enlargement)
    return factor


def enlargement_limited(diameter: float | None, model_diameter: float | None,
                        max_enlargement: float | None) -> bool:
    """Whether a plane's noise decides its enlargement: the model's limit is under the factor
    its objects of ``diameter`` pixels would need (:func:`resample_factor`). Only then is the
    noise worth measuring."""
    return (max_enlargement is not None
            and resample_factor(diameter, model_diameter) > max_enlargement)


@dataclass(frozen=True)
class Resampling:
    """A plane of ``shape`` resampled to ``scaled_shape`` (each axis by its own factor, the
    requested one rounded to whole pixels), and the way back.

    Pixel centres correspond as in :func:`skimage.transform.resize`: scaled pixel ``u`` sits at
    plane coordinate ``(u + 0.5) / factor - 0.5``.

    Attributes
    ----------
    shape, scaled_shape : tuple of int
        ``(H, W)`` of the plane and of the resampled plane.
    """

    shape: tuple[int, int]
    scaled_shape: tuple[int, int]

    @classmethod
    def by_factor(cls, shape: tuple[int, int], factor: float) -> Resampling:
        """Resample a plane of ``shape`` by ``factor`` (1 keeps it as it is)."""
        scaled = tuple(max(1, round(n * factor)) for n in shape)
        return cls(tuple(int(n) for n in shape), scaled)

    @property
    def identity(self) -> bool:
        return self.shape == self.scaled_shape

    @property
    def factors(self) -> np.ndarray:
        """``(2,)`` scaled size over plane size, per axis."""
        return np.array(self.scaled_shape, float) / np.array(self.shape, float)

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """An ``(H, W, C)`` uint8 plane resampled (bilinear, anti-aliased when shrinking)."""
        if self.identity:
            return rgb
        scaled = resize(rgb, (*self.scaled_shape, rgb.shape[2]), order=1, preserve_range=True,
                        anti_aliasing=bool((self.factors < 1).any()))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def points(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` ``(row, col)`` plane coordinates in scaled pixels."""
        return (np.asarray(points, float) + 0.5) * self.factors - 0.5

    def box(self, box: np.ndarray) -> np.ndarray:
        """A ``(min_row, min_col, max_row, max_col)`` box (maxima inclusive) in scaled pixels:
        the scaled pixels that cover the box's pixels."""
        box = np.asarray(box, float).ravel()
        low = box[:2] * self.factors
        high = (box[2:] + 1) * self.factors - 1
        return np.concatenate([low, np.maximum(high, low)])

    def to_scaled(self, mask: np.ndarray) -> np.ndarray:
        """A ``(H, W)`` plane mask as a mask of the scaled plane."""
        if self.identity:
            return np.asarray(mask, bool)
        return resize(np.asarray(mask, np.float32), self.scaled_shape, order=1,
                      anti_aliasing=bool((self.factors < 1).any())) >= 0.5

    def to_plane(self, mask: WindowMask) -> WindowMask | None:
        """A mask of the scaled plane as a mask of the plane (None when nothing is left).

        Only the window around the mask is resampled: the plane pixels whose centres fall in
        it sample the mask bilinearly (after smoothing it by the shrink factor), and those at
        0.5 or above belong to the mask.
        """
        if self.identity:
            return mask
        factors = self.factors
        h, w = mask.window.shape
        top = max(0, math.floor((mask.top - 1) / factors[0]))
        left = max(0, math.floor((mask.left - 1) / factors[1]))
        bottom = min(self.shape[0], math.ceil((mask.top + h + 1) / factors[0]) + 1)
        right = min(self.shape[1], math.ceil((mask.left + w + 1) / factors[1]) + 1)
        window = np.pad(mask.window.astype(np.float32), 2)
        sigma = np.maximum(0.0, (factors - 1) / 2)  # as resize's anti-aliasing
        if sigma.any():
            window = ndi.gaussian_filter(window, sigma, mode="constant")
        rows = (np.arange(top, bottom) + 0.5) * factors[0] - 0.5 - (mask.top - 2)
        cols = (np.arange(left, right) + 0.5) * factors[1] - 0.5 - (mask.left - 2)
        grid = np.meshgrid(rows, cols, indexing="ij")
        values = ndi.map_coordinates(window, grid, order=1, mode="constant", cval=0.0)
        inside = values >= 0.5
        if not inside.any():
            return None
        return WindowMask.trimmed(top, left, inside, self.shape)

    def dense_to_plane(self, masks: np.ndarray) -> np.ndarray:
        """``(k, h, w)`` bool masks of the scaled plane as ``(k, H, W)`` masks of the plane."""
        if self.identity:
            return masks
        out = np.zeros((len(masks), *self.shape), dtype=bool)
        for i, mask in enumerate(masks):
            if not mask.any():
                continue
            back = self.to_plane(WindowMask.trimmed(0, 0, mask, mask.shape))
            if back is not None:
                out[i] = back.dense()
        return out

