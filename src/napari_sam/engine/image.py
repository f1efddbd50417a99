"""From any 2D microscopy image to the 8-bit RGB that SAM expects."""

from __future__ import annotations

import warnings

import numpy as np

DEFAULT_PERCENTILES = (1.0, 99.8)
# A channel is saturated when at least this fraction of its pixels sit at its maximum, and at
# least SATURATION_SPIKE times as many as at the next lower level.
SATURATED_FRACTION = 0.002
SATURATION_SPIKE = 10


def channels_last(image: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
    """Return a 2D image as ``(H, W, C)`` with 1 to 4 channels.

    Parameters
    ----------
    image : (H, W), (H, W, C) or (C, H, W) array
        With ``channel_axis=None`` a 3D array is read as channels last when its last axis has at
        most 4 entries, else as channels first when its first axis has.
    channel_axis : int, optional
        Axis of the channels, when the guess above is wrong.

    Raises
    ------
    ValueError
        The array is not a 2D image, or has more than 4 channels.
    """
    image = np.asarray(image)
    if image.ndim == 2 and channel_axis is None:
        image, channel_axis = image[..., None], -1  # then checked like any other image
    if image.ndim != 3:
        raise ValueError(
            f"expected a 2D image (H, W) or (H, W, C), got an array of shape {image.shape}: "
            "pass one 2D slice of a stack, e.g. volume[z]"
        )
    if channel_axis is None:
        if image.shape[-1] <= 4:
            channel_axis = -1
        elif image.shape[0] <= 4:
            channel_axis = 0
        else:
            raise ValueError(
                f"cannot tell the channel axis of an image of shape {image.shape}: a 3D stack? "
                "Pass one 2D slice, or channel_axis= for a multichannel image"
            )
    image = np.moveaxis(image, channel_axis, -1)
    if not 1 <= image.shape[-1] <= 4:
        raise ValueError(
            f"image has {image.shape[-1]} channels; SAM sees at most 3: choose them, e.g. "
            "image[..., [0, 2]]"
        )
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image of shape {image.shape} is empty")
    return image


def intensity_range(
    image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> np.ndarray:
    """Robust per-channel intensity limits of ``(H, W, C)`` pixels, ignoring NaN and inf.

    A saturated channel (at least 0.2% of its pixels at its maximum, many more than at the
    level below, and the high percentile on that maximum) takes its high limit from the pixels
    below saturation instead, with a warning: else a few clipped pixels would set the high
    limit and crush everything else towards black. uint8 images are left alone (SAM sees them
    as they are).

    Returns
    -------
    (2, C) array
        Low and high limit of each channel; used by :func:`to_rgb_uint8`.
    """
    pixels = image.reshape(-1, image.shape[-1]).astype(np.float64)
    pixels[~np.isfinite(pixels)] = np.nan
    with warnings.catch_warnings():  # an all-NaN channel warns, and gets limits (0, 0)
        warnings.simplefilter("ignore", RuntimeWarning)
        limits = np.nanpercentile(pixels, percentiles, axis=0)
    if image.dtype not in (np.uint8, np.bool_):
        for channel in range(pixels.shape[1]):
            limits[1, channel] = _below_saturation(pixels[:, channel], limits[1, channel],
                                                   percentiles[1], channel)
    return np.nan_to_num(limits)


def _below_saturation(values: np.ndarray, high: float, percentile: float, channel: int) -> float:
    """``high``, or the ``percentile`` of the unsaturated ``values`` when ``high`` sits on a
    saturated maximum (see :func:`intensity_range`)."""
    values = values[~np.isnan(values)]
    if values.size == 0 or high < values.max():
        return high
    top = values.max()
    at_top = np.count_nonzero(values == top)
    below = values[values < top]
    if at_top < SATURATED_FRACTION * values.size or below.size == 0:
        return high
    if at_top < SATURATION_SPIKE * np.count_nonzero(below == below.max()):
        return high  # a level about as common as the one below it: data, not clipping
    unsaturated = float(np.percentile(below, percentile))
    warnings.warn(
        f"{100 * at_top / values.size:.2g}% of the pixels of channel {channel} are saturated "
        f"(at {top:g}); the high intensity limit is taken from the others ({unsaturated:g}) so "
        "that they are not crushed towards black. Pass limits= to choose it yourself",
        UserWarning,
        stacklevel=3,
    )
    return unsaturated


def to_rgb_uint8(
    image: np.ndarray,
    *,
    channel_axis: int | None = None,
    limits: np.ndarray | tuple[float, float] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Convert a 2D image to ``(H, W, 3)`` uint8 RGB for SAM.

    uint8 images are used as they are (grey is repeated into 3 channels, alpha dropped). Other
    types are scaled linearly so that ``limits`` map to 0 and 255, clipped; NaN becomes 0.

    Parameters
    ----------
    image : (H, W[, C]) array
        Grey, RGB(A) or 2-channel image (the second channel goes to green, blue stays 0).
    channel_axis : int, optional
        See :func:`channels_last`.
    limits : (2,) or (2, C) array-like, optional
        Intensities that map to 0 and 255. By default the ``percentiles`` of this image; for a
        stack pass limits computed once for the whole volume so slices look alike.
    percentiles : tuple of float
        Low and high percentile used when ``limits`` is not given.

    Returns
    -------
    (H, W, 3) uint8 array

    Raises
    ------
    ValueError
        ``limits`` of the wrong shape, not finite, or with low > high; see also
        :func:`channels_last`.

    Warns
    -----
    UserWarning
        Without ``limits``: a channel is saturated (see :func:`intensity_range`).

    Examples
    --------
    >>> img = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    >>> to_rgb_uint8(img, limits=(0, 4000))[..., 0]
    array([[  0,  64],
           [128, 255]], dtype=uint8)
    """
    image = channels_last(image, channel_axis)
    if image.shape[-1] == 4:
        image = image[..., :3]
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        if limits is None:
            limits = intensity_range(image, percentiles)
        image = rescale_to_uint8(image, limits)
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if image.shape[-1] == 2:
        return np.concatenate([image, np.zeros_like(image[..., :1])], axis=-1)
    return np.ascontiguousarray(image)


def rescale_to_uint8(image: np.ndarray, limits: np.ndarray | tuple[float, float]) -> np.ndarray:
    """Map ``limits`` (``(2,)`` or ``(2, C)``) of ``(H, W, C)`` pixels linearly to 0 and 255."""
    limits = np.asarray(limits, dtype=np.float64)
    if limits.size % 2 or limits.shape[:1] != (2,) or limits.reshape(2, -1).shape[1] not in (1, image.shape[-1]):
        raise ValueError(
            f"limits of shape {limits.shape} do not fit an image with {image.shape[-1]} channels: "
            "give (low, high) or one pair per channel, shape (2, C)"
        )
    if not np.isfinite(limits).all():
        raise ValueError(
            f"limits must be finite numbers, got {limits.tolist()}: give the intensities that map "
            "to 0 and 255, or leave limits out to use percentiles of the image"
        )
    low, high = np.broadcast_to(limits.reshape(2, -1), (2, image.shape[-1]))
    if (high < low).any():
        raise ValueError(f"limits must be (low, high) with low <= high, got {limits.tolist()}")
    span = np.where(high > low, high - low, 1.0)
    # float32 keeps the memory small; wide types (int64, float64) with a large offset need
    # the offset removed in double precision first.
    work = np.float64 if image.dtype.itemsize > 4 else np.float32
    scaled = (image.astype(work) - low.astype(work)) * (255.0 / span).astype(work)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
