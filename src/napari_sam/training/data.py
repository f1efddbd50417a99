"""Training examples from pairs of (image, labels) volumes, read lazily one window at a time.

A :class:`LabelledSlices` object turns any number of image / label pairs (arrays, napari layers,
or files) into random 2D training examples ``(image, labels)`` for the trainer:

1. **Choice.** A pair is picked with a probability proportional to its number of 2D slices, then
   a slice, then a ``crop_size`` x ``crop_size`` window of it (the whole slice when smaller).
   With probability ``foreground_fraction`` the window is placed so that it contains a labelled
   pixel chosen at random, otherwise anywhere. A window with fewer than ``min_objects`` labelled
   objects is drawn again (at most 20 times, then the best one seen is used).
2. **Reading.** Images and labels are opened by :func:`napari_sam.volume.io.open_volume`, the
   reader of inference, and only the chosen window is read (plus, for foreground placement, a
   subsampled view of the label slice); never a whole volume.
3. **Intensities.** As in inference on stacks, so that the model sees a plane the same way in
   training and in use: uint8 images are used as they are, others are scaled between limits
   taken once per volume (:func:`napari_sam.volume.io.volume_limits`), and the window becomes
   RGB by :func:`napari_sam.volume.io.limited_rgb`.
4. **Labels.** The window's labels are renumbered to ``1..n`` (0 stays background).

Examples are ``(h, w, 3)`` uint8 RGB images and ``(h, w)`` uint32 label images.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from skimage.segmentation import relabel_sequential

from napari_sam.engine.image import DEFAULT_PERCENTILES
from napari_sam.volume.io import Volume, limited_rgb, open_volume, volume_limits

__all__ = ["LabelledSlices"]

# A window with too few objects is drawn again at most this many times in all.
MAX_TRIES = 20
# Foreground placement looks for labelled pixels in a view of the label slice subsampled to at
# most this many pixels.
FOREGROUND_PIXELS = 1 << 18
# SAM sees 3 channels; a fourth (alpha) is dropped, more would have to be chosen by the user.
MAX_CHANNELS = 4


@dataclasses.dataclass(frozen=True, eq=False)
class _Pair:
    """One (image, labels) pair of volumes with the same planes, and the image's limits."""

    image: Volume
    labels: Volume
    limits: np.ndarray | None  # None for uint8 images, used as they are


