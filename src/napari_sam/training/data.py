"""Training examples from pairs of (image, labels) volumes, read lazily one crop at a time.

A :class:`LabelledSlices` object turns any number of image / label pairs (numpy, dask or zarr
arrays, napari layers, or paths to .tif / .tiff / .npy files and zarr stores) into random 2D
training examples ``(image, labels)`` for the trainer:

1. **Choice.** A pair is picked with a probability proportional to its number of 2D slices, then
   a slice, then a ``crop_size`` x ``crop_size`` window of it (the whole slice when smaller).
   With probability ``foreground_fraction`` the window is placed so that it contains a labelled
   pixel chosen at random, otherwise anywhere. A window with fewer than ``min_objects`` labelled
   objects is drawn again (at most 20 times, then the best one seen is used).
2. **Reading.** Only the chosen window is read from disk (plus, for foreground placement, a
   subsampled view of the label slice); never a whole volume.
3. **Intensities.** Each volume is normalised once, with robust percentiles (default 1 and 99.8)
   of a sample of its voxels taken from at most 8 evenly spaced slices, so all slices of a volume
   keep their relative brightness, as in inference on stacks. uint8 images are used as they are.
4. **Labels.** The window's labels are renumbered to ``1..n`` (0 stays background).

Examples are ``(h, w, 3)`` uint8 RGB images and ``(h, w)`` uint32 label images.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from skimage.segmentation import relabel_sequential

from napari_sam.engine.image import DEFAULT_PERCENTILES, intensity_range, to_rgb_uint8

__all__ = ["LabelledSlices"]

# A window with too few objects is drawn again at most this many times in all.
MAX_TRIES = 20
# Intensity limits of a volume come from at most this many slices and this many pixels in all.
LIMIT_SLICES = 8
LIMIT_PIXELS = 1 << 20
# Foreground placement looks for labelled pixels in a view of the label slice subsampled to at
# most this many pixels.
FOREGROUND_PIXELS = 1 << 18

_TIFF_SUFFIXES = (".tif", ".tiff")
_ZARR_SUFFIXES = (".zarr", ".zr")


@dataclass(eq=False)
class _Pair:
    """One (image, labels) volume with its axes, sizes and intensity limits."""

    image: Any
    labels: Any
    axes: str  # image axes, upper case, the slice axis (if any) called "Z", e.g. "ZYXC"
    source: dict
    shape: tuple[int, int, int]  # (n_slices, height, width)
    limits: np.ndarray | None = None  # (2, C) or None for uint8 / bool images
    sample_slices: list[int] = field(default_factory=list)

    @property
    def n_slices(self) -> int:
        return self.shape[0]

    def read(self, which: str, z: int, rows: slice, cols: slice) -> np.ndarray:
        """Read ``rows, cols`` of slice ``z`` as ``(h, w)`` labels or ``(h, w[, C])`` image."""
        axes = self.axes if which == "image" else self.axes.replace("C", "")
        where = {"Z": z, "Y": rows, "X": cols, "C": slice(0, 3)}  # alpha is dropped, as by SAM
        array = self.image if which == "image" else self.labels
        out = np.asarray(array[tuple(where[a] for a in axes)])
        kept = [a for a in axes if a != "Z"]
        return np.transpose(out, [kept.index(a) for a in "YXC" if a in kept])


class LabelledSlices:
    """Random 2D training examples from pairs of image and label volumes.

    Parameters
    ----------
    pairs : sequence of (image, labels)
        Each ``image`` and ``labels`` is a numpy, dask or zarr array (anything with ``shape``,
        ``dtype`` and numpy indexing), an object with a ``.data`` array such as a napari
        ``Image`` or ``Labels`` layer (multiscale layers give their full resolution), or a path:
        ``.tif`` / ``.tiff`` (memory-mapped when the file allows it, else read once into
        memory), ``.npy`` (memory-mapped) or a zarr store (a directory or ``.zarr``; a group
        gives its array ``"0"``, as in OME-zarr, or its only array). Labels are ``(Y, X)`` or
        ``(Z, Y, X)`` integer arrays, 0 = background; the image has the same shape, possibly
        with one more channel axis of at most 4 entries (last, or first). A single pair may be
        passed without the enclosing list.
    crop_size : int
        Largest side of an example, at least 16. Slices smaller than that are given whole
        (the trainer pads them).
    axes : str or sequence of str, optional
        Axes of the images, one string for all pairs or one per pair, from ``Y``, ``X``, ``C``
        (channels) and one slice axis (``Z``, or any other letter such as ``T``), in any order,
        e.g. ``"ZYX"``, ``"YXC"``, ``"CZYX"``. Labels have the same axes without ``C``. By
        default guessed from the shapes as described under ``pairs``.
    min_objects : int
        A window with fewer labelled objects is drawn again, up to 20 times in all; then the
        window with the most objects seen is used.
    foreground_fraction : float
        Probability, in ``[0, 1]``, that a window smaller than its slice is placed over a
        labelled pixel chosen at random (found in a subsampled view of the label slice) rather
        than anywhere. Helps with sparse labels.
    percentiles : (float, float)
        Low and high percentiles of each volume's intensities that map to 0 and 255. Computed
        once per volume from a sample of at most 2**20 pixels of at most 8 evenly spaced slices.
        Not used for uint8 images, which are taken as they are.

    Raises
    ------
    ValueError
        No pairs; a pair that is not a pair; an empty, 1D or complex array; labels that are not
        integers; image and labels shapes that do not match; bad ``axes``; ``crop_size`` < 16;
        ``min_objects`` < 0; ``foreground_fraction`` outside ``[0, 1]``; bad percentiles; a file
        type that is not supported.
    FileNotFoundError
        A path that does not exist.
    ImportError
        A zarr store path without zarr installed.

    See Also
    --------
    napari_sam.engine.image.to_rgb_uint8 : the intensity conversion used.
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
            _open_pair(i, image, labels, axes_list[i]) for i, (image, labels) in enumerate(pairs)
        ]
        for pair in self._pairs:
            self._set_limits(pair)
        self._cum_slices = np.cumsum([p.n_slices for p in self._pairs])

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
        """Intensity limits of each pair: a ``(2, C)`` array (low, high per channel), or None
        for uint8 and boolean images, which are used as they are."""
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
            z = k - (int(self._cum_slices[index - 1]) if index else 0)
            rows, cols = self._window(rng, pair, z)
            labels = pair.read("labels", z, rows, cols)
            if labels.size and labels.min() < 0:
                raise ValueError(
                    f"pair {index}: labels contain negative ids (min {labels.min()}); "
                    "0 is background and objects are 1, 2, ..."
                )
            n = _count_objects(labels)
            if best is None or n > best[0]:
                best = (n, pair, z, rows, cols, labels)
            if n >= self.min_objects:
                break
        _, pair, z, rows, cols, labels = best
        image = pair.read("image", z, rows, cols)
        image = to_rgb_uint8(image, channel_axis=-1 if image.ndim == 3 else None,
                             limits=pair.limits)
        if not image.flags.owndata:  # a view of the caller's (or a read-only) uint8 image
            image = image.copy()
        # relabel_sequential refuses read-only input (memory maps, views of read-only arrays)
        labels = relabel_sequential(np.array(labels))[0].astype(np.uint32, copy=False)
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
        names = "; ".join(f"pair {index}: labels {_describe(pair.source['labels'])}"
                          for index, pair in empty)
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

        Reads the labels of the slices used for the intensity limits (at most 8 per pair) to
        count their objects.

        Returns
        -------
        dict
            ``n_pairs``, ``n_slices``, the sampling settings, and per pair (``pairs``): its
            source, image and labels shapes and dtypes, axes, number of slices, intensity
            limits, and the number of labelled objects found in the sampled slices.
        """
        pairs = []
        for pair in self._pairs:
            counts = [
                _count_objects(pair.read("labels", z, slice(None), slice(None)))
                for z in pair.sample_slices
            ]
            pairs.append({
                "source": dict(pair.source),
                "image_shape": [int(s) for s in pair.image.shape],
                "image_dtype": str(np.dtype(pair.image.dtype)),
                "labels_shape": [int(s) for s in pair.labels.shape],
                "labels_dtype": str(np.dtype(pair.labels.dtype)),
                "axes": pair.axes,
                "n_slices": pair.n_slices,
                "slice_shape": [pair.shape[1], pair.shape[2]],
                "limits": None if pair.limits is None else pair.limits.tolist(),
                "sampled_slices": list(pair.sample_slices),
                "objects_in_sampled_slices": counts,
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
    def _window(self, rng: np.random.Generator, pair: _Pair, z: int) -> tuple[slice, slice]:
        """Rows and columns of a random window of slice ``z``."""
        _, height, width = pair.shape
        h, w = min(self.crop_size, height), min(self.crop_size, width)
        if h == height and w == width:
            return slice(0, h), slice(0, w)
        if self.foreground_fraction > 0 and rng.random() < self.foreground_fraction:
            step = max(1, math.ceil(math.sqrt(height * width / FOREGROUND_PIXELS)))
            view = pair.read("labels", z, slice(None, None, step), slice(None, None, step))
            found = np.flatnonzero(view)
            if found.size:
                r, c = np.unravel_index(found[rng.integers(found.size)], view.shape)
                r, c = int(r) * step, int(c) * step
                # the pixel lands anywhere in the window, not always in its middle
                top = min(max(r - int(rng.integers(h)), 0), height - h)
                left = min(max(c - int(rng.integers(w)), 0), width - w)
                return slice(top, top + h), slice(left, left + w)
        top = int(rng.integers(height - h + 1))
        left = int(rng.integers(width - w + 1))
        return slice(top, top + h), slice(left, left + w)

    def _set_limits(self, pair: _Pair) -> None:
        """Intensity limits from a subsampled view of at most 8 evenly spaced slices."""
        n = pair.n_slices
        slices = np.unique(np.linspace(0, n - 1, min(n, LIMIT_SLICES)).round().astype(int))
        pair.sample_slices = [int(z) for z in slices]
        dtype = np.dtype(pair.image.dtype)
        if dtype in (np.uint8, np.bool_):
            return
        _, height, width = pair.shape
        budget = LIMIT_PIXELS // len(slices)
        step = max(1, math.ceil(math.sqrt(height * width / budget)))
        every = slice(None, None, step)
        views = []
        for z in pair.sample_slices:
            view = pair.read("image", z, every, every)
            views.append(view.reshape(-1, view.shape[-1] if view.ndim == 3 else 1))
        pair.limits = intensity_range(np.concatenate(views), self.percentiles)


# --------------------------------------------------------------------------- #
# opening and validation
# --------------------------------------------------------------------------- #
def _has_objects(pair: _Pair) -> bool:
    """Whether any slice of ``pair``'s labels holds a nonzero pixel (read slice by slice)."""
    every = slice(None)
    return any(np.any(pair.read("labels", z, every, every)) for z in range(pair.n_slices))


