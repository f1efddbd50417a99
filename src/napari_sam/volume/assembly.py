"""Assemble the 2D objects of a stack segmented plane by plane into 3D objects.

Segmenting a z stack one plane at a time gives fragments: one 2D object per plane per nucleus,
plus the dim blobs that out-of-focus planes hold, plus the odd piece where a plane was
over-segmented. :func:`assemble_objects` turns them into 3D objects in four steps, each with
a physical reason:

1. **Overlap graph.** Fragments of planes ``z`` and ``z + 1`` (and ``z + 2``, across one
   missed plane) that overlap are joined by an edge. Greedy agglomeration takes the edges by
   decreasing IoU and merges two objects unless they would then hold two fragments of one plane
   (one nucleus has one cross-section per plane). An edge must cover half of the smaller
   fragment, so that the shrinking caps of a nucleus link while neighbours do not.
2. **Split stacked nuclei.** Two nuclei stacked in z form one chain of fragments. Where their
   outlines show it, the chain's area along z rises, falls to a neck and rises again: it is cut
   at a neck under ``neck`` times both peaks beside it. Seen through an axially smeared point
   spread function the outlines often show no neck, but the contrast dips between the two: a
   chain is cut where its contrast falls under ``3/4`` of the peaks on either side. Where it
   does not dip either (a bright nucleus on a dim one), the chain is longer than one object
   (by the voxel size and the diameter): a chain longer than ``1.6`` objects is cut where its
   contrast falls under half its peak on its longer side, the far edge of the bright one.
3. **Trim to the half maximum.** The point spread function smears a nucleus over planes
   beyond its surface, and a 2D segmenter finds it there too. Where a blurred edge crosses
   half the object's contrast is where the edge is: fragments at either end of an object
   under that level are dropped and, in the planes (``snap``), each outline is moved to that
   level, within a few pixels: inwards where the segmenter outlined the visible blob wider,
   outwards where it drew inside the edge.
4. **Minimum extent.** What is left in fewer than ``min_planes`` planes, or only in
   out-of-focus planes, is no object: a piece that overlaps a kept object in a neighbouring
   plane joins it (an over-segmented cross-section), any other is dropped. A chain far
   thinner than an object (its widest fragment under ``0.3`` of the typical cross-section) is
   such a piece too, a sliver a segmenter cut off a nucleus plane after plane: it joins an
   object beside it, in the same planes; where it joins nothing, it is kept (a small nucleus).

Memory is bounded by a few planes: the fragments are measured in one pass over the planes
(their areas, contrasts and overlaps: a few numbers per fragment), assembled from those
numbers, then every plane is written in a second pass. Written to another array than the
fragments (``out``), the assembly can be stopped at any moment and made again from them.

Step 1 is a greedy agglomeration rather than ``python-elf``'s multicut, which micro-sam merges
its slices with: put in its place (``benchmarks/linking_multicut.py``), the multicut gives the
same 3D objects within one object per stack (mean F1@0.5 0.927 against 0.925 over six stacks),
and the greedy step needs no compiled graph library. micro-sam's merge itself, the multicut
without steps 2-4, keeps the out-of-focus light: its objects are twice as deep as the nuclei.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_sam.engine.outlines import EDGE_SHARE, plateaus, snap_to_levels

__all__ = ["AssemblySummary", "assemble_objects", "expected_planes"]

# Least share of the smaller fragment that an edge of the overlap graph must cover.
_COVER = 0.5
# Chains are first cleared of haze, fragments under _HAZE times their brightest's contrast, a
# level low enough to keep a dim nucleus stacked under a bright one until the chain is split.
# Each object is then trimmed to the planes whose contrast is at least _HALF times its
# plateau, the mean of the pixels brighter than a fragment's mean: that overestimates the
# contrast of a well-outlined nucleus (its texture and noise), so _HALF under 0.5 puts the
# cut at about half its maximum. Measured on benchmarks/stack3d.py's synthetic stacks. The
# outlines are snapped to the same level in the planes: on StarDist's 3D stack, whose labels
# lie at half the nuclei's contrast in the plane, 0.5 times the plateau cut a pixel off every
# outline (3D F1 of its true planes assembled 0.79, with _HALF 0.85).
_HAZE = 0.3
_HALF = EDGE_SHARE
# A chain is cut where its contrast dips under _DIP times the peaks on either side, and, dip or
# not, while it is longer than _LONG objects. On benchmarks/stack3d.py's StarDist stack, whose
# nuclei (3 to 11 planes long) stand in columns with dimmer light between them, the length
# alone (1.5 objects, no dip) cut long nuclei and left the light between them on their ends;
# on the synthetic stacks, where a bright nucleus often sits on a dim one without a dip, the
# length is the one cue, and longer limits (1.75, 2) merge more of them.
_DIP = 0.75
_LONG = 1.6
# A chain whose widest fragment covers less than _THIN of the cross-section of an object of
# the typical diameter is a sliver, joined to the object beside it (in the same planes) that
# it overlaps in a neighbouring plane, where there is one: on benchmarks/stack3d.py's StarDist
# stack, AIS cuts a few nuclei in two the same way plane after plane, a quarter of the nucleus
# beside the rest.
_THIN = 0.3
# Planes whose median fragment sharpness is under this share of the sharpest planes' are out
# of focus; only fragments of at least _BRIGHT times the bright fragments' contrast count (the
# edges of noise have no contrast to measure sharpness against).
_BLURRED = 0.5
_BRIGHT = 0.25


@dataclass(frozen=True)
class AssemblySummary:
    """What :func:`assemble_objects` did.

    Attributes
    ----------
    planes : int
    fragments : int
        2D objects in the planes.
    objects : int
        3D objects kept.
    split : int
        Chains cut in two at a neck (nuclei stacked in z).
    trimmed : int
        Fragments dropped beyond an object's half maximum (out-of-focus light).
    merged : int
        Short pieces joined to a kept object in a neighbouring plane.
    dropped : int
        Fragments of objects too short or only in out-of-focus planes.
    min_planes : int
        The minimum extent used.
    """

    planes: int
    fragments: int
    objects: int
    split: int
    trimmed: int
    merged: int
    dropped: int
    min_planes: int


@dataclass
class _Fragments:
    """A few numbers per fragment and the edges of the overlap graph, from one pass."""

    ids: np.ndarray  # label id of each fragment
    plane: np.ndarray  # its plane
    area: np.ndarray  # its pixels
    contrast: np.ndarray  # mean intensity above the plane's background
    plateau: np.ndarray  # the same over its pixels brighter than its mean
    sharpness: np.ndarray  # edge gradient over contrast, about 1 / edge width
    background: np.ndarray  # per plane: median of the pixels outside fragments
    edges: np.ndarray  # (E, 2) fragment indices, the first in the earlier plane
    overlap: np.ndarray  # (E,) pixels in common


def expected_planes(diameter: float, voxel_size) -> float:
    """The planes a round object of ``diameter`` pixels spans in z.

    Parameters
    ----------
    diameter : float
        Diameter in pixels of the plane.
    voxel_size : (z, y, x) floats
        Voxel size, in any one unit.
    """
    z, y, x = (float(v) for v in voxel_size)
    return diameter * (y + x) / 2 / z


def assemble_objects(
    fragments,
    image,
    *,
    out=None,
    voxel_size=None,
    diameter: float | None = None,
    min_planes: int | None = None,
    neck: float = 0.5,
    snap: bool = True,
    progress: Callable[[int, int], object] | None = None,
) -> AssemblySummary:
    """Turn the 2D objects of a stack segmented plane by plane into 3D objects.

    Parameters
    ----------
    fragments : (Z, Y, X) integer array
        The planes' labels (numpy, zarr, ...), 0 for background, with ids unique in the whole
        volume (as :func:`~napari_sam.volume.segment_stack` writes them with ``link=False``).
    image : (Z, Y, X) array, (Z, Y, X, C) array or Volume
        The image the labels were found in: the fragments' contrast and sharpness are measured
        on it.
    out : (Z, Y, X) integer array, optional
        Where to write the 3D objects (``fragments`` itself, in place, by default): each
        object's id is that of its first fragment, dropped fragments are 0.
    voxel_size : (z, y, x) floats, optional
        Physical voxel size; by default the ``image``'s (:attr:`Volume.voxel_size`). Without
        one, an object's extent in z is taken from the objects themselves (the median extent
        of those in two planes or more).
    diameter : float, optional
        Typical object diameter in pixels of the plane; by default the median over the
        assembled objects of their widest cross-section.
    min_planes : int, optional
        Fewest planes an object spans; by default a third of the planes an object of
        ``diameter`` spans (:func:`expected_planes`), at least 1; without a voxel size, a
        third of the median extent of the objects.
    neck : float, optional
        A chain is split at a neck whose area is under this share of both peaks beside it, in
        ``(0, 1)``.
    snap : bool, optional
        Move each outline to where the plane (lightly smoothed) crosses half its object's
        contrast above the background (``0.4`` times its plateau), within ``3`` pixels of the
        segmenter's outline: that is where the blurred edge of an object lies, whereas a
        segmenter may outline the visible blob wider, or draw inside it.
    progress : callable, optional
        ``progress(done, total)`` after each plane of each pass.

    Returns
    -------
    AssemblySummary

    Raises
    ------
    ValueError
        Fragments that are not a 3D integer volume, an ``image`` or ``out`` of another shape,
        an id in two planes, or settings out of range.
    """
    n_planes = _check(fragments, image, out, neck, min_planes)
    voxel_size = _voxel_size(voxel_size, image)
    measured = _measure(fragments, image, progress, 2 * n_planes)
    objects, summary = _assemble(measured, n_planes, voxel_size, diameter, min_planes, neck)
    _write(fragments, fragments if out is None else out, image, measured, objects, snap,
           progress)
    return summary


def _check(fragments, image, out, neck: float, min_planes: int | None) -> int:
    """Refuse bad arguments; return the number of planes."""
    shape = tuple(getattr(fragments, "shape", ()))
    dtype = np.dtype(getattr(fragments, "dtype", float))
    if len(shape) != 3 or not np.issubdtype(dtype, np.integer):
        raise ValueError(
            f"fragments must be a (Z, Y, X) integer label volume, got shape {shape}; assemble "
            "one z stack at a time (labels[t] of a time series)"
        )
    if out is not None and tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, the fragments {shape}: give an "
                         "array of the fragments' shape")
    image_shape = tuple(image.shape[:3]) if not hasattr(image, "plane_shape") else (
        image.n_planes, *image.plane_shape)
    if image_shape != shape:
        raise ValueError(
            f"the image's planes {image_shape} do not match the labels' {shape}: give the image "
            "the labels were segmented from"
        )
    if not 0 < neck < 1:
        raise ValueError(f"neck must be in (0, 1), got {neck}")
    if min_planes is not None and not (isinstance(min_planes, (int, np.integer))
                                       and min_planes >= 1):
        raise ValueError(f"min_planes must be a whole number >= 1, got {min_planes!r}")
    return shape[0]


def _voxel_size(voxel_size, image) -> tuple[float, float, float] | None:
    """The voxel size given, else the image's, checked; None when neither knows it."""
    if voxel_size is None:
        voxel_size = getattr(image, "voxel_size", None)
        if voxel_size is not None:
            voxel_size = voxel_size[-3:]
    if voxel_size is None:
        return None
    size = tuple(float(v) for v in voxel_size)
    if len(size) != 3 or not all(np.isfinite(v) and v > 0 for v in size):
        raise ValueError(f"voxel_size must be three positive numbers (z, y, x), got {voxel_size}")
    return size