class LabelledSlices:
    """Random 2D training examples from pairs of image and label volumes.

    Parameters
    ----------
    pairs : sequence of (image, labels)
        Each ``image`` and ``labels`` is anything :func:`napari_sam.volume.io.open_volume`
        opens (a path of a tiff, ``.npy`` or zarr store, OME-zarr included; a numpy, dask or
        zarr array, or any array-like with ``shape``, ``dtype`` and numpy indexing), or an
        object with a ``.data`` array such as a napari ``Image`` or ``Labels`` layer (multiscale
        layers give their full resolution). Labels are integer arrays, 0 = background, with
        the image's planes and ``(Y, X)`` size and no channel axis; the image may have one more
        channel axis of at most 4 entries. A single pair may be passed without the enclosing
        list.
    crop_size : int
        Largest side of an example, at least 16. Slices smaller than that are given whole
        (the trainer pads them).
    axes : str or sequence of str, optional
        Axes of the images, one string for all pairs or one per pair, from ``t``, ``c``, ``z``,
        ``y``, ``x`` (any case) as in :func:`~napari_sam.volume.io.open_volume`, e.g.
        ``"zyx"``, ``"yxc"``, ``"czyx"``. Labels have the same axes without ``c``. By default
        the axes come from the files' metadata, else are guessed from the shapes: an image with
        one axis more than its labels has a channel axis there, first or last.
    min_objects : int
        A window with fewer labelled objects is drawn again, up to 20 times in all; then the
        window with the most objects seen is used.
    foreground_fraction : float
        Probability, in ``[0, 1]``, that a window smaller than its slice is placed over a
        labelled pixel chosen at random (found in a subsampled view of the label slice) rather
        than anywhere. Helps with sparse labels.
    percentiles : (float, float)
        Low and high percentiles of each volume's intensities that map to 0 and 255, computed
        once per volume by :func:`~napari_sam.volume.io.volume_limits`. The default is the
        one inference uses. Not used for uint8 images, which are taken as they are.

    Raises
    ------
    ValueError
        No pairs; a pair that is not a pair; a file or array that
        :func:`~napari_sam.volume.io.open_volume` refuses (also for bad ``axes``); labels that
        are not integers or have a channel axis; an image that is not of a real number type or
        has more than 4 channels; image and labels that do not match; ``crop_size`` < 16;
        ``min_objects`` < 0; ``foreground_fraction`` outside ``[0, 1]``; bad percentiles.
    FileNotFoundError
        A path that does not exist.
    TypeError
        A source that is neither a path nor an array-like.

    See Also
    --------
    napari_sam.volume.io.open_volume : the reader used.
    napari_sam.volume.io.limited_rgb : the intensity conversion used.
    napari_sam.synthetic.synthetic_nuclei : synthetic pairs for tests and pretraining.

    Notes
    -----
    Everything random is drawn from the ``rng`` given to :meth:`sample`, and the intensity limits
    do not depend on chance, so the same seed gives the same examples. The renumbering keeps one
    id per object even when the window cuts an object into several pieces.

    Examples
    --------
    >>> from napari_sam.synthetic import synthetic_nuclei
    >>> image, labels = synthetic_nuclei((4, 96, 96), seed=0)
    >>> data = LabelledSlices([(image, labels)], crop_size=64)
    >>> img, lab = data.sample(np.random.default_rng(0))
    >>> img.shape, img.dtype, lab.shape, lab.dtype
    ((64, 64, 3), dtype('uint8'), (64, 64), dtype('uint32'))
    >>> bool(lab.max() >= 1)
    True
    """

    def __init__(
        self,
        pairs,
        *,
        crop_size: int = 256,
        axes: str | Sequence[str] | None = None,
        min_objects: int = 1,
        foreground_fraction: float = 0.5,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ):
        self.crop_size = _check_int("crop_size", crop_size, low=16)
        self.min_objects = _check_int("min_objects", min_objects, low=0)
        self.foreground_fraction = _check_fraction(foreground_fraction)
        self.percentiles = _check_percentiles(percentiles)
        pairs = _check_pairs(pairs)
        axes_list = _check_axes_arg(axes, len(pairs))
        self._pairs = [
            _open_pair(i, image, labels, axes_list[i], self.percentiles)
            for i, (image, labels) in enumerate(pairs)
        ]
        self._cum_slices = np.cumsum([p.labels.n_planes for p in self._pairs])

    # ------------------------------------------------------------------ public
    @property
    def n_pairs(self) -> int:
        """Number of (image, labels) pairs."""
        return len(self._pairs)

    @property
    def n_slices(self) -> int:
        """Number of 2D slices in all pairs (1 per 2D pair)."""
        return int(self._cum_slices[-1])

    @property
    def limits(self) -> list[np.ndarray | None]:
        """Intensity limits of each pair: low and high, a ``(2,)`` array or ``(2, C)`` with
        channels, or None for uint8 images, which are used as they are."""
        return [None if p.limits is None else p.limits.copy() for p in self._pairs]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw one training example.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of all random choices.

        Returns
        -------
        image : (h, w, 3) uint8 ndarray
            RGB image, normalised with the intensity limits of its volume.
        labels : (h, w) uint32 ndarray
            Objects numbered ``1..n`` without gaps, 0 = background. ``h`` and ``w`` are
            ``crop_size``, or the slice's size when that is smaller.
        """
        best = None
        for _ in range(MAX_TRIES):
            k = int(rng.integers(self.n_slices))
            index = int(np.searchsorted(self._cum_slices, k, side="right"))
            pair = self._pairs[index]
            plane = k - (int(self._cum_slices[index - 1]) if index else 0)
            rows, cols = self._window(rng, pair.labels, plane)
            labels = pair.labels.plane(plane, rows=rows, cols=cols)
            if labels.size and labels.min() < 0:
                raise ValueError(
                    f"pair {index}: labels contain negative ids (min {labels.min()}); "
                    "0 is background and objects are 1, 2, ..."
                )
            n = _count_objects(labels)
            if best is None or n > best[0]:
                best = (n, pair, plane, rows, cols, labels)
            if n >= self.min_objects:
                break
        _, pair, plane, rows, cols, labels = best
        window = pair.image.plane(plane, rows=rows, cols=cols)
        image = limited_rgb(window, pair.limits)  # as whole planes become RGB in inference
        labels = relabel_sequential(labels)[0].astype(np.uint32, copy=False)
        return image, labels

    def check_labelled(self) -> None:
        """Make sure there is something to learn from: labelled objects.

        Reads each pair's label slices until one holds an object (all of them for a pair that
        has none), so call it once, before training.

        Raises
        ------
        ValueError
            No pair holds a labelled object (every label image is all zeros); names the labels.

        Warns
        -----
        UserWarning
            Some pairs hold no labelled object; names them. They still give examples.
        """
        empty = [(index, pair) for index, pair in enumerate(self._pairs) if not _has_objects(pair)]
        if not empty:
            return
        names = "; ".join(f"pair {index}: labels {_name(pair.labels)}" for index, pair in empty)
        if len(empty) == len(self._pairs):
            raise ValueError(
                f"the training labels hold no object, every label image is all zeros ({names}): "
                "training on them would teach nothing. Check that these are the label images "
                "(0 = background, objects 1, 2, ...), not the images or empty masks"
            )
        warnings.warn(f"these labels hold no object, every pixel is 0: {names}; their images "
                      "only give examples without objects", UserWarning, stacklevel=2)

    def held_out(self, n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """A fixed list of ``n`` examples, the same for the same ``seed``, e.g. for validation.

        They are drawn like :meth:`sample` with ``numpy.random.default_rng(seed)``, from the same
        slices as training examples: for a validation set disjoint from the training data, build
        a second :class:`LabelledSlices` from other pairs.

        Parameters
        ----------
        n : int
            Number of examples, >= 0.
        seed : int
            Seed of the random generator.

        Returns
        -------
        list of (image, labels)
            As returned by :meth:`sample`.
        """
        n = _check_int("n", n, low=0)
        rng = np.random.default_rng(seed)
        return [self.sample(rng) for _ in range(n)]

    def summary(self) -> dict:
        """A JSON-serialisable description of the data, for checkpoint metadata.

        Reads the label slices whose images gave the intensity limits (at most 8 per pair,
        :meth:`~napari_sam.volume.io.Volume.sample_planes`) to count their objects.

        Returns
        -------
        dict
            ``n_pairs``, ``n_slices``, the sampling settings, and per pair (``pairs``): its
            source, image and labels shapes and dtypes, axes, number of slices, intensity
            limits, and the number of labelled objects found in the sampled slices.
        """
        pairs = []
        for pair in self._pairs:
            sampled = [int(plane) for plane in pair.image.sample_planes()]
            pairs.append({
                "source": {"image": pair.image.source, "labels": pair.labels.source},
                "image_shape": list(pair.image.shape),
                "image_dtype": str(pair.image.dtype),
                "labels_shape": list(pair.labels.shape),
                "labels_dtype": str(pair.labels.dtype),
                "axes": pair.image.axes,
                "n_slices": pair.labels.n_planes,
                "slice_shape": list(pair.labels.plane_shape),
                "limits": None if pair.limits is None else pair.limits.tolist(),
                "sampled_slices": sampled,
                "objects_in_sampled_slices": [
                    _count_objects(pair.labels.plane(plane)) for plane in sampled
                ],
            })
        return {
            "n_pairs": self.n_pairs,
            "n_slices": self.n_slices,
            "crop_size": self.crop_size,
            "min_objects": self.min_objects,
            "foreground_fraction": self.foreground_fraction,
            "percentiles": list(self.percentiles),
            "pairs": pairs,
        }

    def __repr__(self) -> str:
        return (
            f"LabelledSlices({self.n_pairs} pairs, {self.n_slices} slices, "
            f"crop_size={self.crop_size}, min_objects={self.min_objects}, "
            f"foreground_fraction={self.foreground_fraction})"
        )

    # ----------------------------------------------------------------- helpers
    def _window(self, rng: np.random.Generator, labels: Volume, plane: int) -> tuple[slice, slice]:
        """Rows and columns of a random window of ``plane``."""
        height, width = labels.plane_shape
        h, w = min(self.crop_size, height), min(self.crop_size, width)
        if h == height and w == width:
            return slice(0, h), slice(0, w)
        if self.foreground_fraction > 0 and rng.random() < self.foreground_fraction:
            step = max(1, math.ceil(math.sqrt(height * width / FOREGROUND_PIXELS)))
            every = slice(None, None, step)
            found = labels.plane(plane, rows=every, cols=every)
            hits = np.flatnonzero(found)
            if hits.size:
                r, c = np.unravel_index(hits[rng.integers(hits.size)], found.shape)
                r, c = int(r) * step, int(c) * step
                # the pixel lands anywhere in the window, not always in its middle
                top = min(max(r - int(rng.integers(h)), 0), height - h)
                left = min(max(c - int(rng.integers(w)), 0), width - w)
                return slice(top, top + h), slice(left, left + w)
        top = int(rng.integers(height - h + 1))
        left = int(rng.integers(width - w + 1))
        return slice(top, top + h), slice(left, left + w)


# --------------------------------------------------------------------------- #
# opening and validation
# --------------------------------------------------------------------------- #
def _has_objects(pair: _Pair) -> bool:
    """Whether any slice of ``pair``'s labels holds a nonzero pixel (read slice by slice)."""
    return any(np.any(pair.labels.plane(plane)) for plane in range(pair.labels.n_planes))


