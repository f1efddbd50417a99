"""OME-Zarr label images: the ``labels/<name>`` group of an OME-Zarr image, or a standalone one.

The layout is OME-NGFF's (0.5 on zarr format 3, with the metadata under ``attributes["ome"]``;
0.4 on zarr format 2, with ``.zattrs``): a label image is a group with ``multiscales`` metadata
over uint32 level arrays, and ``image-label`` metadata (colours and per-object properties).
Inside an image it lives in the image's ``labels`` group, which lists it; its levels are the
image's, without the channel axis. Every level is chunked by plane, so that planes can be
written apart, and :func:`write_levels` keeps the lower levels in step with level 0 one plane
at a time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

__all__ = [
    "ImagePyramid",
    "create_labels",
    "label_colour",
    "labels_location",
    "level_paths",
    "open_labels",
    "read_image_pyramid",
    "register_labels",
    "write_levels",
    "write_properties",
]

VERSIONS = ("0.4", "0.5")
_ZARR_FORMAT = {"0.4": 2, "0.5": 3}
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
# A standalone label volume gets lower levels, each halving y and x, while the larger side of
# the last one exceeds this: a plane of a few hundred pixels is shown whole at once anyway.
_LEVEL_SIDE = 512


@dataclass(frozen=True)
class ImagePyramid:
    """The multiscale levels of an OME-Zarr image (its first ``multiscales`` entry).

    Attributes
    ----------
    path : str
        The image group.
    version : {"0.4", "0.5"}
    axes : tuple of dict
        NGFF axis entries (``name``, ``type``, ``unit``).
    paths : tuple of str
        The level arrays, finest first.
    shapes : tuple of tuple of int
        Their shapes.
    transforms : tuple of tuple of dict
        Each level's ``coordinateTransformations``.
    """

    path: str
    version: str
    axes: tuple[dict, ...]
    paths: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    transforms: tuple[tuple[dict, ...], ...]

    @property
    def axis_names(self) -> str:
        """The axes' names joined, e.g. ``"czyx"``."""
        return "".join(str(a["name"]) for a in self.axes)

    def without_channel(self) -> ImagePyramid:
        """The same levels without the channel axis (label images have none)."""
        keep = [i for i, axis in enumerate(self.axes) if axis.get("type") != "channel"
                and axis["name"] != "c"]
        if len(keep) == len(self.axes):
            return self

        def drop(transform: dict) -> dict:
            return {k: [v[i] for i in keep] if k in ("scale", "translation") else v
                    for k, v in transform.items()}

        return replace(self, axes=tuple(self.axes[i] for i in keep),
                       shapes=tuple(tuple(s[i] for i in keep) for s in self.shapes),
                       transforms=tuple(tuple(drop(t) for t in level) for level in self.transforms))