def _plane_image(image, z: int) -> np.ndarray:
    """Plane ``z`` of ``image`` as float32 grey values (channels averaged)."""
    plane = image.plane(z) if hasattr(image, "plane_shape") else np.asarray(image[z])
    plane = plane.astype(np.float32)
    return plane.mean(axis=-1) if plane.ndim == 3 else plane


def _measure(labels, image, progress, total) -> _Fragments:
    """One pass over the planes: the fragments' numbers and the overlap graph."""
    n_planes = labels.shape[0]
    ids, plane_of, area, contrast, plateau, sharpness = [], [], [], [], [], []
    background = np.zeros(n_planes)
    edges, overlap = [], []
    recent: deque[tuple[np.ndarray, int]] = deque(maxlen=2)  # (index plane, first fragment)
    start = 0
    for z in range(n_planes):
        plane = np.asarray(labels[z])
        values, index, counts = np.unique(plane, return_inverse=True, return_counts=True)
        empty = int(values[0] == 0)
        index = index.reshape(plane.shape).astype(np.int32) - empty  # background: -1
        values, counts = values[empty:], counts[empty:]
        if values.size:  # a plane without fragments (not segmented, say) is not read
            background[z], c, top, s = _contrast_and_sharpness(_plane_image(image, z), index,
                                                               counts)
        else:
            c = top = s = np.zeros(0)
        ids.append(values)
        plane_of.append(np.full(values.size, z, np.int32))
        area.append(counts)
        contrast.append(c)
        plateau.append(top)
        sharpness.append(s)
        for earlier, first in recent:
            e, o = _overlaps(earlier, first, index, start)
            edges.append(e)
            overlap.append(o)
        recent.appendleft((index, start))
        start += values.size
        if progress is not None:
            progress(z + 1, total)
    all_ids = np.concatenate(ids)
    unique, count = np.unique(all_ids, return_counts=True)
    if (count > 1).any():
        raise ValueError(
            f"labels: id {unique[count > 1][0]} names objects in more than one plane; "
            "assemble_objects needs the per-plane labels, with ids unique in the whole volume "
            "(segment_stack with link=False writes them)"
        )
    return _Fragments(all_ids, np.concatenate(plane_of), np.concatenate(area).astype(np.int64),
                      np.concatenate(contrast), np.concatenate(plateau),
                      np.concatenate(sharpness),
                      background,
                      np.concatenate(edges) if edges else np.zeros((0, 2), np.int64),
                      np.concatenate(overlap) if overlap else np.zeros(0, np.int64))