def _name(volume: Volume) -> str:
    """A volume as the user gave it: its path (quoted), napari layer or kind of array."""
    return repr(volume.path) if volume.source == volume.path else volume.source


def _count_objects(labels: np.ndarray) -> int:
    ids = np.unique(labels)
    return int(np.count_nonzero(ids))


def _check_int(name: str, value, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"foreground_fraction must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_percentiles(value) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"percentiles must be two numbers (low, high), got {value!r}; e.g. (1.0, 99.8)"
        ) from None
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {value!r}")
    return low, high


def _is_source(obj) -> bool:
    """Whether ``obj`` is one image or label source, as opposed to a pair of them."""
    return isinstance(obj, str | os.PathLike | np.ndarray) or hasattr(obj, "shape") or (
        hasattr(obj, "data") and not isinstance(obj, list | tuple)
    )


def _check_pairs(pairs) -> list[tuple[Any, Any]]:
    if isinstance(pairs, tuple | list) and len(pairs) == 2 and _is_source(pairs[0]):
        pairs = [pairs]  # a single (image, labels) pair
    if not isinstance(pairs, str | os.PathLike | np.ndarray | Sequence) and hasattr(
        pairs, "__iter__"
    ):
        pairs = list(pairs)  # e.g. a generator or zip() of images and labels
    if isinstance(pairs, str | os.PathLike | np.ndarray) or not isinstance(pairs, Sequence):
        raise ValueError(
            f"pairs must be a list of (image, labels) pairs, got {type(pairs).__name__}"
        )
    if not pairs:
        raise ValueError("pairs is empty: give at least one (image, labels) pair")
    for i, pair in enumerate(pairs):
        if isinstance(pair, str | os.PathLike) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(
                f"pair {i} must be an (image, labels) pair, got {type(pair).__name__}"
            )
    return [tuple(pair) for pair in pairs]


