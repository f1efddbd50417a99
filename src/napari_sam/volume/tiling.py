"""Tiles with a halo for planes larger than the model input, and automatic segmentation across
them: each object is kept by the tile that owns its centre and comes out once and whole."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_sam.engine.amg import AutomaticMaskGenerator
from napari_sam.engine.mask_ops import WindowMask, paint_labels

MERGE_OVERLAP = 0.5  # two masks are one object when they share this much of the smaller one


@dataclass(frozen=True)
class Tile:
    """One tile of a plane: the pixels it owns (``core``) and the pixels it sees (``box``).

    Both are ``(min_row, min_col, max_row, max_col)`` with the maxima exclusive; ``box`` is the
    core grown by the halo, clipped to the plane.
    """

    core: tuple[int, int, int, int]
    box: tuple[int, int, int, int]

    @property
    def slices(self) -> tuple[slice, slice]:
        r0, c0, r1, c1 = self.box
        return slice(r0, r1), slice(c0, c1)


def tile_layout(shape: tuple[int, int], tile: int | None, halo: int = 0) -> list[Tile]:
    """Tiles of at most ``tile`` pixels a side covering a plane of ``shape``.

    The cores (``tile - 2 * halo`` pixels a side, as even as possible) partition the plane; each
    tile sees its core plus ``halo`` pixels of context on every side. A plane that fits in one
    tile (or ``tile=None``) is one tile.

    Raises
    ------
    ValueError
        ``halo`` is negative, or leaves no core (``tile <= 2 * halo``).
    """
    height, width = shape
    if tile is None or (height <= tile and width <= tile):
        return [Tile((0, 0, height, width), (0, 0, height, width))]
    if halo < 0 or tile - 2 * halo < 1:
        raise ValueError(
            f"tile {tile} with halo {halo} leaves no core: the halo must be at least 0 and less "
            f"than half the tile, e.g. --tile {tile} --halo {max(0, tile // 8)}"
        )
    rows = _cuts(height, tile - 2 * halo)
    cols = _cuts(width, tile - 2 * halo)
    tiles = []
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            box = (max(0, r0 - halo), max(0, c0 - halo), min(height, r1 + halo), min(width, c1 + halo))
            tiles.append(Tile((r0, c0, r1, c1), box))
    return tiles


def _cuts(length: int, core: int) -> list[int]:
    count = math.ceil(length / core)
    return [round(i * length / count) for i in range(count + 1)]


def segment_plane(generator: AutomaticMaskGenerator, rgb: np.ndarray, tiles: list[Tile]) -> np.ndarray:
    """Automatic segmentation of one ``(H, W, 3)`` uint8 plane, tile by tile.

    Each tile's masks are moved into the plane. A mask belongs to the tile whose core holds the
    centre of its bounding box; masks cut by an inner tile edge are completed with the
    overlapping masks of the neighbouring tiles; duplicates (masks sharing most of their
    pixels) are merged. With a halo wider than the objects, every object crossing a seam is
    whole in the tile that owns it.

    Returns
    -------
    (H, W) uint32 array
        Labels 1..n, larger objects painted first.
    """
    shape = rgb.shape[:2]
    if len(tiles) == 1:
        return generator.generate_labels(rgb)
    found: list[tuple[WindowMask, int, bool]] = []  # mask, tile index, cut by an inner edge
    for index, tile in enumerate(tiles):
        r0, c0 = tile.box[:2]
        for mask in generator.generate_masks(rgb[tile.slices]):
            if mask.area == 0:
                continue
            moved = mask.moved(r0, c0, shape)
            found.append((moved, index, _cut(moved, tile, shape)))
    kept: list[WindowMask] = []
    for mask, index, cut in found:
        if not _owns(tiles[index], mask):
            continue
        if cut:
            for other, other_index, _ in found:
                if other_index != index and _overlap(mask, other) >= MERGE_OVERLAP:
                    mask = _union(mask, other)
        if all(_overlap(mask, previous) < MERGE_OVERLAP for previous in kept):
            kept.append(mask)
    return paint_labels(kept, shape)


def _owns(tile: Tile, mask: WindowMask) -> bool:
    h, w = mask.window.shape
    row, col = mask.top + (h - 1) / 2, mask.left + (w - 1) / 2
    r0, c0, r1, c1 = tile.core
    return r0 <= row + 0.5 < r1 and c0 <= col + 0.5 < c1


def _cut(mask: WindowMask, tile: Tile, shape) -> bool:
    """Does the mask reach an edge of the tile that is not an edge of the plane?"""
    h, w = mask.window.shape
    r0, c0, r1, c1 = tile.box
    return ((mask.top <= r0 and r0 > 0) or (mask.left <= c0 and c0 > 0)
            or (mask.top + h >= r1 and r1 < shape[0]) or (mask.left + w >= c1 and c1 < shape[1]))


def _overlap(a: WindowMask, b: WindowMask) -> float:
    """Shared pixels as a fraction of the smaller mask."""
    top, left = max(a.top, b.top), max(a.left, b.left)
    bottom = min(a.top + a.window.shape[0], b.top + b.window.shape[0])
    right = min(a.left + a.window.shape[1], b.left + b.window.shape[1])
    if bottom <= top or right <= left:
        return 0.0
    shared = (a.window[top - a.top: bottom - a.top, left - a.left: right - a.left]
              & b.window[top - b.top: bottom - b.top, left - b.left: right - b.left]).sum()
    return float(shared) / max(1, min(a.area, b.area))


def _union(a: WindowMask, b: WindowMask) -> WindowMask:
    top, left = min(a.top, b.top), min(a.left, b.left)
    bottom = max(a.top + a.window.shape[0], b.top + b.window.shape[0])
    right = max(a.left + a.window.shape[1], b.left + b.window.shape[1])
    window = np.zeros((bottom - top, right - left), dtype=bool)
    for mask in (a, b):
        h, w = mask.window.shape
        window[mask.top - top: mask.top - top + h, mask.left - left: mask.left - left + w] |= mask.window
    return WindowMask(top, left, window, a.shape)
