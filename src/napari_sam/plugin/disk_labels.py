"""Labels layers kept on disk: a uint32 zarr array that napari edits in place, one tile at a time.

A labels layer larger than the in-memory budget (:func:`in_memory_limit`) lives in a zarr group
found again from its image (:func:`labels_location`), so that reopening the image in a new viewer
finds the work. No Qt here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import platformdirs
import zarr

from napari_sam.plugin.session import ImageSource, LayerError

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


def labels_location(image_layer, source: ImageSource) -> Path:
    """The zarr group that holds the on-disk labels of an image layer.

    Beside the image's file, ``<file>.napari-sam-labels.zarr``, when napari read the layer from
    a file in a writable folder; else ``<folder>/<fingerprint>.zarr``, where the folder is
    ``NAPARI_SAM_LABELS_DIR`` or ``labels`` in the user cache dir, and the fingerprint is the
    image's content (:meth:`~napari_sam.volume.io.Volume.fingerprint`), so that the same data
    finds its labels wherever it comes from.
    """
    file = getattr(image_layer.source, "path", None)
    if file is not None and os.access(Path(file).parent, os.W_OK):
        return Path(f"{file}{SUFFIX}")
    folder = os.environ.get(FOLDER_VARIABLE) or Path(
        platformdirs.user_cache_dir("napari-sam")) / "labels"
    return Path(folder) / f"{source.volume.fingerprint()}.zarr"


class DiskLabels:
    """A uint32 label volume in a zarr array, as the data of a napari labels layer.

    Reads and writes go to the array's chunks (napari reads the shown slice, a brush stroke or
    a mask writes the tiles it touches). Every write first raises the largest id recorded in
    the array's attributes when it brings a larger one, so that :attr:`max_label` is right
    (or higher, after an undo) without reading the volume, even after a crash.

    Parameters
    ----------
    array : zarr.Array
        Unsigned integer labels, opened for writing.
    path : path
        Where the array is stored, for people.
    """

    def __init__(self, array: zarr.Array, path: str | os.PathLike) -> None:
        self.array, self.path = array, Path(path)
        recorded = array.attrs.get(_ATTRS, {}).get("max_label")
        self._max = int(recorded) if recorded is not None else largest_label(array)

    @classmethod
    def open(cls, group: str | os.PathLike, name: str, shape: tuple[int, ...],
             image: str) -> tuple[DiskLabels, bool]:
        """The labels ``name`` in the zarr group at ``group``, made empty if missing.

        Parameters
        ----------
        shape : tuple of int
            The image's planes and ``(Y, X)``; chunks are one plane deep and :data:`TILE`
            pixels wide.
        image : str
            What the labels are of (a path or a layer name), recorded in the group.

        Returns
        -------
        DiskLabels, bool
            The labels and whether they existed before.

        Raises
        ------
        LayerError
            Labels of that name exist with another shape, or are not integers.
        """
        root = zarr.open_group(group, mode="a")
        key = name.replace("/", "_")
        if key in root:
            array = root[key]
            if tuple(array.shape) != tuple(shape) or np.dtype(array.dtype).kind not in "ui":
                raise LayerError(
                    f"the labels {key!r} in {group} have shape {tuple(array.shape)} and type "
                    f"{array.dtype}, the image needs {tuple(shape)} integers: move or delete "
                    f"that folder (or set {FOLDER_VARIABLE}) and try again")
            return cls(array, Path(group) / key), True
        root.attrs[_ATTRS] = {"image": image}
        chunks = (1,) * (len(shape) - 2) + tuple(min(TILE, n) for n in shape[-2:])
        array = root.create_array(key, shape=shape, dtype="uint32", chunks=chunks, fill_value=0,
                                  attributes={_ATTRS: {"max_label": 0}})
        return cls(array, Path(group) / key), False

    @staticmethod
    def exists(group: str | os.PathLike, name: str) -> bool:
        """Whether the zarr group at ``group`` holds labels ``name``."""
        return (Path(group) / name.replace("/", "_") / "zarr.json").is_file()

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
        if largest > self._max:
            self.array.attrs[_ATTRS] = {"max_label": largest}
            self._max = largest
        self.array[key] = value

    def __repr__(self) -> str:
        return f"DiskLabels('{self.path}', shape={self.shape}, chunks={self.chunks})"


def largest_label(data) -> int:
    """The largest value of a lazy labels array (zarr, dask, ...), one chunk at a time."""
    import dask.array as da

    return int(da.from_array(data, chunks=getattr(data, "chunks", "auto")).max().compute())