def _check_axes_arg(axes, n: int) -> list[str | None]:
    if axes is None or isinstance(axes, str):
        return [axes] * n
    axes = list(axes)
    if len(axes) != n or not all(a is None or isinstance(a, str) for a in axes):
        raise ValueError(
            f"axes must be one string for all pairs or one per pair ({n}), got {axes!r}"
        )
    return axes


def _open_pair(index: int, image, labels, axes: str | None,
               percentiles: tuple[float, float]) -> _Pair:
    """Open and check one pair; the image's axes are fitted to the labels' when not given."""
    image = _open(image, "image", index, axes)
    label_axes = None if axes is None else axes.lower().replace("c", "")
    labels = _open(labels, "labels", index, label_axes)
    if not np.issubdtype(labels.dtype, np.integer):
        hint = (" for a boolean mask use skimage.measure.label(mask)" if labels.dtype == bool
                else " convert with labels.astype(np.uint32) if the values are whole numbers")
        raise ValueError(
            f"pair {index}: labels must be an integer label image, got dtype {labels.dtype};"
            + hint
        )
    if labels.channels is not None:
        raise ValueError(
            f"pair {index}: labels {_name(labels)} of shape {labels.shape} are read with axes "
            f"{labels.axes!r}, with a channel axis, but labels have one id per pixel: pass the "
            "image's axes, e.g. axes='tzyx'"
        )
    if image.dtype != bool and (not np.issubdtype(image.dtype, np.number)
                                or np.issubdtype(image.dtype, np.complexfloating)):
        raise ValueError(f"pair {index}: image dtype {image.dtype} is not a real number type")
    if axes is None and not _same_planes(image, labels):
        fitted = _axes_beside(labels, image.shape)
        image = image if fitted is None else dataclasses.replace(image, axes=fitted)
    if not _same_planes(image, labels):
        raise ValueError(
            f"pair {index}: image shape {image.shape} (axes {image.axes!r}) does not match labels "
            f"shape {labels.shape} (axes {labels.axes!r}): they must have the same planes and "
            f"(Y, X) sizes; the image may have one more channel axis of at most {MAX_CHANNELS} "
            "entries" + (" (or pass axes=, e.g. 'zyxc')" if axes is None else "")
        )
    if (image.channels or 0) > MAX_CHANNELS:
        raise ValueError(
            f"pair {index}: the image has {image.channels} channels (shape {image.shape}, axes "
            f"{image.axes!r}); at most {MAX_CHANNELS} are supported: choose them, e.g. "
            "image[..., :3]"
        )
    limits = volume_limits(image, percentiles=percentiles)
    return _Pair(image=image, labels=labels, limits=None if limits is None else np.asarray(limits))


def _open(source, role: str, index: int, axes: str | None) -> Volume:
    """``source`` opened by :func:`open_volume`; a napari layer gives its full-resolution data."""
    layer = None
    if not hasattr(source, "shape") and hasattr(source, "data"):  # a napari layer, duck-typed
        layer = f"napari layer {getattr(source, 'name', type(source).__name__)!r}"
        source = source.data[0] if getattr(source, "multiscale", False) else source.data
    try:
        volume = open_volume(source, axes)
    except (ValueError, TypeError, OSError) as error:
        raise type(error)(f"pair {index}, {role}: {error}") from error
    return volume if layer is None else dataclasses.replace(volume, source=layer)


def _same_planes(image: Volume, labels: Volume) -> bool:
    return image.planes == labels.planes and image.plane_shape == labels.plane_shape


def _axes_beside(labels: Volume, shape: tuple[int, ...]) -> str | None:
    """Axes of an image of ``shape`` with the labels' axes and a channel axis first or last."""
    if shape[1:] == labels.shape and shape[0] <= MAX_CHANNELS:
        return "c" + labels.axes
    if shape[:-1] == labels.shape and shape[-1] <= MAX_CHANNELS:
        return labels.axes + "c"
    return None
