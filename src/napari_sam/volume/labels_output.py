"""Label volumes written by the stack runs (:func:`~napari_sam.volume.stack.segment_stack`,
:func:`~napari_sam.volume.tracking.track_stack`): an OME-Zarr label image by default, with the
levels of the OME-Zarr image it belongs to, or a plain zarr array.

Both runs write one plane at a time; an OME-Zarr output gets the lower levels of each plane
right after it (:func:`~napari_sam.volume.ome_zarr.write_levels`) and its objects' properties
once the labels are whole (:func:`object_properties`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from napari_sam.volume.io import Volume, open_volume
from napari_sam.volume.ome_zarr import (
    ImagePyramid,
    create_labels,
    labels_location,
    level_paths,
    open_labels,
    read_image_pyramid,
    register_labels,
    write_levels,
    write_properties,
)

FORMATS = ("ome-zarr", "zarr")  # an OME-Zarr label image, or a plain zarr array
LABELS_NAME = "napari-sam"  # the labels' name in an OME-Zarr image's labels group


def check_format(output_format: str) -> None:
    """Refuse an ``output_format`` that is not one of :data:`FORMATS`."""
    if output_format not in FORMATS:
        raise ValueError(f"output_format {output_format!r} is not one of {FORMATS}: "
                         "'ome-zarr' for an OME-Zarr label image, 'zarr' for a plain array")


def default_output(source, name: str = LABELS_NAME) -> Path:
    """Where a stack run writes the labels of ``source`` when no output is given: the labels
    ``name`` of an OME-Zarr image (:func:`~napari_sam.volume.ome_zarr.labels_location`).

    Raises
    ------
    ValueError
        ``source`` is not an OME-Zarr image whose levels the labels can share.
    """
    volume = source if isinstance(source, Volume) else open_volume(source)
    if source_pyramid(volume) is None:
        raise ValueError(f"give an output for the labels of {volume.source}: only the labels "
                         "of an OME-Zarr image (one plane axis) go into the image by default")
    return labels_location(volume.path, name)


def source_pyramid(volume: Volume) -> ImagePyramid | None:
    """The levels of the OME-Zarr image ``volume`` is level 0 of, when labels of its planes
    (without channels) fit them; else None."""
    pyramid = read_image_pyramid(volume.path) if volume.path else None
    if pyramid is None:
        return None
    levels = pyramid.without_channel()
    fits = (levels.shapes[0] == (*volume.planes, *volume.plane_shape)
            and levels.axis_names == volume.plane_axes + "yx")
    return pyramid if fits else None


def create_volume_labels(path: str | os.PathLike, volume: Volume, *, name: str,
                         register: bool = False):
    """An empty OME-Zarr label image of ``volume``'s planes at ``path``, one chunk per plane:
    with the levels of the OME-Zarr image ``volume`` comes from, else its own, scaled by its
    voxel size. See :func:`~napari_sam.volume.ome_zarr.create_labels`."""
    axes = volume.plane_axes + "yx"
    size = None
    if volume.voxel_size is not None:
        by_axis = dict(zip([a for a in volume.axes if a in "zyx"], volume.voxel_size))
        size = [by_axis[a] for a in axes if a in "zyx"]
    shape = (*volume.planes, *volume.plane_shape)
    return create_labels(path, shape=shape, chunks=(1,) * len(volume.planes) + volume.plane_shape,
                         pyramid=source_pyramid(volume), axes=axes, voxel_size=size, name=name,
                         register=register)


def object_properties(labels) -> list[dict]:
    """Each object's ``"label-value"``, ``"area"`` (voxels) and, with planes, the ``"plane"``
    of its largest cross-section (the first of equal ones), read plane by plane.

    Parameters
    ----------
    labels : (..., Y, X) integer array
        Label planes along the leading axes (zarr, numpy, ...).
    """
    planes = tuple(labels.shape[:-2])
    found = []
    for index in np.ndindex(planes):
        plane = np.asarray(labels[index])
        ids, counts = np.unique(plane[plane > 0], return_counts=True)
        found.append((ids, counts, np.full(ids.size, np.ravel_multi_index(index, planes)
                                           if planes else 0)))
    ids, counts, where = (np.concatenate(parts) for parts in zip(*found))
    values, inverse = np.unique(ids, return_inverse=True)
    area = np.bincount(inverse, weights=counts, minlength=values.size).astype(np.int64)
    # the largest cross-section of each object: the last of its planes sorted by area
    order = np.lexsort((-where, counts, inverse))
    best = where[order[np.r_[np.flatnonzero(np.diff(inverse[order])), inverse.size - 1]]] \
        if inverse.size else where
    properties = []
    for value, size, plane in zip(values.tolist(), area.tolist(), best.tolist()):
        entry = {"label-value": value, "area": size}
        if len(planes) == 1:
            entry["plane"] = plane
        elif planes:
            entry["plane"] = [int(i) for i in np.unravel_index(plane, planes)]
        properties.append(entry)
    return properties


class NewLabels:
    """A new label volume of ``volume``'s planes at ``path``, written plane by plane.

    It is made whole in a hidden sibling folder and renamed into place (replacing what was
    there), so that no half-made output is ever seen at ``path``. An OME-Zarr output gets the
    lower levels of a plane as soon as it is written, and its objects' properties from
    :meth:`finish`.

    Parameters
    ----------
    path : path
        The output; an existing one is replaced (the caller decides whether it may be).
    volume : Volume
        The stack the labels are of (one plane axis).
    output_format : {"ome-zarr", "zarr"}
    """

    def __init__(self, path: str | os.PathLike, volume: Volume, output_format: str) -> None:
        import zarr

        check_format(output_format)
        path = Path(path)
        building = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.incomplete"
        ome = output_format == "ome-zarr"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if ome:
                create_volume_labels(building, volume, name=path.name)
            else:
                zarr.create_array(store=str(building), shape=(*volume.planes, *volume.plane_shape),
                                  chunks=(1,) * len(volume.planes) + volume.plane_shape,
                                  dtype="uint32", fill_value=0)
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            os.rename(building, path)
            if ome:
                register_labels(path)
        except OSError as error:
            shutil.rmtree(building, ignore_errors=True)
            raise OSError(f"cannot write the output {str(path)!r}: {error}") from error
        self.path = path
        self.group = open_labels(path, mode="r+") if ome else None
        self.level0 = (self.group[level_paths(self.group)[0]] if ome
                       else zarr.open_array(str(path), mode="r+"))

    def __getitem__(self, plane: int) -> np.ndarray:
        return np.asarray(self.level0[plane])

    def __setitem__(self, plane: int, labels: np.ndarray) -> None:
        self.level0[plane] = labels
        if self.group is not None:
            write_levels(self.group, plane)

    def finish(self, prompted: dict[int, int], predicted_iou: dict[int, float]) -> None:
        """Write the objects' properties of an OME-Zarr output (:func:`object_properties`),
        each with ``prompted[id]``, the plane it was prompted on, as its ``"plane"``, and its
        ``"predicted_iou"``."""
        if self.group is None:
            return
        properties = object_properties(self.level0)
        for entry in properties:
            value = entry["label-value"]
            entry["plane"] = prompted.get(value, entry.get("plane"))
            if value in predicted_iou:
                entry["predicted_iou"] = round(float(predicted_iou[value]), 4)
        write_properties(self.group, properties)