def _describe(source: dict) -> str:
    """A source as the user gave it: its path, napari layer name, or type."""
    if "path" in source:
        return repr(source["path"])
    if "layer" in source:
        return f"layer {source['layer']!r}"
    return f"(a {source['type']})"


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


def _open_source(source, role: str, index: int):
    """An array-like (shape, dtype, numpy indexing) for one image or labels source."""
    if isinstance(source, str | os.PathLike):
        return _open_path(Path(source), role, index), {"path": str(source)}
    if not hasattr(source, "shape") and hasattr(source, "data"):  # a napari layer, duck-typed
        data = source.data
        if getattr(source, "multiscale", False):
            data = data[0]
        kind = type(source).__name__
        return _as_array(data), {"layer": str(getattr(source, "name", kind)), "type": kind}
    return _as_array(source), {"type": type(source).__name__}


def _as_array(data):
    if all(hasattr(data, a) for a in ("shape", "dtype", "__getitem__")):
        return data  # numpy, dask, zarr, memmap...: read lazily
    return np.asarray(data)


def _open_path(path: Path, role: str, index: int):
    if not path.exists():
        raise FileNotFoundError(f"pair {index}: {role} file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in _TIFF_SUFFIXES:
        import tifffile

        try:
            return tifffile.memmap(path, mode="r")
        except (ValueError, TypeError, OSError):  # compressed, tiled...: not memory-mappable
            return tifffile.imread(path)
    if suffix == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    if suffix in _ZARR_SUFFIXES or path.is_dir():
        return _open_zarr(path, role, index)
    raise ValueError(
        f"pair {index}: cannot read {role} file {str(path)!r}: supported are .tif, .tiff, .npy "
        "and zarr stores (directories or .zarr); or pass an array"
    )


def _open_zarr(path: Path, role: str, index: int):
    try:
        import zarr
    except ImportError:
        raise ImportError(
            f"pair {index}: reading the zarr store {str(path)!r} needs zarr: pip install zarr"
        ) from None
    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return node
    names = sorted(node.array_keys())
    if "0" in names:  # OME-zarr: full resolution
        return node["0"]
    if len(names) == 1:
        return node[names[0]]
    raise ValueError(
        f"pair {index}: the {role} zarr store {str(path)!r} is a group with arrays {names}: "
        "give the path of one array, e.g. store.zarr/name"
    )


def _open_pair(index: int, image, labels, axes: str | None) -> _Pair:
    image, image_source = _open_source(image, "image", index)
    labels, labels_source = _open_source(labels, "labels", index)
    image_dtype, labels_dtype = np.dtype(image.dtype), np.dtype(labels.dtype)
    for role, array in (("image", image), ("labels", labels)):
        if len(array.shape) < 2:
            raise ValueError(
                f"pair {index}: {role} has shape {tuple(array.shape)}; expected a 2D (Y, X) or "
                "3D (Z, Y, X) array"
            )
        if 0 in tuple(array.shape):
            raise ValueError(f"pair {index}: {role} of shape {tuple(array.shape)} is empty")
    if not np.issubdtype(labels_dtype, np.integer):
        hint = (" for a boolean mask use skimage.measure.label(mask)" if labels_dtype == bool
                else " convert with labels.astype(np.uint32) if the values are whole numbers")
        raise ValueError(
            f"pair {index}: labels must be an integer label image, got dtype {labels_dtype};"
            + hint
        )
    if not (np.issubdtype(image_dtype, np.number) or image_dtype == bool) or np.issubdtype(
        image_dtype, np.complexfloating
    ):
        raise ValueError(f"pair {index}: image dtype {image_dtype} is not a real number type")
    axes = _image_axes(index, tuple(image.shape), tuple(labels.shape), axes)
    sizes = dict(zip(axes, image.shape))
    shape = (int(sizes.get("Z", 1)), int(sizes["Y"]), int(sizes["X"]))
    source = {"image": image_source, "labels": labels_source}
    return _Pair(image=image, labels=labels, axes=axes, source=source, shape=shape)


def _image_axes(index: int, image_shape, labels_shape, axes: str | None) -> str:
    """Check (or guess) the image axes; the slice axis is renamed "Z"."""
    mismatch = (
        f"pair {index}: image shape {image_shape} does not match labels shape {labels_shape}: "
        "they must have the same (Z,) Y, X sizes; the image may have one more channel axis of "
        "at most 4 entries"
    )
    if axes is None:
        if len(labels_shape) not in (2, 3):
            raise ValueError(
                f"pair {index}: labels of shape {labels_shape} have {len(labels_shape)} axes; "
                "expected 2 (Y, X) or 3 (Z, Y, X): pass one volume, e.g. labels[t]"
            )
        spatial = "ZYX"[-len(labels_shape):]
        if image_shape == labels_shape:
            return spatial
        if len(image_shape) == len(labels_shape) + 1:
            if image_shape[:-1] == labels_shape and image_shape[-1] <= 4:
                return spatial + "C"
            if image_shape[1:] == labels_shape and image_shape[0] <= 4:
                return "C" + spatial
        raise ValueError(mismatch + " (or pass axes=, e.g. 'ZYXC')")
    given = axes
    axes = axes.upper()
    others = [a for a in axes if a not in "YXC"]
    if (len(axes) != len(image_shape) or axes.count("Y") != 1 or axes.count("X") != 1
            or axes.count("C") > 1 or len(others) > 1 or not axes.isalpha()):
        raise ValueError(
            f"pair {index}: axes {given!r} do not fit an image of shape {image_shape}: give one "
            "letter per axis, Y and X once, at most one C (channels) and one slice axis (Z), "
            "e.g. 'ZYX' or 'YXC'"
        )
    if others:
        axes = axes.replace(others[0], "Z")
    if "C" in axes and image_shape[axes.index("C")] > 4:
        raise ValueError(
            f"pair {index}: the channel axis of image shape {image_shape} (axes {given!r}) has "
            f"{image_shape[axes.index('C')]} entries; at most 4 are supported"
        )
    expected = tuple(s for a, s in zip(axes, image_shape) if a != "C")
    if expected != labels_shape:
        raise ValueError(mismatch + f" with image axes {given!r}")
    return axes
