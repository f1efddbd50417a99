"""Open microscopy volumes lazily (zarr, OME-zarr, tiff, numpy, dask), read them plane by plane.

Nothing here loads a whole volume: :func:`open_volume` reads metadata only, and
:meth:`Volume.plane` reads the chunks (or file pages) of one 2D plane.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import dask.array as da
import numpy as np
import tifffile
import zarr
from zarr.storage import LocalStore

from napari_sam.engine.image import (
    DEFAULT_PERCENTILES,
    intensity_range,
    rescale_to_uint8,
    to_rgb_uint8,
)

AXES = "tczyx"
_SUPPORTED = (
    "supported: a zarr store (a directory, zarr v2 or v3, plain or OME-zarr), a tiff file "
    "(tiff, BigTIFF, OME-TIFF, ImageJ), a .npy file, a numpy, dask or zarr array, or an "
    "array-like with shape, dtype and numpy indexing"
)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# tifffile's axis codes; 'S' (samples, e.g. RGB) is a channel axis. Its other codes ('Q' unknown,
# 'I' image sequence, ...) say nothing usable, so a series with them falls back to guessing.
_TIFF_AXES = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}
_OME_AXES = {letter: letter for letter in AXES}
# Micrometres per unit, by the names NGFF, OME and ImageJ use (lower case); ImageJ may write µm
# escaped, which tifffile keeps as it is. Sizes in other units stay as they are: ratios still hold.
_MICROMETRES = {
    **dict.fromkeys(("micrometer", "micrometre", "micron", "µm", "μm", "um", "\\u00b5m"), 1.0),
    **dict.fromkeys(("nanometer", "nanometre", "nm"), 1e-3),
    **dict.fromkeys(("millimeter", "millimetre", "mm"), 1e3),
    **dict.fromkeys(("centimeter", "centimetre", "cm"), 1e4),
    **dict.fromkeys(("meter", "metre", "m"), 1e6),
    **dict.fromkeys(("angstrom", "å"), 1e-4),
    "inch": 25400.0,
}
# The TIFF ResolutionUnit codes (4 and 5 are tifffile's extensions); 1 (none) is unknown.
_TIFF_UNITS = {2: "inch", 3: "cm", 4: "mm", 5: "µm"}


@dataclass(frozen=True, repr=False)
class Volume:
    """A lazy array with named axes, read one 2D plane at a time.

    Parameters
    ----------
    data : array-like
        A zarr array, dask array, numpy memmap or array; never loaded whole.
    axes : str
        One letter per axis of ``data`` from ``'tczyx'``, each at most once, with ``y`` and ``x``.
    source : str
        A short description: the path, or ``'numpy array'``.
    path : str, optional
        The file or folder the data is read from, when there is one.
    voxel_size : tuple of float, optional
        The physical size of a voxel (micrometres when the file's unit is known), one positive
        number per axis among ``z``, ``y``, ``x``, in the order of ``axes``: ``(z, y, x)`` for
        ``'tczyx'``, ``(y, x)`` for ``'yx'``. None when unknown.

    Examples
    --------
    >>> volume = Volume(np.zeros((5, 32, 48), np.uint16), "zyx")
    >>> volume.planes, volume.plane(2).shape
    ((5,), (32, 48))
    """

    data: Any
    axes: str
    source: str = "array"
    path: str | None = None
    voxel_size: tuple[float, ...] | None = None

    def __post_init__(self):
        check_axes(self.axes, self.data.shape)
        if 0 in self.data.shape:
            raise ValueError(f"{self.source} of shape {self.data.shape} is empty")
        if self.voxel_size is not None:
            # Stored as a tuple of floats, so that a list or numpy values compare and hash alike.
            object.__setattr__(self, "voxel_size", _check_voxel_size(self.voxel_size, self.axes))

    def __repr__(self) -> str:
        size = "" if self.voxel_size is None else f", voxel_size={self.voxel_size}"
        return (
            f"Volume({self.source!r}, axes={self.axes!r}, shape={self.shape}, dtype={self.dtype}"
            f"{size})"
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(Y, X)``, the shape of one plane without channels."""
        return self.shape[self.axes.index("y")], self.shape[self.axes.index("x")]

    @property
    def channels(self) -> int | None:
        """The number of channels, or None without a ``c`` axis."""
        return self.shape[self.axes.index("c")] if "c" in self.axes else None

    @property
    def plane_axes(self) -> str:
        """The axes that index planes: those other than ``c``, ``y`` and ``x``, e.g. ``'tz'``."""
        return "".join(a for a in self.axes if a not in "cyx")

    @property
    def planes(self) -> tuple[int, ...]:
        """The shape of the plane axes, e.g. ``(Z,)``, ``(T, Z)`` or ``()`` for a 2D image."""
        return tuple(self.shape[self.axes.index(a)] for a in self.plane_axes)

    @property
    def n_planes(self) -> int:
        return math.prod(self.planes)

    @property
    def anisotropy(self) -> float | None:
        """The z voxel size over the mean of the y and x sizes (4.0 for 2 µm steps between planes
        of 0.5 µm pixels), or None without a ``z`` axis or a :attr:`voxel_size`."""
        if self.voxel_size is None or "z" not in self.axes:
            return None
        size = dict(zip(_spatial_axes(self.axes), self.voxel_size))
        return size["z"] / ((size["y"] + size["x"]) / 2)

    def plane(
        self, index: int | tuple[int, ...] = (), *, rows: slice = slice(None),
        cols: slice = slice(None),
    ) -> np.ndarray:
        """Read one 2D plane, or a window of it.

        Parameters
        ----------
        index : int or tuple of int
            The plane: one position per axis of :attr:`plane_axes` (``()`` for a 2D image), or
            one int that numbers the planes through all plane axes in C order (plane ``t * Z + z``
            of a ``tzyx`` volume). Negative values count from the end.
        rows, cols : slice
            The part of the plane to read, e.g. ``slice(0, 256)`` or ``slice(None, None, 4)``;
            all of it by default.

        Returns
        -------
        (Y, X) or (Y, X, C) ndarray
            A new array (channels last), read from disk for this window only.

        Examples
        --------
        >>> volume = Volume(np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5), "tzyx")
        >>> volume.plane(4, rows=slice(0, 2), cols=slice(1, 3)).tolist()
        [[81, 82], [86, 87]]
        """
        position = iter(self._plane_index(index))
        selection = tuple(
            rows if a == "y" else cols if a == "x" else slice(None) if a == "c" else next(position)
            for a in self.axes
        )
        kept = [a for a in self.axes if a in "cyx"]
        order = [kept.index(a) for a in "yxc" if a in kept]
        # np.array copies, so a view into the caller's array or a file map never leaks out.
        return np.array(np.transpose(self.data[selection], order), order="C")

    def sample_planes(self, max_planes: int = 8) -> np.ndarray:
        """The planes :meth:`sample` reads: the centres of ``max_planes`` equal parts of the
        stack, numbered through all plane axes as in :meth:`plane`.

        Examples
        --------
        >>> Volume(np.zeros((40, 8, 8)), "zyx").sample_planes().tolist()
        [2, 7, 12, 17, 22, 27, 32, 37]
        """
        count = min(self.n_planes, max_planes)
        return ((np.arange(count) + 0.5) * self.n_planes / count).astype(int)

    def sample(self, max_pixels: int = 1_000_000, *, max_planes: int = 8) -> np.ndarray:
        """Voxel values from a few planes spread through the volume, for robust percentiles.

        Parameters
        ----------
        max_pixels : int
            About how many ``(y, x)`` positions to take in all; planes are subsampled on a regular
            grid to stay within it.
        max_planes : int
            How many planes to read, see :meth:`sample_planes`.

        Returns
        -------
        (N,) or (N, C) ndarray
            Values, one column per channel when the volume has channels.
        """
        picked = self.sample_planes(max_planes)
        step = max(1, math.ceil(math.sqrt(math.prod(self.plane_shape) * len(picked) / max_pixels)))
        grid = slice(step // 2, None, step)
        values = np.stack([self.plane(int(i), rows=grid, cols=grid) for i in picked])
        return values.reshape(-1, self.channels) if self.channels else values.reshape(-1)

    def fingerprint(self, sample: np.ndarray | None = None) -> str:
        """A hash of the volume's shape, type, axes and :meth:`sample`: the same data gives the
        same fingerprint wherever it is stored; other data almost surely another.

        Parameters
        ----------
        sample : ndarray, optional
            The result of :meth:`sample` with its defaults, when the caller has it already.
        """
        sample = self.sample() if sample is None else sample
        digest = hashlib.sha256(f"{self.shape} {self.dtype.str} {self.axes}".encode())
        digest.update(np.ascontiguousarray(sample).tobytes())
        return digest.hexdigest()[:32]

    def _plane_index(self, index: int | tuple[int, ...]) -> tuple[int, ...]:
        """``index`` checked against :attr:`planes`, as non-negative ints, one per plane axis."""
        if isinstance(index, (int, np.integer)) and -self.n_planes <= index < self.n_planes:
            return tuple(int(i) for i in np.unravel_index(int(index) % self.n_planes, self.planes))
        index = index if isinstance(index, tuple) else (index,)
        fits = len(index) == len(self.planes) and all(
            isinstance(i, (int, np.integer)) and -n <= i < n for i, n in zip(index, self.planes)
        )
        if not fits:
            raise IndexError(
                f"plane index {index} does not fit planes of shape {self.planes} (axes "
                f"{self.plane_axes!r}) of {self.source}: give {len(self.planes)} integer(s), "
                f"each within its axis, or one plane number below {self.n_planes}"
            )
        return tuple(int(i) % n for i, n in zip(index, self.planes))


def open_volume(
    source: Any, axes: str | None = None, voxel_size: tuple[float, ...] | None = None
) -> Volume:
    """Open a volume without reading its voxels.

    Parameters
    ----------
    source : path or array-like
        A zarr store (v2 or v3 format): an array; an OME-zarr group (its level 0, with the axes
        of its ``multiscales`` metadata, NGFF 0.4 or 0.5); or a group holding exactly one array.
        A tiff file (series 0, level 0): memory mapped when its data is contiguous, else read
        through tifffile's zarr store; axes from its OME, ImageJ or tifffile metadata.
        Or an array in memory or a lazy array: numpy, dask, zarr, or anything with ``shape``,
        ``dtype`` and numpy indexing (an h5py dataset, for example), read one plane at a time.
    axes : str, optional
        One letter per dimension from ``'tczyx'`` (any case), overriding metadata and guess.
        Without it and without axis metadata the axes are guessed, see :func:`guess_axes`.
    voxel_size : tuple of float, optional
        One size per axis among ``z``, ``y``, ``x`` (see :class:`Volume`), overriding metadata.
        Without it the size is read from the file, in micrometres when its unit is known:
        OME-zarr ``scale`` transformations of level 0 with the axes' units; OME-TIFF
        ``PhysicalSizeX/Y/Z``; an ImageJ tiff's resolution tags, ``spacing`` and ``unit``; a
        plain tiff's resolution tags (y and x only). All or nothing: a size that lacks one of
        the volume's z, y, x axes (a plain tiff stack's z step, say) gives None, as do arrays.

    Returns
    -------
    Volume

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        Not a supported format, a zarr group that is not an image, fewer than 2 dimensions,
        ``axes`` that do not fit the array, or a ``voxel_size`` that does not fit the axes.

    Examples
    --------
    >>> open_volume(np.zeros((10, 2, 64, 64), np.uint16))
    Volume('numpy array', axes='zcyx', shape=(10, 2, 64, 64), dtype=uint16)
    """
    path, sizes = None, None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        data, found, description, sizes = _open_path(path, axes)
    elif isinstance(source, zarr.Array):
        data, found, description = source, _zarr_axes(source), f"zarr array {source.store_path}"
        if isinstance(source.store, LocalStore):
            path = Path(source.store.root) / source.path
    elif isinstance(source, (np.ndarray, da.Array)):
        data, found = source, None
        description = "dask array" if isinstance(source, da.Array) else "numpy array"
    elif all(hasattr(source, name) for name in ("shape", "dtype", "__getitem__")):
        data, found, description = source, None, f"{type(source).__name__} array"
    else:
        raise TypeError(f"cannot open a {type(source).__name__}; {_SUPPORTED}")
    if axes is None:
        axes = found or guess_axes(data.shape)
    axes = axes.lower()
    if voxel_size is None and sizes is not None:
        # by position, so that the caller's axes pick the sizes of the dimensions they name
        by_axis = dict(zip(axes, sizes))
        picked = tuple(by_axis.get(a) for a in _spatial_axes(axes))
        voxel_size = None if None in picked else picked
    return Volume(data, axes, description, None if path is None else str(path), voxel_size)


def guess_axes(shape: tuple[int, ...]) -> str:
    """Guess the axes of an array from its shape alone.

    2D is ``'yx'``; 3D is ``'yxc'`` (RGB/RGBA) when the last axis has 3 or 4 entries, else
    ``'zyx'``; 4D is ``'zyxc'`` (an RGB/RGBA z-stack) when the last axis has 3 or 4 entries and
    the middle two more than 4, ``'zcyx'`` when axis 1 has at most 4 entries and axis 0 more,
    else ``'tzyx'``; 5D is ``'tczyx'``.

    Examples
    --------
    >>> guess_axes((512, 512, 3)), guess_axes((30, 2, 512, 512)), guess_axes((10, 64, 64, 3))
    ('yxc', 'zcyx', 'zyxc')
    """
    _check_ndim(shape)
    if len(shape) == 3:
        return "yxc" if shape[-1] in (3, 4) else "zyx"
    if len(shape) == 4:
        if shape[-1] in (3, 4) and min(shape[1:3]) > 4:
            return "zyxc"
        return "zcyx" if shape[1] <= 4 < shape[0] else "tzyx"
    return {2: "yx", 5: "tczyx"}[len(shape)]


def check_axes(axes: str, shape: tuple[int, ...]) -> None:
    """Raise ValueError unless ``axes`` names each dimension of ``shape`` by a letter of 'tczyx'."""
    _check_ndim(shape)
    shape = tuple(shape)
    unknown = sorted(set(axes) - set(AXES))
    repeated = sorted({a for a in axes if axes.count(a) > 1})
    if len(axes) != len(shape):
        problem = (
            f"has {len(axes)} letters but the array has {len(shape)} dimensions (shape {shape})"
        )
    elif unknown:
        problem = f"has letters {unknown} outside 'tczyx' (array shape {shape})"
    elif repeated:
        problem = f"repeats {repeated} (array shape {shape})"
    elif not {"y", "x"} <= set(axes):
        problem = f"lacks 'y' or 'x' (array shape {shape})"
    else:
        return
    raise ValueError(
        f"axes {axes!r} {problem}; give {len(shape)} letters from 'tczyx', each at most once and "
        f"including 'y' and 'x', e.g. {guess_axes(shape)!r}"
    )


def _spatial_axes(axes: str) -> str:
    """The axes :attr:`Volume.voxel_size` has a size for: those among z, y, x, in order."""
    return "".join(a for a in axes if a in "zyx")


def _check_voxel_size(voxel_size: Any, axes: str) -> tuple[float, ...]:
    """``voxel_size`` as floats, or a ValueError unless it is one positive finite number per
    spatial axis of ``axes``."""
    spatial = _spatial_axes(axes)
    try:
        sizes = tuple(voxel_size)
    except TypeError:
        sizes = None
    if sizes is None or len(sizes) != len(spatial):
        count = "is not a sequence" if sizes is None else f"has {len(sizes)} value(s)"
        problem = f"{count}, but axes {axes!r} have {len(spatial)} spatial axes ({spatial})"
    elif not all(
        isinstance(s, numbers.Real) and not isinstance(s, bool) and math.isfinite(s) and s > 0
        for s in sizes
    ):
        problem = "holds values that are not positive finite numbers"
    else:
        return tuple(float(s) for s in sizes)
    example = tuple(2.0 if a == "z" else 0.5 for a in spatial)
    raise ValueError(
        f"voxel_size {voxel_size!r} {problem}; give one positive size (in micrometres) per axis "
        f"among {', '.join(spatial)}, in that order, e.g. {example}, or None if unknown"
    )


def intensity_limits(
    volume: Volume,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    *,
    sample: np.ndarray | None = None,
) -> np.ndarray:
    """Robust intensity limits of a whole volume, from :meth:`Volume.sample`.

    Parameters
    ----------
    volume : Volume
    percentiles : (low, high)
        Percentiles of the sampled values mapped to 0 and 255.
    sample : ndarray, optional
        ``volume.sample()``, when the caller has read it already.

    Returns
    -------
    (2,) or (2, C) ndarray
        Low and high limit (per channel when the volume has channels), for
        :func:`napari_sam.engine.image.to_rgb_uint8` so that all planes are scaled alike.
    """
    sample = volume.sample() if sample is None else sample
    limits = intensity_range(sample.reshape(-1, volume.channels or 1), percentiles)
    return limits if volume.channels else limits[:, 0]


def volume_limits(volume: Volume, sample: np.ndarray | None = None,
                  percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> list | None:
    """The intensity limits with which every plane of ``volume`` becomes 8-bit RGB, for
    inference and training alike: None for uint8, which SAM takes as it is, else
    :func:`intensity_limits` (from ``sample``, :meth:`Volume.sample`, when given)."""
    if volume.dtype == np.uint8:
        return None
    return np.asarray(intensity_limits(volume, percentiles, sample=sample)).tolist()


def plane_rgb(volume: Volume, plane: int, limits) -> np.ndarray:
    """The 8-bit RGB image of one plane (numbered through all plane axes), with the volume's
    limits (:func:`volume_limits`)."""
    return limited_rgb(volume.plane(plane), limits)


def limited_rgb(image: np.ndarray, limits) -> np.ndarray:
    """A ``(h, w[, c])`` plane, or a window of one, as 8-bit RGB with its volume's limits
    (:func:`volume_limits`; None: uint8 used as it is)."""
    if limits is None:
        return to_rgb_uint8(image)
    return to_rgb_uint8(rescale_to_uint8(image if image.ndim == 3 else image[..., None], limits))


def _check_ndim(shape: tuple[int, ...]) -> None:
    if len(shape) < 2:
        raise ValueError(
            f"an image needs at least 2 dimensions (y, x), got an array of shape {tuple(shape)}"
        )
    if len(shape) > 5:
        raise ValueError(
            f"an array of shape {tuple(shape)} has {len(shape)} dimensions, at most 5 ('tczyx') "
            "are supported: select part of it first, e.g. array[0]"
        )


def _open_path(
    path: Path, axes: str | None
) -> tuple[Any, str | None, str, list[float | None] | None]:
    """The lazy array at ``path``, its axes from metadata (or None), a description and the
    voxel size per dimension from metadata (None where unknown, or None for all).

    ``axes`` is the caller's override, which excuses OME-zarr axes that do not map to 'tczyx'.
    """
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; give the path of a zarr store or a tiff file"
        )
    if path.is_dir():
        if not any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup")):
            tiffs = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
            hint = (f"; it holds {len(tiffs)} tiff file(s): open one of them, e.g. "
                    f"{path / tiffs[0]}, or stack them into one file first" if tiffs else "")
            raise ValueError(
                f"{path} is a directory but not a zarr store (no zarr.json, .zarray or .zgroup)"
                f"{hint}; {_SUPPORTED}"
            )
        node = _open_zarr(path)
        if isinstance(node, zarr.Group):
            data, found, sizes = _image_in_group(node, path, axes)
            return data, found, str(path), sizes
        return node, _zarr_axes(node), str(path), None
    with path.open("rb") as file:
        magic = file.read(6)
    if magic == b"\x93NUMPY":  # a .npy file: memory-mapped, read a plane at a time
        return np.load(path, mmap_mode="r"), None, str(path), None
    if magic[:4] not in _TIFF_MAGIC:
        raise ValueError(f"{path} is neither a zarr store nor a tiff file; {_SUPPORTED}")
    data, found, sizes = _open_tiff(path)
    return data, found, str(path), sizes


def _image_in_group(
    group: zarr.Group, path: Path, axes: str | None
) -> tuple[zarr.Array, str | None, list[float | None] | None]:
    """Level 0 of an OME-zarr group with its axes and voxel size per dimension, or the only
    array of a plain group."""
    attrs = group.attrs.asdict()
    multiscales = attrs.get("ome", attrs).get("multiscales")  # NGFF 0.5 nests under "ome"
    if multiscales:
        image = multiscales[0]
        names = [a["name"] if isinstance(a, dict) else a for a in image.get("axes", [])]
        found = _known_axes([n.lower() for n in names], _OME_AXES)
        if names and found is None and axes is None:
            raise ValueError(
                f"the OME-zarr axes {names} of {path} do not map to 'tczyx'; pass axes= with one "
                "of t, c, z, y, x for each"
            )
        dataset = str(image["datasets"][0]["path"])
        if not (path / dataset).is_dir():
            raise FileNotFoundError(
                f"the OME-zarr {path} names {dataset!r} as its full-resolution dataset, but "
                f"{path / dataset} does not exist: the image is incomplete (copied in part?); "
                "copy it again, or open the dataset that is there"
            )
        level = _open_zarr(path / dataset)
        return level, found, _ngff_sizes(image, level.ndim)
    arrays, groups = sorted(group.array_keys()), sorted(group.group_keys())
    if len(arrays) == 1:
        return group[arrays[0]], _zarr_axes(group[arrays[0]]), None
    contents = f"arrays {arrays} and groups {groups}" if arrays or groups else "nothing"
    example = f", e.g. {path / (arrays or groups)[0]}" if arrays or groups else ""
    raise ValueError(
        f"{path} is a zarr group without OME-zarr 'multiscales' metadata and holds {contents}, "
        f"not exactly one array; open the array (or image group) you mean{example}"
    )


def _ngff_sizes(image: dict, ndim: int) -> list[float | None] | None:
    """Level 0's voxel size per dimension: the product of its dataset's ``scale`` and the
    multiscale's (NGFF applies both), in micrometres by the axes' units; None without a scale."""
    scale = None
    for transforms in (image["datasets"][0].get("coordinateTransformations"),
                       image.get("coordinateTransformations")):
        for transform in transforms or ():
            values = transform.get("scale") if transform.get("type") == "scale" else None
            if not isinstance(values, list) or len(values) != ndim:
                continue  # a translation, or a scale stored in a file ("path"): not a size
            try:
                scale = [float(v) * s for v, s in zip(values, scale or [1.0] * ndim)]
            except (TypeError, ValueError):  # not numbers: the metadata says nothing usable
                return None
    if scale is None:
        return None
    units = [a.get("unit") if isinstance(a, dict) else None for a in image.get("axes", [])]
    return [_micrometres(s, u) for s, u in zip(scale, units + [None] * ndim)]


def open_zarr_array(path: str | os.PathLike, mode: str = "r") -> zarr.Array:
    """``zarr.open_array(path, mode=mode)``, or level 0 of an OME-Zarr image or label image;
    an error that names a damaged metadata file.

    Raises
    ------
    ValueError
        The metadata is not valid JSON or not zarr metadata, or ``path`` holds a group without
        OME-Zarr ``multiscales``.
    """
    node = _open_zarr(Path(path), mode)
    if isinstance(node, zarr.Group):
        attrs = node.attrs.asdict()
        multiscales = attrs.get("ome", attrs).get("multiscales")  # NGFF 0.5 nests under "ome"
        if not multiscales:
            raise ValueError(f"{path} is a zarr group, not an array")
        node = node[str(multiscales[0]["datasets"][0]["path"])]
    return node


def _open_zarr(path: Path, mode: str = "r") -> zarr.Array | zarr.Group:
    """The zarr array or group at ``path``; damaged metadata is reported with its file."""
    try:
        return zarr.open(path, mode=mode)
    except (ValueError, KeyError, TypeError) as error:  # json.JSONDecodeError is a ValueError
        for file in (path / name for name in ("zarr.json", ".zarray", ".zgroup", ".zattrs")):
            if not file.is_file():
                continue
            try:
                json.loads(file.read_bytes())
            except ValueError as bad:  # also UnicodeDecodeError
                raise ValueError(
                    f"{file} is not valid JSON ({bad}): the zarr store {path} is damaged; "
                    "restore that file from a copy, or write the store again"
                ) from error
        raise ValueError(
            f"the zarr metadata of {path} is not valid ({type(error).__name__}: {error}); "
            "restore it from a copy, or write the store again"
        ) from error


def _zarr_axes(array: zarr.Array) -> str | None:
    """Axes from zarr v3 ``dimension_names`` when they are all letters of ``'tczyx'``."""
    names = getattr(array.metadata, "dimension_names", None) or ()
    return _known_axes([str(n).lower() for n in names], _OME_AXES)


def _open_tiff(path: Path) -> tuple[Any, str | None, list[float | None]]:
    """Series 0 of a tiff file, memory mapped or as a zarr array, its axes and its voxel size
    per dimension."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        names, contiguous = series.axes, series.dataoffset is not None
        # the first source that knows any size; sources are not mixed, their units may differ
        found = _ome_tiff_sizes(tif) or _imagej_sizes(tif) or _resolution_sizes(tif.pages[0])
    if contiguous:
        data = tifffile.memmap(path, series=0, mode="r")
    else:  # compressed or scattered: tifffile's zarr store decodes only the pages asked for
        data = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
    return data, _known_axes(list(names), _TIFF_AXES), [found.get(a.lower()) for a in names]


def _ome_tiff_sizes(tif: tifffile.TiffFile) -> dict[str, float]:
    """The known ``PhysicalSizeX/Y/Z`` of the first OME ``Pixels`` element, by axis letter."""
    if not tif.is_ome:
        return {}
    try:
        root = ElementTree.fromstring(tif.ome_metadata)
    except ElementTree.ParseError:
        return {}
    # the namespace changes with the OME schema version, so match the local name only
    pixels = next((e for e in root.iter() if e.tag.rpartition("}")[2] == "Pixels"), None)
    if pixels is None:
        return {}
    sizes = {
        a: _micrometres(pixels.get(f"PhysicalSize{a.upper()}"),
                        pixels.get(f"PhysicalSize{a.upper()}Unit", "µm"))  # OME's default unit
        for a in "zyx"
    }
    return {a: size for a, size in sizes.items() if size is not None}


def _imagej_sizes(tif: tifffile.TiffFile) -> dict[str, float]:
    """An ImageJ tiff's calibration, by axis letter: y and x from the resolution tags, z the
    ``spacing`` (1 when absent, as ImageJ reads it), all in ``unit``; none when uncalibrated."""
    metadata = tif.imagej_metadata
    if not metadata:
        return {}
    unit = metadata.get("unit")
    sizes = _resolution_sizes(tif.pages[0], unit)
    if not sizes and unit in (None, "pixel") and "spacing" not in metadata:
        return {}  # ImageJ's uncalibrated default
    sizes = sizes or {a: _micrometres(1.0, unit) for a in "yx"}  # ImageJ's default 1 unit
    z = _micrometres(metadata.get("spacing", 1.0), unit)
    return sizes if z is None else {**sizes, "z": z}


def _resolution_sizes(page: tifffile.TiffPage, unit: str | None = None) -> dict[str, float]:
    """y and x pixel sizes from the YResolution and XResolution tags (pixels per unit, as
    rationals), in ``unit`` or else the ResolutionUnit tag's; none when both are absent or at
    tifffile's default 1/1, which say nothing."""
    ratios = {a: page.tags.get(f"{a.upper()}Resolution") for a in "yx"}
    ratios = {a: tag.value for a, tag in ratios.items() if tag is not None}
    if all(num == den for num, den in ratios.values()):
        return {}
    if unit is None:
        code = page.tags.get("ResolutionUnit")
        unit = _TIFF_UNITS.get(int(code.value)) if code is not None else None
    sizes = {a: _micrometres(den / num if num else None, unit) for a, (num, den) in ratios.items()}
    return {a: size for a, size in sizes.items() if size is not None}


def _micrometres(value: Any, unit: str | None) -> float | None:
    """``value`` in ``unit`` as micrometres (as it is when the unit is unknown), or None unless
    it is a positive finite number."""
    try:
        size = float(value) * _MICROMETRES.get(str(unit).strip().lower(), 1.0)
    except (TypeError, ValueError):
        return None
    return size if math.isfinite(size) and size > 0 else None


def _known_axes(names: list[str], letters: dict[str, str]) -> str | None:
    """``names`` as a string of distinct ``'tczyx'`` letters with y and x, else None."""
    axes = "".join(letters.get(n, "?") for n in names)
    if "?" in axes or len(set(axes)) < len(axes) or not {"y", "x"} <= set(axes):
        return None
    return axes
