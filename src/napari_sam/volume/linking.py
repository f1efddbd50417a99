"""Link slice-by-slice 2D segmentations into 3D objects by their overlap alone.

A stack segmented slice by slice holds one id per 2D object, unique in the whole volume.
:func:`link_slices` gives an object that continues through neighbouring slices one id in all of
them: it matches the objects of each slice to those of the slices before it (IoU of the 2D
masks, optimal assignment) and rewrites the volume in place, one slice at a time.

It needs no image and keeps every 2D object, which suits labels whose planes are all in focus
and whose objects are not stacked in z. Stacks from a microscope get
:func:`napari_sam.volume.assembly.assemble_objects`, which :func:`~napari_sam.volume.segment_stack`
uses: linking alone carries out-of-focus light and stacked nuclei into one object
(``benchmarks/stack3d.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["LinkSummary", "link_slices"]


@dataclass(frozen=True)
class LinkSummary:
    """What :func:`link_slices` found.

    Attributes
    ----------
    n_slices : int
    n_objects_2d : int
        Objects counted slice by slice.
    n_objects_3d : int
        Objects after linking (the 2D objects that start a 3D object).
    n_links : int
        2D objects that took the id of an object in an earlier slice; equals
        ``n_objects_2d - n_objects_3d``.
    """

    n_slices: int
    n_objects_2d: int
    n_objects_3d: int
    n_links: int


@dataclass
class _Slice:
    """The objects of one slice.

    ``index`` (Y, X) int32 gives each pixel's position in ``ids`` (-1 for background); ``ids``
    and ``area`` list the objects in the raster order of their first pixels, an order that does
    not depend on the ids, so that linked and unlinked slices give the same assignments.
    """

    index: np.ndarray
    ids: np.ndarray
    area: np.ndarray


def link_slices(
    labels,
    *,
    iou_threshold: float = 0.25,
    max_gap: int = 1,
    progress: Callable[[int, int], object] | None = None,
) -> LinkSummary:
    """Give each object that continues through neighbouring slices one id, in place.

    Slices are linked in order. The objects of slice ``z`` are matched to those of slice
    ``z - 1`` by optimal assignment (:func:`scipy.optimize.linear_sum_assignment`) maximising the
    total IoU of the 2D masks; pairs with IoU below `iou_threshold` are never linked. An object
    left without a partner is then matched, in the same way, to the objects of ``z - 2``, ...,
    ``z - 1 - max_gap`` that end there: whose id appears in no slice between that slice and
    ``z``. An object that links takes its partner's (already linked) id; any other keeps its
    own id and starts a 3D object.

    Each slice is read once and written back only if an id changed; only the last
    ``max_gap + 1`` slices are kept in memory. Because linked ids come from earlier slices and
    new objects keep their ids, a linked slice links to the same result again: running on a
    fully or partly linked volume (after an interrupted run) gives exactly the result of one
    uninterrupted run with the same settings.

    Parameters
    ----------
    labels : (Z, Y, X) or (Y, X) integer array
        Label volume (numpy, zarr, or any array with ``a[z]`` reads and writes), 0 for
        background, ids unique in the whole volume (e.g. slice ``z`` labelled ``z * 10**5 + k``).
        Changed in place. A 2D array is one slice: nothing to link.
    iou_threshold : float, optional
        Smallest IoU of two 2D objects that may be linked, in ``(0, 1]``.
    max_gap : int, optional
        Number of consecutive slices an object may be missing from and keep its id.
    progress : callable, optional
        Called as ``progress(done, total)`` after each slice.

    Returns
    -------
    LinkSummary

    Raises
    ------
    TypeError
        If `labels` has no shape and dtype.
    ValueError
        If `labels` is not a 2D or 3D integer array, if a settings value is out of range, or if
        an object of a slice that starts a 3D object has an id used in one of the previous
        ``max_gap + 1`` slices (ids not unique in the volume, or a volume linked before with other
        settings); that slice and the following ones are left unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_sam.volume.linking import link_slices
    >>> labels = np.zeros((3, 4, 4), np.uint32)
    >>> labels[0, 1:3, 1:3] = 1
    >>> labels[1, 1:3, 1:4] = 2
    >>> labels[2, 1:3, 1:3] = 3
    >>> link_slices(labels)
    LinkSummary(n_slices=3, n_objects_2d=3, n_objects_3d=1, n_links=2)
    >>> np.unique(labels)
    array([0, 1], dtype=uint32)
    """
    n_slices = _validate(labels, iou_threshold, max_gap)
    history: deque[_Slice] = deque(maxlen=max_gap + 1)  # linked slices z - 1, z - 2, ...
    n_objects = n_links = 0
    for z in range(n_slices):
        current = _objects(np.asarray(labels[z] if len(labels.shape) == 3 else labels[...]))
        ids, linked = _link(current, history, iou_threshold)
        earlier_ids = np.concatenate([s.ids for s in history] + [ids[:0]])
        clash = current.ids[~linked & np.isin(current.ids, earlier_ids)]
        if clash.size:
            raise ValueError(
                f"labels: id {clash[0]} of slice {z} also names another object in an earlier "
                "slice; link_slices needs ids unique in the whole volume (label slice z with "
                "z * 10**5 + k, for example), or the per-slice labels again to relink a volume "
                "with other settings"
            )
        if not np.array_equal(ids, current.ids):
            labels[z] = np.append(ids, 0)[current.index]  # index -1 (background) picks the 0
        current.ids = ids
        history.appendleft(current)
        n_objects += ids.size
        n_links += int(linked.sum())
        if progress is not None:
            progress(z + 1, n_slices)
    return LinkSummary(n_slices, n_objects, n_objects - n_links, n_links)


def _validate(labels, iou_threshold: float, max_gap: int) -> int:
    """Check the arguments of :func:`link_slices`; return the number of slices."""
    if not (hasattr(labels, "shape") and hasattr(labels, "dtype")):
        raise TypeError(
            f"labels must be an array (numpy, zarr, ...) with a shape and a dtype, got "
            f"{type(labels).__name__}; wrap it with np.asarray"
        )
    shape, dtype = tuple(labels.shape), np.dtype(labels.dtype)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"labels must be a (Z, Y, X) label volume or one (Y, X) slice, got shape {shape}; "
            "link one channel or time point at a time, e.g. labels[t]"
        )
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(
            f"labels must hold integer ids, got dtype {dtype}; cast whole-number labels with "
            "labels.astype(np.uint32), or label a mask first (skimage.measure.label)"
        )
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if not isinstance(max_gap, (int, np.integer)) or max_gap < 0:
        raise ValueError(f"max_gap must be an integer >= 0, got {max_gap!r}")
    return shape[0] if len(shape) == 3 else 1


def _objects(plane: np.ndarray) -> _Slice:
    """The objects of a 2D label image, in the raster order of their first pixels."""
    ids, first, inverse, area = np.unique(
        plane.ravel(), return_index=True, return_inverse=True, return_counts=True
    )
    foreground = np.flatnonzero(ids != 0)
    order = foreground[np.argsort(first[foreground])]
    position = np.full(ids.size, -1, dtype=np.int32)
    position[order] = np.arange(order.size, dtype=np.int32)
    return _Slice(position[inverse].reshape(plane.shape), ids[order], area[order])


def _link(current: _Slice, history: deque[_Slice], iou_threshold: float):
    """Linked ids of the objects of `current` and which of them continue an earlier object.

    The earlier slices in `history` are tried nearest first; each is offered only the objects
    still unlinked, and only its own objects whose ids no slice in between holds.
    """
    ids = current.ids.copy()
    linked = np.zeros(ids.size, dtype=bool)
    between = ids[:0]  # ids of the slices between `earlier` and `current`
    for earlier in history:
        if linked.all():
            break
        ends = ~np.isin(earlier.ids, between)
        rows, cols = _assign(current, earlier, ~linked, ends, iou_threshold)
        ids[rows] = earlier.ids[cols]
        linked[rows] = True
        between = np.concatenate([between, earlier.ids])
    return ids, linked


def _assign(current: _Slice, earlier: _Slice, rows_open, cols_open, iou_threshold: float):
    """Optimal links between the open objects of two slices, from their joint histogram.

    Returns the positions ``(rows, cols)`` of the linked objects in ``current.ids`` and
    ``earlier.ids``.
    """
    # Joint histogram of the pixels where both slices hold an open object.
    rows_px = np.append(rows_open, False)[current.index]  # index -1 (background) picks False
    cols_px = np.append(cols_open, False)[earlier.index]
    both = rows_px & cols_px
    n_cols = earlier.ids.size
    pairs, overlap = np.unique(
        current.index[both].astype(np.int64) * n_cols + earlier.index[both], return_counts=True
    )
    rows, cols = np.divmod(pairs, n_cols)
    iou = overlap / (current.area[rows] + earlier.area[cols] - overlap)
    keep = iou >= iou_threshold
    return _max_weight_matching(rows[keep], cols[keep], iou[keep])


def _max_weight_matching(rows, cols, weight):
    """Maximum-weight matching of the bipartite graph with edges ``(rows, cols, weight > 0)``.

    The graph splits into connected components (objects that overlap only each other); a
    component of one edge is that link, the others are solved by linear_sum_assignment.
    """
    if rows.size == 0:
        return rows, cols
    node_rows, r = np.unique(rows, return_inverse=True)
    node_cols, c = np.unique(cols, return_inverse=True)
    n_nodes = node_rows.size + node_cols.size
    graph = coo_matrix((np.ones(r.size), (r, node_rows.size + c)), shape=(n_nodes, n_nodes))
    component = connected_components(graph, directed=False)[1][r]
    single = np.bincount(component)[component] == 1
    out_rows, out_cols = [rows[single]], [cols[single]]
    multi = np.flatnonzero(~single)
    multi = multi[np.argsort(component[multi], kind="stable")]
    groups = np.split(multi, np.flatnonzero(np.diff(component[multi])) + 1) if multi.size else []
    for edges in groups:
        sub_rows, ri = np.unique(rows[edges], return_inverse=True)
        sub_cols, ci = np.unique(cols[edges], return_inverse=True)
        matrix = np.zeros((sub_rows.size, sub_cols.size))
        matrix[ri, ci] = weight[edges]
        a, b = linear_sum_assignment(matrix, maximize=True)
        real = matrix[a, b] > 0
        out_rows.append(sub_rows[a[real]])
        out_cols.append(sub_cols[b[real]])
    return np.concatenate(out_rows), np.concatenate(out_cols)
