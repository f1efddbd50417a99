"""Between napari layers and the engine: the slice on screen, the prompts in it, and writing
masks into label layers. Prompt and preview layers share the image layer's scale and
translation, so their data coordinates are the image's pixel coordinates."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from napari_sam.engine.geometry import bounding_box
from napari_sam.plugin.disk_labels import (
    BUDGET_VARIABLE,
    DiskLabels,
    in_memory_limit,
    labels_location,
    largest_label,
    open_disk_labels,
)
from napari_sam.plugin.session import ImageSource, LayerError

POSITIVE_COLOUR = "#39ff14"
NEGATIVE_COLOUR = "#ff2d95"
PREVIEW_COLOUR = "#ffd700"


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
    expected = source.labels_shape
    if tuple(labels_layer.data.shape) != expected:
        raise LayerError(
            f"labels layer {labels_layer.name!r} has shape {tuple(labels_layer.data.shape)}, the "
            f"image has {expected}: choose a labels layer of the image's shape, or a new one"
        )


def goes_to_disk(source: ImageSource) -> bool:
    """Whether uint32 labels of ``source`` exceed the in-memory budget
    (:func:`~napari_sam.plugin.disk_labels.in_memory_limit`)."""
    return int(np.prod(source.labels_shape)) * 4 > in_memory_limit()


def kept_on_disk(image, source: ImageSource, name: str) -> bool:
    """Whether labels ``name`` of ``image`` go to disk and an earlier session saved them there
    (:func:`new_labels_layer` reopens them)."""
    return goes_to_disk(source) and labels_location(image, source, name).exists()


def new_labels_layer(viewer, image, source: ImageSource, name: str):
    """Add a uint32 labels layer over ``image``: an empty numpy array within the in-memory
    budget, else the on-disk labels ``name`` of the image, made empty or reopened with the work
    of earlier sessions (:func:`~napari_sam.plugin.disk_labels.open_disk_labels`).

    Raises
    ------
    LayerError
        The budget setting is not a number, or labels on disk do not fit the image.
    """
    from napari.utils.notifications import show_info

    frame = dict(name=name, scale=image.scale, translate=image.translate)
    if not goes_to_disk(source):
        return viewer.add_labels(np.zeros(source.labels_shape, np.uint32), **frame)
    data, existed = open_disk_labels(image, source, name)
    show_info(f"napari-sam: labels {name!r} are larger than {BUDGET_VARIABLE}: "
              f"{'reopened from' if existed else 'kept on disk in'} {data.path}")
    layer = viewer.add_labels(data, metadata={"napari-sam labels": str(data.path)}, **frame)
    if data.levels is not None:
        _follow_levels(layer, data)
    return layer


def _follow_levels(layer, data: DiskLabels) -> None:
    """Write the lower levels of an OME-Zarr label image in the background now, when an
    earlier session left them behind, and after each edit (napari's paint event) and undo or
    redo (set_data), one job at a time: rewriting a 4096 x
    4096 plane's levels takes seconds, too long to wait for after a click."""
    from napari_sam.plugin.background import run_in_background

    running = []

    def start(_event=None) -> None:
        if running or not data.levels_behind:
            return

        def finished() -> None:
            running.clear()
            start()  # planes edited while the job ran

        running.append(run_in_background(data.write_levels, what="writing the lower levels of "
                                         f"{data.path}", finished=finished))

    layer.events.paint.connect(start)
    layer.events.set_data.connect(start)
    start()  # levels left behind by a session that ended first


def next_label(labels_layer) -> int:
    """An id not used in the layer yet (one more than the largest)."""
    data = labels_layer.data
    if isinstance(data, np.ndarray):
        return int(data.max(initial=0)) + 1
    if isinstance(data, DiskLabels):
        return data.max_label + 1
    return largest_label(data) + 1


def write_mask(labels_layer, index, mask: np.ndarray, value: int, *,
               clear: np.ndarray | None = None) -> None:
    """Paint ``value`` where ``mask`` is true in slice ``index`` of a labels layer.

    Other objects under the mask are painted over, unless the layer's "preserve labels" option
    is on. With ``clear``, the pixels of ``clear`` that still hold ``value`` are set to 0 first
    (the old extent of a refined object). Only the box around ``mask`` and ``clear`` is read
    and only the changed pixels are written, through the layer's ``data_setitem`` one chunk at
    a time: the change is one step of napari's undo (Ctrl+Z), and an on-disk layer rewrites
    only the chunks it touches.

    Parameters
    ----------
    index : tuple of int
        The slice.
    mask, clear : (H, W) bool array
        Pixels of the whole slice.
    """
    region = mask if clear is None else mask | clear
    if not region.any():
        return
    chunks = getattr(labels_layer.data, "chunks", None)  # zarr's; dask's are not one size
    chunks = chunks[-2:] if chunks and all(isinstance(c, int) for c in chunks) else None
    with labels_layer.block_history():  # one undo step
        for rows, cols in _windows(bounding_box(region), chunks):
            old = np.asarray(labels_layer.data[(*index, rows, cols)])
            new = old.copy()
            if clear is not None:
                new[clear[rows, cols] & (old == value)] = 0
            inside = mask[rows, cols]
            new[inside & (new == 0) if labels_layer.preserve_labels else inside] = value
            changed = np.nonzero(new != old)
            if changed[0].size:
                # int32 coordinates: napari's undo history keeps them (20 bytes a pixel, not 32)
                coords = (*(np.full(changed[0].size, i, np.int32) for i in index),
                          (changed[0] + rows.start).astype(np.int32),
                          (changed[1] + cols.start).astype(np.int32))
                labels_layer.data_setitem(coords, new[changed])


def _windows(box, chunks) -> Iterator[tuple[slice, slice]]:
    """The ``(rows, cols)`` slices of a box ``(min_row, min_col, max_row, max_col)`` (maxima
    inclusive) cut along a plane's grid of ``(rows, cols)`` chunks, or whole without them."""
    top, left, bottom, right = box
    if chunks is None:
        yield slice(top, bottom + 1), slice(left, right + 1)
        return
    for rows in _cut(top, bottom, chunks[0]):
        for cols in _cut(left, right, chunks[1]):
            yield rows, cols


def _cut(first: int, last: int, step: int) -> list[slice]:
    """``first`` to ``last`` (inclusive) cut at the multiples of ``step``."""
    bounds = [first, *range((first // step + 1) * step, last + 1, step), last + 1]
    return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