def _contrast_and_sharpness(grey: np.ndarray, index: np.ndarray, area: np.ndarray):
    """The plane's background (median outside the fragments) and, per fragment: its mean
    intensity above it (contrast), the same over its pixels at least as bright as its mean (plateau:
    the contrast of the object itself when the outline is drawn wide), and the mean gradient
    along its outline over its contrast (sharpness: about the inverse width of its edge, in
    1/px, high in focus and low where the plane is blurred)."""
    n = area.size
    inside = index >= 0
    background, contrast, plateau = plateaus(grey, index, area)
    outline = np.zeros(index.shape, bool)
    for axis in (0, 1):
        step = np.diff(index, axis=axis) != 0
        lead = [slice(None)] * 2
        lead[axis] = slice(None, -1)
        outline[tuple(lead)] |= step
        lead[axis] = slice(1, None)
        outline[tuple(lead)] |= step
    outline &= inside
    gradient = ndi.gaussian_gradient_magnitude(grey, 1.0)
    edge = np.bincount(index[outline], weights=gradient[outline], minlength=n)
    edge = edge / np.maximum(np.bincount(index[outline], minlength=n), 1)
    return background, contrast, plateau, edge / np.maximum(np.abs(contrast), 1e-6)


def _overlaps(earlier: np.ndarray, first: int, current: np.ndarray, start: int):
    """Edges (fragment indices in the whole volume) and their overlaps between two planes."""
    both = (earlier >= 0) & (current >= 0)
    a = earlier[both].astype(np.int64) + first
    b = current[both].astype(np.int64) + start
    pairs, counts = np.unique(a * (1 << 32) + b, return_counts=True)
    return np.stack(np.divmod(pairs, 1 << 32), axis=1), counts