def read_image_pyramid(path: str | os.PathLike) -> ImagePyramid | None:
    """The levels of the OME-Zarr image at ``path``, or None when it is not one.

    Parameters
    ----------
    path : path
        A folder; an OME-Zarr image group (NGFF 0.4 or 0.5) with ``multiscales`` metadata.

    Returns
    -------
    ImagePyramid or None
        None for anything else: a plain zarr array or group, a file, a missing path, a label
        image (``image-label`` metadata), or an image with a level missing.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        return None
    try:
        group = zarr.open_group(path, mode="r")
    except (ValueError, KeyError, TypeError, FileNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    attributes, version = _ome_attributes(group)
    multiscales = attributes.get("multiscales")
    if not multiscales or "image-label" in attributes:
        return None
    image = multiscales[0]
    version = version or str(image.get("version", "0.4"))
    axes = image.get("axes")
    if not isinstance(axes, list) or not all(isinstance(a, dict) and "name" in a for a in axes):
        return None  # NGFF before 0.4 names no axes
    paths = tuple(str(d["path"]) for d in image["datasets"])
    try:
        shapes = tuple(tuple(group[p].shape) for p in paths)
    except KeyError:  # a level is missing: open_volume names it when it is level 0
        return None
    transforms = tuple(tuple(d.get("coordinateTransformations", ())) for d in image["datasets"])
    return ImagePyramid(path=str(path), version=version if version in VERSIONS else "0.4",
                        axes=tuple(axes), paths=paths, shapes=shapes, transforms=transforms)


def labels_location(image_path: str | os.PathLike, name: str = "napari-sam") -> Path:
    """Where the labels ``name`` of an OME-Zarr image go.

    ``<image>/labels/<name>`` when the image group can be written to; else, for a read-only
    image, a standalone label image beside it: ``<image stem>.<name>.ome.zarr`` (its
    ``image-label`` source names the image), e.g. ``cells.napari-sam.ome.zarr`` beside
    ``cells.ome.zarr``.
    """
    image = Path(image_path).expanduser()
    labels = image / "labels"
    if os.access(labels if labels.exists() else image, os.W_OK):
        return labels / name
    stem = image.name.removesuffix(".zarr").removesuffix(".ome")
    return image.parent / f"{stem}.{name}.ome.zarr"


def create_labels(
    path: str | os.PathLike,
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    pyramid: ImagePyramid | None = None,
    axes: str | None = None,
    voxel_size=None,
    name: str | None = None,
    version: str | None = None,
    register: bool = True,
) -> zarr.Group:
    """Create an empty label image (uint32, 0 everywhere) at ``path``.

    Parameters
    ----------
    path : path
        The new group; it must not exist (or be an empty folder).
    shape, chunks : tuple of int
        Level 0's shape and chunks; give 1 along the plane axes, so that planes are written
        apart. Lower levels take the same chunks, cut to their shape.
    pyramid : ImagePyramid, optional
        The image the labels belong to: its levels (without the channel axis, see
        :meth:`ImagePyramid.without_channel`) and their transformations are the labels', and
        its version the default ``version``. ``shape`` must be its level 0's.
    axes : str, optional
        Without ``pyramid``: one letter of ``"tzyx"`` per dimension (required). The levels then
        halve y and x while the larger side is over 512 pixels.
    voxel_size : (z, y, x) floats, optional
        Without ``pyramid``: level 0's size per spatial axis (micrometres), for the ``scale``
        transformations; 1 per axis without it.
    name : str, optional
        The ``multiscales`` name (the folder's name by default).
    version : {"0.5", "0.4"}, optional
        NGFF version: "0.5" (zarr format 3) by default, or the ``pyramid``'s.
    register : bool
        List the labels in the image's ``labels`` group when ``path`` is ``<image>/labels/<x>``
        (see :func:`register_labels`).

    Returns
    -------
    zarr.Group
        The label image, open for writing; its levels are ``group[p]`` for ``p`` in
        :func:`level_paths` (the image's level paths, or ``"0"``, ``"1"``, ...).

    Raises
    ------
    ValueError
        A ``shape`` that is not the pyramid's, axes that do not fit, an unknown version.
    FileExistsError
        ``path`` exists.
    """
    path = Path(path).expanduser()
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise FileExistsError(f"{str(path)!r} exists: choose another path for the labels")
    version = version or (pyramid.version if pyramid is not None else "0.5")
    if version not in VERSIONS:
        raise ValueError(f"OME-NGFF version {version!r} is not supported: give one of {VERSIONS}")
    levels = _levels(tuple(shape), pyramid, axes, voxel_size)
    fmt = _ZARR_FORMAT[version]
    group = zarr.open_group(path, mode="a", zarr_format=fmt)
    names = [str(a["name"]) for a in levels.axes]
    for level, level_shape in zip(levels.paths, levels.shapes):
        options = ({"dimension_names": names} if fmt == 3
                   else {"chunk_key_encoding": {"name": "v2", "separator": "/"}})
        group.create_array(level, shape=level_shape, dtype="uint32", fill_value=0,
                           chunks=tuple(min(c, s) for c, s in zip(chunks, level_shape)),
                           **options)
    multiscale = {
        "name": name or path.name,
        "axes": list(levels.axes),
        "datasets": [{"path": p, "coordinateTransformations": list(t)}
                     for p, t in zip(levels.paths, levels.transforms)],
        "type": "nearest",
    }
    image_label: dict = {}
    if pyramid is not None:
        image_label["source"] = {"image": Path(os.path.relpath(pyramid.path, path)).as_posix()}
    _write_ome(group, version, {"multiscales": [multiscale], "image-label": image_label})
    if register:
        register_labels(path)
    return group


def register_labels(path: str | os.PathLike) -> None:
    """List the label image ``path`` in its parent ``labels`` group (made when missing), when
    ``path`` is ``<image>/labels/<name>`` of an OME-Zarr image; nothing otherwise. Idempotent.
    """
    path = Path(path).expanduser()
    image = path.parent.parent
    if path.parent.name != "labels" or read_image_pyramid(image) is None:
        return
    version = read_image_pyramid(image).version
    labels = zarr.open_group(path.parent, mode="a", zarr_format=_ZARR_FORMAT[version])
    attributes, _ = _ome_attributes(labels)
    listed = list(attributes.get("labels", []))
    if path.name not in listed:
        _write_ome(labels, version, {"labels": [*listed, path.name]})


def open_labels(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """The label image at ``path`` (a group with ``multiscales`` and ``image-label`` metadata).

    Raises
    ------
    ValueError
        ``path`` is not an OME-Zarr label image.
    """
    try:
        group = zarr.open_group(Path(path).expanduser(), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
        raise FileNotFoundError(f"{str(path)!r} is not a zarr group: give the folder of an "
                                "OME-Zarr label image, e.g. image.ome.zarr/labels/napari-sam")\
            from error
    attributes, _ = _ome_attributes(group)
    if "image-label" not in attributes or not attributes.get("multiscales"):
        raise ValueError(f"{str(path)!r} has no OME-Zarr 'multiscales' and 'image-label' "
                         "metadata: give the folder of an OME-Zarr label image")
    return group


def level_paths(group: zarr.Group) -> list[str]:
    """The level arrays of the label image ``group``, finest first."""
    attributes, _ = _ome_attributes(group)
    return [str(d["path"]) for d in attributes["multiscales"][0]["datasets"]]


def write_levels(group: zarr.Group, plane: int | tuple[int, ...] | None = None) -> None:
    """Write the lower levels of ``group`` from level 0, by nearest neighbour.

    Parameters
    ----------
    group : zarr.Group
        A label image (:func:`create_labels`, :func:`open_labels` with ``mode="r+"``).
    plane : int or tuple of int, optional
        A level-0 plane (one index per plane axis: those before y and x): only the planes of
        the other levels that sample it are written, a few chunks. All planes by default,
        chunk by chunk with dask.
    """
    paths = level_paths(group)
    base = group[paths[0]]
    source = da.from_zarr(base)
    n_plane_axes = base.ndim - 2
    if plane is not None:
        plane = (plane,) if isinstance(plane, (int, np.integer)) else tuple(plane)
        if len(plane) != n_plane_axes:
            raise ValueError(f"plane {plane} does not fit the {n_plane_axes} plane axes of "
                             f"the labels of shape {base.shape}")
    for path in paths[1:]:
        target = group[path]
        region, data = [], source
        for axis, (n0, n) in enumerate(zip(base.shape, target.shape)):
            index = np.minimum(((np.arange(n) + 0.5) * n0 / n).astype(np.int64), n0 - 1)
            if plane is not None and axis < n_plane_axes:
                hits = np.flatnonzero(index == plane[axis])
                if hits.size == 0:
                    break  # this level samples no plane of level 0 here
                index = index[hits]
                region.append(slice(int(hits[0]), int(hits[-1]) + 1))
            else:
                region.append(slice(0, n))
            data = da.take(data, index, axis=axis)
        else:
            target_chunks = tuple(min(c, r.stop - r.start) for c, r in zip(target.chunks, region))
            da.store(data.rechunk(target_chunks), target, regions=tuple(region), lock=False)


def write_properties(group: zarr.Group, properties: list[dict]) -> None:
    """Set the ``image-label`` colours and properties of the label image ``group``.

    Parameters
    ----------
    properties : list of dict
        One per object, each with its ``"label-value"`` (the id) and any JSON values, e.g.
        ``{"label-value": 7, "area": 1200, "plane": 4}``. The colours are one per object,
        stable per id (the same id has the same colour in every run).
    """
    attributes, version = _ome_attributes(group)
    image_label = dict(attributes.get("image-label", {}))
    values = [int(p["label-value"]) for p in properties]
    if len(set(values)) != len(values):
        raise ValueError("each object's properties must have a 'label-value' of its own")
    image_label["colors"] = [{"label-value": v, "rgba": label_colour(v)} for v in values]
    image_label["properties"] = [{**p, "label-value": int(p["label-value"])} for p in properties]
    if not values:  # NGFF: no empty lists
        del image_label["colors"], image_label["properties"]
    _write_ome(group, version or "0.4", {"image-label": image_label})


def label_colour(value: int) -> list[int]:
    """An opaque RGBA colour for label ``value``, the same in every run, bright on black."""
    digest = hashlib.sha256(int(value).to_bytes(8, "little")).digest()
    hue, saturation, brightness = digest[0] / 256, 0.55 + digest[1] / 640, 0.75 + digest[2] / 1100
    rgb = np.clip(np.abs(((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6) - 3) - 1, 0, 1)
    rgb = brightness * (1 - saturation + saturation * rgb)
    return [round(float(c) * 255) for c in rgb] + [255]


def _levels(shape: tuple[int, ...], pyramid: ImagePyramid | None, axes: str | None,
            voxel_size) -> ImagePyramid:
    """The labels' levels: the pyramid's without channel, or halvings of ``shape``."""
    if pyramid is not None:
        levels = pyramid.without_channel()
        if levels.shapes[0] != shape:
            raise ValueError(
                f"labels of shape {shape} do not fit the image {pyramid.path!r}, whose levels "
                f"without channels start at {levels.shapes[0]} (axes {levels.axis_names!r})")
        return levels
    if axes is None or len(axes) != len(shape) or not set(axes) <= set("tzyx") \
            or axes[-2:] != "yx" or len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes!r} do not fit labels of shape {shape}: give one letter of "
                         "t, z, y, x per dimension, ending in 'yx'")
    spatial = [a for a in axes if a in "zyx"]
    size = dict(zip(spatial, voxel_size)) if voxel_size is not None else {}
    if voxel_size is not None and len(voxel_size) != len(spatial):
        raise ValueError(f"voxel_size {tuple(voxel_size)} does not fit the spatial axes "
                         f"{''.join(spatial)!r}: give one size per axis")
    shapes = [shape]
    while max(shapes[-1][-2:]) > _LEVEL_SIDE:
        shapes.append(shapes[-1][:-2] + tuple((s + 1) // 2 for s in shapes[-1][-2:]))
    transforms = tuple(
        ({"type": "scale",
          "scale": [float(size.get(a, 1.0)) * (shape[i] / level[i] if a in "yx" else 1.0)
                    for i, a in enumerate(axes)]},)
        for level in shapes)
    units = {a: {"unit": "micrometer"} for a in spatial if voxel_size is not None}
    return ImagePyramid(path="", version="", paths=tuple(str(i) for i in range(len(shapes))),
                        axes=tuple({"name": a, "type": _AXIS_TYPES[a], **units.get(a, {})}
                                   for a in axes),
                        shapes=tuple(shapes), transforms=transforms)


def _ome_attributes(group: zarr.Group) -> tuple[dict, str | None]:
    """The NGFF metadata of ``group`` (under "ome" for 0.5) and its version when it says."""
    attributes = group.attrs.asdict()
    if "ome" in attributes:
        return dict(attributes["ome"]), str(attributes["ome"].get("version", "0.5"))
    return attributes, None


def _write_ome(group: zarr.Group, version: str, values: dict) -> None:
    """Merge ``values`` into the NGFF metadata of ``group``, laid out as ``version`` says."""
    attributes, _ = _ome_attributes(group)
    attributes.update(values)
    if version == "0.5":
        attributes["version"] = "0.5"
        group.attrs.update({"ome": attributes})
        return
    for multiscale in attributes.get("multiscales", ()):
        multiscale["version"] = "0.4"
    if "image-label" in attributes:
        attributes["image-label"]["version"] = "0.4"
    group.attrs.update(attributes)
