"""Outlines moved to an object's blurred edge: where the plane crosses a share of its contrast.

A fluorescent object seen through a microscope's point spread function has no sharp edge: its
light falls off over a few pixels, and the edge people draw lies at about half its maximum above
the background. A segmenter may outline the visible blob wider (a decoder trained on other
data, out-of-focus light around a nucleus) or draw inside it. :func:`snap_outlines` moves each
object's outline, within a few pixels, to where the lightly smoothed plane crosses ``share``
times its plateau (the mean of its pixels brighter than its mean, which overestimates the core
by its texture and noise, hence a share under one half). The 3D assembly
(:mod:`napari_sam.volume.assembly`) snaps with one level per 3D object, through the same
:func:`snap_to_levels`.

This assumes bright objects on a darker background (fluorescence); the model registry says for
which models it applies (:attr:`~napari_sam.models.registry.ModelSpec.edge_level`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

# Pixels an outline may move: about the width of a blurred edge.
REACH = 3
# The edge as a share of an object's plateau: half its maximum, the plateau overestimating the
# core (measured for the 3D assembly, whose _HALF it is, on benchmarks/stack3d.py's stacks).
EDGE_SHARE = 0.4


def snap_outlines(image: np.ndarray, labels: np.ndarray, *, share: float = EDGE_SHARE,
                  reach: int = REACH) -> np.ndarray:
    """Move each object's outline to where ``image`` crosses ``share`` of its contrast.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        The plane the objects were found in (channels averaged).
    labels : (H, W) integer array
        0 for background.
    share : float
        The edge, as a share of each object's plateau above the background (the median of the
        pixels outside every object), in ``(0, 1)``.
    reach : int
        Pixels an outline may move, outwards or inwards.

    Returns
    -------
    (H, W) array of ``labels``' dtype
        The same ids; an object whose pixels all lie under its edge level is gone.

    Examples
    --------
    A disc of radius 6 (113 px) blurred, outlined 3 px too wide:

    >>> rows, cols = np.mgrid[:32, :32]
    >>> distance = np.hypot(rows - 16, cols - 16)
    >>> image = ndi.gaussian_filter(np.where(distance <= 6, 100.0, 0.0), 1.5)
    >>> wide = (distance <= 9).astype(np.uint8)
    >>> int(wide.sum()), int(snap_outlines(image, wide).sum())
    (253, 137)
    """
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    grey = np.asarray(image, dtype=np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    values, index = np.unique(labels, return_inverse=True)
    index = index.reshape(labels.shape).astype(np.int32)
    if values[0] == 0:
        index -= 1
        values = values[1:]
    if not values.size:
        return np.array(labels, copy=True)
    area = np.bincount(index[index >= 0], minlength=values.size)
    background, _, plateau = plateaus(grey, index, area)
    outside = grey[index < 0]
    noise = 1.4826 * float(np.median(np.abs(outside - background))) if outside.size else 0.0
    # an object whose plateau is within twice the pixel noise of the background has no edge
    # to find (its edge level would lie in the noise): a blob of noise would shrink to its
    # brightest pixels and look like an object; it keeps its outline
    faint = plateau < 2 * noise
    levels = np.append(np.inf, background + share * plateau)
    owner = snap_to_levels(grey, index + 1, levels, reach)
    names = np.append(np.zeros(1, labels.dtype), values.astype(labels.dtype))
    snapped = names[owner]
    if faint.any():
        faint = np.append(False, faint)
        snapped = np.where(faint[index + 1], labels, np.where(faint[owner], 0, snapped))
    return snapped


def plateaus(grey: np.ndarray, index: np.ndarray, area: np.ndarray):
    """The plane's background (median outside the objects) and, per object, its mean intensity
    and its plateau (the mean of its pixels at least as bright as its mean), both above the
    background; ``index`` holds each pixel's object, ``-1`` outside them."""
    n = area.size
    inside = index >= 0
    background = float(np.median(grey[~inside])) if (~inside).any() else float(grey.min())
    mean = np.bincount(index[inside], weights=grey[inside], minlength=n) / np.maximum(area, 1)
    upper = inside & (grey >= np.append(mean, 0.0)[index])
    plateau = np.bincount(index[upper], weights=grey[upper], minlength=n)
    plateau = plateau / np.maximum(np.bincount(index[upper], minlength=n), 1) - background
    return background, mean - background, plateau


def snap_to_levels(grey: np.ndarray, owner: np.ndarray, levels: np.ndarray,
                   reach: int = REACH) -> np.ndarray:
    """Each object where the plane, lightly smoothed (sigma 1 px), is at least its level,
    within ``reach`` pixels of its pixels, notches and holes inside it closed.

    Parameters
    ----------
    grey : (H, W) float array
    owner : (H, W) int array
        Each pixel's object, ``1..n``, 0 for background.
    levels : (n + 1,) float array
        The grey level of each object's edge, ``levels[0]`` unused.
    reach : int

    Returns
    -------
    (H, W) int array
        The new ``owner``.
    """
    grown = _reach(owner, reach)
    smooth = ndi.gaussian_filter(grey.astype(np.float32, copy=False), 1.0)
    edge = np.asarray(levels, np.float32).copy()
    edge[0] = np.inf
    above = smooth >= edge[grown]
    # closing fills notches and holes within an object only, never gaps between two
    keep = above | ((owner > 0) & _closed(above))
    return np.where(keep, grown, 0)


def _reach(owner: np.ndarray, steps: int) -> np.ndarray:
    """``owner`` grown about ``steps`` pixels into its zeros, by steps that alternate 4- and
    8-connected (an octagon, near a disc; a pixel reached by two owners at once takes the
    larger). Needs a few planes of int32, where a distance transform (skimage's
    ``expand_labels``) needs several of int64 and float64: too much for a 4096 px plane."""
    for step in range(steps):
        footprint = ndi.generate_binary_structure(2, 1 + step % 2)
        owner = np.where(owner > 0, owner, ndi.maximum_filter(owner, footprint=footprint))
    return owner


def _closed(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    """``mask`` closed by a disc and its holes filled: a dim nucleolus at the edge of a nucleus
    leaves neither a notch nor a hole (padded, so that the image border erodes nothing)."""
    disc = np.add.outer(*(np.arange(-radius, radius + 1) ** 2,) * 2) <= radius**2
    padded = np.pad(mask, radius)
    closed = ndi.binary_closing(padded, structure=disc)[radius:-radius, radius:-radius]
    return ndi.binary_fill_holes(closed)