class _Groups:
    """Union-find over fragments that keeps, per group, the set of its planes (a bit mask)."""

    def __init__(self, planes: np.ndarray) -> None:
        self.parent = list(range(planes.size))
        self.mask = [1 << int(z) for z in planes]

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def merge(self, i: int, j: int) -> bool:
        """Merge the groups of ``i`` and ``j`` unless they share a plane."""
        a, b = self.find(i), self.find(j)
        if a == b or self.mask[a] & self.mask[b]:
            return False
        self.parent[b] = a
        self.mask[a] |= self.mask[b]
        return True

    def members(self) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            groups.setdefault(self.find(i), []).append(i)
        return list(groups.values())


def _link(f: _Fragments) -> list[list[int]]:
    """Step 1: chains of fragments (indices, one per plane at most, in plane order) by greedy
    agglomeration over the overlap graph, the edges that cover half of the smaller fragment
    taken by decreasing IoU, neighbouring planes before gaps."""
    i, j = f.edges.T if f.edges.size else (np.zeros(0, int), np.zeros(0, int))
    smaller = np.minimum(f.area[i], f.area[j])
    iou = f.overlap / (f.area[i] + f.area[j] - f.overlap)
    keep = f.overlap >= _COVER * smaller
    gap = f.plane[j[keep]] - f.plane[i[keep]]
    order = np.lexsort((-iou[keep], gap))  # neighbouring planes first, then across a gap
    groups = _Groups(f.plane)
    for a, b in zip(i[keep][order], j[keep][order]):
        groups.merge(int(a), int(b))
    return [sorted(g, key=lambda k: f.plane[k]) for g in groups.members()]


