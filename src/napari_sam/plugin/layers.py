"""Between napari layers and the engine: the slice on screen, the prompts in it, and writing
masks into label layers. Prompt and preview layers share the image layer's scale and
translation, so their data coordinates are the image's pixel coordinates."""

from __future__ import annotations

import numpy as np

from napari_sam.plugin.session import ImageSource, LayerError

POSITIVE_COLOUR = "#39ff14"
NEGATIVE_COLOUR = "#ff2d95"
PREVIEW_COLOUR = "#ffd700"
IN_MEMORY_LIMIT = 512 * 2**20  # bytes of a new labels layer kept as numpy; larger ones are zarr


def current_slice(viewer, layer, source: ImageSource) -> tuple[int, ...]:
    """The slice index of ``layer`` shown in ``viewer``.

    Raises
    ------
    LayerError
        The viewer shows 3D, or not the layer's (y, x) planes.
    """
    dims = viewer.dims
    if dims.ndisplay != 2:
        raise LayerError("SAM segments 2D slices: switch the viewer to 2D (the 2D/3D button)")
    if tuple(dims.displayed) != (dims.ndim - 2, dims.ndim - 1):
        raise LayerError(
            "SAM segments the (y, x) slices of the image: reset the axis order (the transpose "
            "buttons, or viewer.dims.order) so that the last two axes are shown"
        )
    return source.plane_index(layer.world_to_data(dims.point)[:-2])


def describe(index: tuple[int, ...]) -> str:
    """A slice index for people: ``"slice 12"``, ``"slice 3, 12"``, or ``"the image"`` (2D)."""
    return f"slice {', '.join(map(str, index))}" if index else "the image"


def in_slice(coords: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """Which of ``(N, ndim)`` data coordinates lie in slice ``index``."""
    coords = np.asarray(coords, dtype=float)
    if not index:
        return np.ones(len(coords), dtype=bool)
    return np.all(np.round(coords[:, : len(index)]) == np.asarray(index), axis=1)


def point_prompts(points_layer, index) -> tuple[np.ndarray, np.ndarray]:
    """``(row, col)`` of the clicks in slice ``index`` and their labels (1 on, 0 off)."""
    data = np.asarray(points_layer.data, dtype=float).reshape(-1, points_layer.ndim)
    keep = in_slice(data, index)
    positive = np.asarray(points_layer.features["positive"], dtype=bool)
    return data[keep, -2:], positive[keep].astype(int)


def box_prompt(shapes_layer, index) -> np.ndarray | None:
    """``(min_row, min_col, max_row, max_col)`` of the last rectangle drawn in slice ``index``."""
    for vertices, kind in zip(reversed(shapes_layer.data), reversed(shapes_layer.shape_type)):
        vertices = np.asarray(vertices, dtype=float)
        if kind == "rectangle" and in_slice(vertices, index).all():
            rc = vertices[:, -2:]
            return np.concatenate([rc.min(axis=0), rc.max(axis=0)])
    return None


def slice_key(index: tuple[int, ...]) -> tuple:
    """Indexing tuple of a whole slice (all rows and columns) of a layer's data."""
    return (*index, slice(None), slice(None))


def check_target(labels_layer, source: ImageSource) -> None:
    """Raise a :class:`LayerError` if ``labels_layer`` cannot hold labels of ``source``."""
    expected = source.volume.planes + source.volume.plane_shape
    if tuple(labels_layer.data.shape) != expected:
        raise LayerError(
            f"labels layer {labels_layer.name!r} has shape {tuple(labels_layer.data.shape)}, the "
            f"image has {expected}: choose a labels layer of the image's shape, or a new one"
        )


def new_labels_layer(viewer, image, source: ImageSource, name: str):
    """Add an empty uint32 labels layer over ``image``: numpy when it is small, else a zarr
    array in memory with one chunk per slice, where only slices with labels take memory."""
    shape = source.volume.planes + source.volume.plane_shape
    if np.prod(shape) * 4 <= IN_MEMORY_LIMIT:
        data = np.zeros(shape, np.uint32)
    else:
        import zarr

        data = zarr.create_array(store={}, shape=shape, dtype="uint32",
                                 chunks=(1,) * len(source.volume.planes) + shape[-2:])
    return viewer.add_labels(data, name=name, scale=image.scale, translate=image.translate)


def next_label(labels_layer) -> int:
    """An id not used in the layer yet (one more than the largest)."""
    data = labels_layer.data
    if isinstance(data, np.ndarray):
        return int(data.max(initial=0)) + 1
    import dask.array as da

    return int(da.from_array(data, chunks=getattr(data, "chunks", "auto")).max().compute()) + 1


def write_mask(labels_layer, index, mask: np.ndarray, value: int, *, replace: int | None = None):
    """Paint ``value`` where ``mask`` is true in slice ``index`` of a labels layer.

    Other objects under the mask are painted over, unless the layer's "preserve labels" option
    is on. With ``replace``, the old pixels of id ``replace`` are cleared first (a refined
    object). A numpy-backed layer records the change in its undo history (Ctrl+Z); a lazy one
    (zarr) is written slice by slice.
    """
    data = labels_layer.data
    plane = np.asarray(data[slice_key(index)])
    new = plane.copy()
    if replace is not None:
        new[plane == replace] = 0
    paint = mask & (new == 0) if labels_layer.preserve_labels else mask
    new[paint] = value
    changed = np.nonzero(new != plane)
    if isinstance(data, np.ndarray):
        coords = tuple(np.full(len(changed[0]), i) for i in index) + changed
        labels_layer.data_setitem(coords, new[changed])
    else:
        data[slice_key(index)] = new
        labels_layer.refresh()
