"""Labels layers kept on disk: a uint32 zarr array that napari edits in place, one tile at a time.

A labels layer larger than the in-memory budget (:func:`in_memory_limit`) lives in a zarr group
found again from its image (:func:`labels_location`), so that reopening the image in a new viewer
finds the work. No Qt here.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from pathlib import Path

import numpy as np
import platformdirs
import zarr

from napari_sam.plugin.session import ImageSource, LayerError
from napari_sam.volume import ome_zarr
from napari_sam.volume.ome_zarr import read_image_pyramid

BUDGET_VARIABLE = "NAPARI_SAM_LABELS_IN_MEMORY_MB"
FOLDER_VARIABLE = "NAPARI_SAM_LABELS_DIR"
DEFAULT_BUDGET_MB = 512
#: Rows and columns of a chunk: a click rewrites the few 1 MB tiles under the object, not a plane.
TILE = 512
SUFFIX = ".napari-sam-labels.zarr"
_ATTRS = "napari_sam"


def in_memory_limit() -> int:
    """Bytes up to which a new labels layer is a numpy array; larger ones go to disk.

    Read from the environment variable ``NAPARI_SAM_LABELS_IN_MEMORY_MB`` (megabytes, default
    512) each time a layer is made.

    Raises
    ------
    LayerError
        The variable is not a number of megabytes.
    """
    text = os.environ.get(BUDGET_VARIABLE, str(DEFAULT_BUDGET_MB))
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:
        raise LayerError(f"{BUDGET_VARIABLE}={text!r} is not a number of megabytes: set it to "
                         f"e.g. {DEFAULT_BUDGET_MB}, or 0 to keep every new labels layer on disk")
    return int(megabytes * 2**20)


def labels_location(image_layer, source: ImageSource, name: str) -> Path:
    """Where the on-disk labels ``name`` of an image layer are kept.

    - An OME-Zarr image read by napari: its label image ``<image>/labels/<name>`` (or a
      standalone one beside a read-only image), see
      :func:`~napari_sam.volume.ome_zarr.labels_location`.
    - Another file in a writable folder: ``<file>.napari-sam-labels.zarr/<name>``.
    - Else (an array, a read-only folder): ``<folder>/<fingerprint>.zarr/<name>``, where the
      folder is ``NAPARI_SAM_LABELS_DIR`` or ``labels`` in the user cache dir and the
      fingerprint is the image's content (:meth:`~napari_sam.volume.io.Volume.fingerprint`),
      so that the same data finds its labels wherever it comes from.

    ``name`` is used lower case, with a dash for anything but letters and digits.
    """
    key = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "labels"
    file = getattr(image_layer.source, "path", None)
    if file is not None and read_image_pyramid(file) is not None:
        return ome_zarr.labels_location(file, key)
    if file is not None and os.access(Path(file).parent, os.W_OK):
        return Path(f"{file}{SUFFIX}") / key
    folder = os.environ.get(FOLDER_VARIABLE) or Path(
        platformdirs.user_cache_dir("napari-sam")) / "labels"
    return Path(folder) / f"{source.volume.fingerprint()}.zarr" / key


def open_disk_labels(image_layer, source: ImageSource, name: str) -> tuple[DiskLabels, bool]:
    """The on-disk labels ``name`` of an image layer (:func:`labels_location`), made empty
    when missing; for an OME-Zarr image, an OME-Zarr label image with the image's levels.

    Returns
    -------
    DiskLabels, bool
        The labels and whether they existed before.

    Raises
    ------
    LayerError
        Labels there do not fit the image (shape, type), are not a label image, or cannot be
        written.
    """
    location = labels_location(image_layer, source, name)
    shape = source.labels_shape
    chunks = (1,) * (len(shape) - 2) + tuple(min(TILE, n) for n in shape[-2:])
    file = getattr(image_layer.source, "path", None)
    pyramid = None if file is None else read_image_pyramid(file)
    existed = location.exists()
    try:
        if pyramid is not None:
            group = (ome_zarr.open_labels(location, mode="r+") if existed else
                     ome_zarr.create_labels(location, shape=shape, chunks=chunks,
                                            pyramid=pyramid.without_channel()))
            paths = ome_zarr.level_paths(group)
            array = group[paths[0]]
            if not existed:
                array.attrs[_ATTRS] = {"max_label": 0}
            levels = group if len(paths) > 1 else None
        elif existed:
            array, levels = zarr.open_array(location, mode="r+"), None
        else:
            root = zarr.open_group(location.parent, mode="a")
            root.attrs[_ATTRS] = {"image": str(file or f"layer {image_layer.name!r}")}
            array = root.create_array(location.name, shape=shape, dtype="uint32", chunks=chunks,
                                      fill_value=0, attributes={_ATTRS: {"max_label": 0}})
            levels = None
    except (ValueError, TypeError, OSError) as error:  # zarr's errors are ValueErrors
        raise LayerError(f"cannot keep labels in {location} ({error}): move or delete what is "
                         f"there, or set {FOLDER_VARIABLE} to a writable folder") from error
    if tuple(array.shape) != shape or np.dtype(array.dtype).kind not in "ui":
        raise LayerError(
            f"the labels in {location} have shape {tuple(array.shape)} and type {array.dtype}, "
            f"the image needs {shape} integers: move or delete that folder and try again")
    return DiskLabels(array, location, levels=levels), existed


class DiskLabels:
    """A label volume in a zarr array, as the data of a napari labels layer.

    Reads and writes go to the array's chunks (napari reads the shown slice, a brush stroke or
    a mask writes the tiles it touches). Every write first raises the largest id recorded in
    the array's attributes when it brings a larger one, so that :attr:`max_label` is right
    (or higher, after an undo) without reading the volume, even after a crash. With
    ``levels``, :meth:`write_levels` brings the lower levels of an OME-Zarr label image in step
    with the planes written; the planes whose levels are behind are recorded in the
    attributes too (before the plane is written, until its levels are), so labels reopened
    after a crash catch up.

    Parameters
    ----------
    array : zarr.Array
        Unsigned integer labels, opened for writing.
    path : path
        Where they are stored, for people.
    levels : zarr.Group, optional
        The OME-Zarr label image whose level 0 is ``array``
        (:func:`~napari_sam.volume.ome_zarr.write_levels`).
    """

    def __init__(self, array: zarr.Array, path: str | os.PathLike, *,
                 levels: zarr.Group | None = None) -> None:
        self.array, self.path, self.levels = array, Path(path), levels
        attributes = array.attrs.get(_ATTRS, {})
        # planes whose lower levels are not written, and the one being written
        self._stale = {tuple(plane) for plane in attributes.get("levels_behind", [])
                       if levels is not None}
        self._writing: tuple[int, ...] | None = None
        self._lock = threading.Lock()
        recorded = attributes.get("max_label")
        if recorded is None:  # labels made by another program: read them once, and record
            self._max = int(largest_label(array))
            self._record()
        else:
            self._max = int(recorded)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks)

    @property
    def max_label(self) -> int:
        """The largest id ever written (0 when empty)."""
        return self._max

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        return self.array[key]

    def __setitem__(self, key, value) -> None:
        values = np.asarray(value)
        largest = int(values.max()) if values.size else 0
        planes = set(self._planes(key)) if self.levels is not None else set()
        with self._lock:
            if largest > self._max or not planes <= self._stale:
                self._max = max(self._max, largest)
                self._stale |= planes
                self._record()
        self.array[key] = value

    @property
    def levels_behind(self) -> bool:
        """Whether planes were written since the lower levels were."""
        return bool(self._stale)

    def write_levels(self) -> None:
        """Bring the lower levels of an OME-Zarr label image in step with the planes written
        since the last call (planes written meanwhile included); safe in another thread."""
        while True:
            with self._lock:
                if not self._stale:
                    self._record()
                    return
                self._writing = self._stale.pop()
            ome_zarr.write_levels(self.levels, self._writing)
            with self._lock:
                self._writing = None

    def _record(self) -> None:
        """Write the largest id and the planes whose levels are behind into the attributes
        (under the lock)."""
        behind = self._stale | ({self._writing} if self._writing is not None else set())
        self.array.attrs[_ATTRS] = {"max_label": self._max,
                                    "levels_behind": [list(p) for p in sorted(behind)]}

    def _planes(self, key) -> list[tuple[int, ...]]:
        """The planes (indices of the axes before y and x) that a key of ``[]`` reaches: a
        tuple of slices and ints, or of coordinate arrays (napari's two ways of writing)."""
        key = key if isinstance(key, tuple) else (key,)
        lead = [*key, *(slice(None),) * self.ndim][: self.ndim - 2]
        if all(isinstance(k, (slice, int, np.integer)) for k in lead):
            ranges = [np.arange(n)[k].reshape(-1) for k, n in zip(lead, self.shape)]
            return list(itertools.product(*(r.tolist() for r in ranges)))
        coords = np.stack([np.ravel(c) for c in np.broadcast_arrays(*lead)], axis=-1)
        return [tuple(row) for row in np.unique(coords, axis=0).tolist()]

    def __repr__(self) -> str:
        return f"DiskLabels('{self.path}', shape={self.shape}, chunks={self.chunks})"


def largest_label(data) -> int:
    """The largest value of a lazy labels array (zarr, dask, ...), one chunk at a time."""
    import dask.array as da

    return int(da.from_array(data, chunks=getattr(data, "chunks", "auto")).max().compute())