def _assemble(f: _Fragments, n_planes: int, voxel_size, diameter, min_planes, neck):
    """Objects from the fragments' numbers: the object id of each fragment (0: dropped) and
    the summary."""
    chains = _link(f)
    # out-of-focus light trimmed first, so that its wide blobs are not taken for a nucleus of
    # their own beyond a neck; then each part of a split chain trimmed to its own peak
    chains = [core for core in (_trim(c, f.contrast, f.contrast, _HAZE) for c in chains)
              if core]
    bright = _bright(f)
    if diameter is None:  # of the nuclei, not of the specks of noise in empty planes
        widest = [f.area[c].max() for c in chains if len(c) > 1 and bright[c].any()]
        diameter = 2 * np.sqrt(np.median(widest) / np.pi) if widest else 1.0
    extent = _extent(chains, diameter, voxel_size)
    if min_planes is None:
        min_planes = max(1, int(round(extent / 3)))
    kept, n_split = [], 0
    for chain in chains:
        parts = [part for piece in _split_at_necks(chain, f.area, neck, max(min_planes, 2))
                 for part in _split_at_dips(piece, f.contrast, extent)]
        n_split += len(parts) - 1
        kept.extend(core for core in (_trim(p, f.contrast, f.plateau, _HALF) for p in parts)
                    if core)
    trimmed = f.ids.size - sum(len(chain) for chain in kept)

    blurred = _blurred_planes(f, n_planes, bright)
    thin = _THIN * np.pi * diameter**2 / 4
    objects = np.zeros(f.ids.size, np.int64)
    short, slivers, dropped = [], [], 0
    for chain in kept:
        planes = np.unique(f.plane[chain])
        if blurred[planes].all():
            dropped += len(chain)
        elif planes.size < max(2, min_planes):
            short.append(chain)
        elif f.area[chain].max() < thin:
            slivers.append(chain)
        else:
            objects[chain] = f.ids[chain[0]]
    joined = (_join_pieces(short, objects, f, beside=False)
              + _join_pieces(slivers, objects, f, beside=True))
    for chain in short + slivers:
        if not objects[chain[0]]:
            if np.unique(f.plane[chain]).size >= min_planes:
                objects[chain] = f.ids[chain[0]]
            else:
                dropped += len(chain)
    objects = _first_ids(objects, f)
    summary = AssemblySummary(planes=n_planes, fragments=int(f.ids.size),
                              objects=int(np.unique(objects[objects > 0]).size), split=n_split,
                              trimmed=trimmed, merged=joined, dropped=dropped,
                              min_planes=int(min_planes))
    return objects, summary


def _blurred_planes(f: _Fragments, n_planes: int, bright: np.ndarray) -> np.ndarray:
    """Which planes are out of focus: those whose ``bright`` fragments' (:func:`_bright`)
    median sharpness is under half that of the sharpest planes, and those without a bright
    fragment."""
    focus = np.full(n_planes, np.nan)
    for z in np.unique(f.plane[bright]):
        focus[z] = np.median(f.sharpness[bright & (f.plane == z)])
    measured = focus[np.isfinite(focus)]
    sharpest = np.percentile(measured, 90) if measured.size else 0.0
    return ~(focus >= _BLURRED * sharpest)  # nan: no bright fragment


def _bright(f: _Fragments) -> np.ndarray:
    """Which fragments are bright: at least :data:`_BRIGHT` times the brighter fragments'
    contrast (their 90th percentile)."""
    bright = f.contrast > 0
    if bright.any():
        bright &= f.contrast >= _BRIGHT * np.percentile(f.contrast[bright], 90)
    return bright


def _split_at_necks(chain: list[int], area: np.ndarray, neck: float, least: int) -> list[list[int]]:
    """``chain`` cut at its deepest neck (recursively) where both sides keep ``least`` planes."""
    if len(chain) < 2 * least:
        return [chain]
    depth, cut = _deepest_cut(area[chain].astype(float), least, len(chain) - least,
                              reach=len(chain))
    if depth >= neck:
        return [chain]
    return (_split_at_necks(chain[:cut], area, neck, least)
            + _split_at_necks(chain[cut:], area, neck, least))


def _deepest_cut(values: np.ndarray, first: int, last: int, *, reach: int):
    """Where a profile along a chain dips most: a cut between positions ``c - 1`` and ``c``
    (``first <= c <= last``) is as deep as the smaller of the two against the smaller of the
    peaks within ``reach`` positions on either side; of equally deep cuts, the one between the
    smallest pair. Returns ``(depth, c)``."""
    cuts = [(min(values[c - 1], values[c])
             / min(values[max(c - reach, 0):c].max(), values[c:c + reach].max()),
             values[c - 1] + values[c], c) for c in range(first, last + 1)]
    depth, _, cut = min(cuts)
    return depth, cut


def _trim(chain: list[int], contrast: np.ndarray, peak: np.ndarray, share: float) -> list[int]:
    """``chain`` without the fragments at its ends whose contrast is under ``share`` times the
    highest ``peak`` of its fragments; nothing of a chain no brighter than its background."""
    c = contrast[chain]
    level = share * peak[chain].max()
    if c.max() <= 0 or level <= 0:
        return []
    above = np.flatnonzero(c >= level)
    return chain[above[0]:above[-1] + 1] if above.size else []


def _extent(chains, diameter: float, voxel_size) -> float:
    """The planes an object spans: from the voxel size when known, else the median extent of
    the chains of two planes or more."""
    if voxel_size is not None:
        return expected_planes(diameter, voxel_size)
    lengths = [len(c) for c in chains if len(c) > 1]
    return float(np.median(lengths)) if lengths else 2.0


def _split_at_dips(chain: list[int], contrast: np.ndarray, extent: float) -> list[list[int]]:
    """``chain`` cut where its contrast dips most against the peaks within an object's extent
    on either side, while that dip is under :data:`_DIP` or the chain longer than
    :data:`_LONG` objects: nuclei stacked in z seen through an axially smeared PSF, whose
    outlines show no neck. Its length counts the planes above its own haze (:data:`_HAZE`
    times its brightest fragment): dim light at its ends does not make one nucleus long. A
    long chain without a dip is cut at the edge of its brightest object (:func:`_edge_cut`)."""
    reach = max(int(round(extent)), 1)
    half = max(int(round(extent / 2)), 1)
    if len(chain) < 2 * half:
        return [chain]
    values = contrast[chain]
    depth, cut = _deepest_cut(values, half, len(chain) - half, reach=reach)
    length = len(_trim(chain, contrast, contrast, _HAZE))
    if depth >= _DIP and length <= _LONG * extent:
        return [chain]
    if depth >= _DIP:
        cut = _edge_cut(values, half, len(chain) - half, default=cut)
    return (_split_at_dips(chain[:cut], contrast, extent)
            + _split_at_dips(chain[cut:], contrast, extent))


def _edge_cut(values: np.ndarray, first: int, last: int, *, default: int) -> int:
    """Where a profile without a dip falls under :data:`_HALF` times its peak, on the longer
    side of the peak: the far edge of the brightest object, beyond which a dimmer one lies
    (a cut between positions ``c - 1`` and ``c``, ``first <= c <= last``); ``default`` when it
    does not fall that low there. Where a bright nucleus sits on a dim one, the lowest point
    of a profile without a dip is the dim one's far end, not the boundary between the two."""
    top = int(np.argmax(values))
    level = _HALF * values[top]
    if len(values) - 1 - top >= top:  # the longer side follows the peak
        cuts = [c for c in range(max(top + 1, first), last + 1) if values[c] < level]
    else:
        cuts = [c for c in range(min(top, last), first - 1, -1) if values[c - 1] < level]
    return cuts[0] if cuts else default


def _join_pieces(pieces: list[list[int]], objects: np.ndarray, f: _Fragments, *,
                 beside: bool) -> int:
    """Give each piece the object it overlaps most in the neighbouring planes, where that
    covers half of one of its fragments: a cross-section over-segmented in its plane. With
    ``beside``, only an object in at least half of the piece's planes: a sliver cut off a
    nucleus lies beside it, not above or below. Returns the fragments joined."""
    piece = np.full(f.ids.size, -1)
    for k, chain in enumerate(pieces):
        piece[chain] = k
    both = np.concatenate([f.edges, f.edges[:, ::-1]])  # (piece fragment, other fragment)
    overlap = np.concatenate([f.overlap, f.overlap])
    good = (piece[both[:, 0]] >= 0) & (objects[both[:, 1]] > 0)
    good &= overlap >= _COVER * f.area[both[:, 0]]
    totals: dict[tuple[int, int], int] = {}
    for k, target, o in zip(piece[both[good, 0]], objects[both[good, 1]], overlap[good]):
        totals[k, target] = totals.get((k, target), 0) + int(o)
    planes: dict[int, set[int]] = {}
    if beside:
        for name, z in zip(objects.tolist(), f.plane.tolist()):
            planes.setdefault(name, set()).add(z)
    best: dict[int, tuple[int, int]] = {}
    for (k, target), o in sorted(totals.items()):
        if beside:
            own = set(f.plane[pieces[k]].tolist())
            if len(own & planes.get(int(target), set())) < len(own) / 2:
                continue
        if o > best.get(k, (0, 0))[0]:
            best[k] = (o, target)
    for k, (_, target) in best.items():
        objects[pieces[k]] = target
    return sum(len(pieces[k]) for k in best)


def _first_ids(objects: np.ndarray, f: _Fragments) -> np.ndarray:
    """Each object named by the id of its first fragment (lowest plane, then lowest id), so
    that the name is the same however the fragments were joined."""
    order = np.lexsort((f.ids, f.plane))
    named = objects[order]
    first = {}
    for fragment_id, obj in zip(f.ids[order], named):
        if obj and obj not in first:
            first[obj] = fragment_id
    return np.array([first.get(o, 0) for o in objects], dtype=np.int64)


def _write(fragments, out, image, f: _Fragments, objects: np.ndarray, snap: bool,
           progress) -> None:
    """Write every plane of ``out`` with the object ids of its fragments (planes that do not
    change are not written); with ``snap``, each object where the plane, lightly smoothed, is
    at least its object's half maximum above the background, within a few pixels of its
    fragment (:func:`~napari_sam.engine.outlines.snap_to_levels`)."""
    order = np.argsort(f.ids)
    ids, objects = f.ids[order], objects[order]
    level = _half_maxima(f, objects)[order] if snap else None
    n_planes = fragments.shape[0]
    for z in range(n_planes):
        plane = np.asarray(fragments[z])
        values, inverse = np.unique(plane, return_inverse=True)
        inverse = inverse.reshape(plane.shape).astype(np.int32)  # planes of int32 at most
        position = np.searchsorted(ids, values).clip(0, max(ids.size - 1, 0))
        found = values != 0
        named = np.where(found, objects[position] if ids.size else 0, 0).astype(out.dtype)
        new = named[inverse]
        if snap and new.any():
            edge = f.background[z] + np.append(np.inf, np.where(found, level[position], np.inf))
            owner = snap_to_levels(_plane_image(image, z), np.where(new > 0, inverse + 1, 0),
                                   edge)
            new = np.append(np.zeros(1, out.dtype), named)[owner]
        new = new.astype(out.dtype, copy=False)
        if out is not fragments or not np.array_equal(new, plane):
            out[z] = new
        if progress is not None:
            progress(n_planes + z + 1, 2 * n_planes)


def _half_maxima(f: _Fragments, objects: np.ndarray) -> np.ndarray:
    """Per fragment, :data:`_HALF` times the highest plateau of its object's fragments: the
    level of the object's blurred edge (half its maximum)."""
    names, which = np.unique(objects, return_inverse=True)
    highest = np.full(names.size, -np.inf)
    np.maximum.at(highest, which, f.plateau)
    return _HALF * highest[which]
