"""Tiles with a halo for planes larger than the model input, and automatic segmentation across
them: each object is kept by the tile that owns its centre and comes out once and whole."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_sam.engine.amg import AutomaticMaskGenerator
from napari_sam.engine.geometry import WindowMask, bounding_box, box_centre

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

    The cores partition the plane; each tile sees its core plus at least ``halo`` pixels of
    context on every side that has any, and is ``tile`` pixels a side wherever the plane is that
    large (the context grows to fill it), so that no tile is smaller than the model input. A
    plane that fits in one tile (or ``tile=None``) is one tile.

    A core on the plane's border needs context on its inner side only: it spans up to
    ``tile - halo`` pixels, the inner cores up to ``tile - 2 * halo``, and the fewest tiles that
    cover the plane share its length in proportion to those spans. A 1024 px plane in 256 px
    tiles with a 32 px halo takes 5 x 5 tiles, where cores of 192 px everywhere would take
    6 x 6.

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
    rows = _cuts(height, tile, halo)
    cols = _cuts(width, tile, halo)
    tiles = []
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            (top, bottom), (left, right) = _around(r0, r1, tile, height), _around(c0, c1, tile, width)
            tiles.append(Tile((r0, c0, r1, c1), (top, left, bottom, right)))
    return tiles


def _around(start: int, stop: int, size: int, length: int) -> tuple[int, int]:
    """A span of ``size`` (at most ``length``) centred on ``[start, stop)``, inside
    ``[0, length)``; as ``(start, stop)``."""
    size = min(size, length)
    low = min(max(0, (start + stop - size) // 2), length - size)
    return low, low + size


def _cuts(length: int, tile: int, halo: int) -> list[int]:
    """Boundaries of the fewest cores covering ``[0, length)``: up to ``tile - halo`` pixels for
    the two on the ends, ``tile - 2 * halo`` for those between, each in proportion to its span."""
    if length <= tile:
        return [0, length]
    inner, outer = tile - 2 * halo, tile - halo
    spans = [outer] + [inner] * max(0, math.ceil((length - 2 * outer) / inner)) + [outer]
    ends = np.cumsum(spans) * (length / sum(spans))
    return [0, *(round(float(e)) for e in ends)]


def segment_tiles(generator: AutomaticMaskGenerator, rgb: np.ndarray,
                  tiles: list[Tile]) -> list[WindowMask]:
    """Automatic segmentation of one ``(H, W, 3)`` uint8 plane, tile by tile.

    Each tile's masks are moved into the plane. A mask belongs to the tile whose core holds the
    centre of its bounding box; masks cut by an inner tile edge are completed with the
    overlapping masks of the neighbouring tiles; duplicates (masks sharing most of their
    pixels) are merged. With a halo wider than the objects, every object crossing a seam is
    whole in the tile that owns it.

    Returns
    -------
    list of WindowMask
        The objects of the plane, each once (paint them with
        :func:`~napari_sam.engine.mask_ops.paint_labels`).
    """
    shape = rgb.shape[:2]
    if len(tiles) == 1:
        return generator.generate_masks(rgb)
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
                if other_index != index and mask.overlap(other) >= MERGE_OVERLAP:
                    mask = mask.union(other)
        if all(mask.overlap(previous) < MERGE_OVERLAP for previous in kept):
            kept.append(mask)
    return kept


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


class TiledPredictor:
    """Prompted segmentation of a plane larger than the model input, one tile at a time.

    A prompt is answered from the tile whose core holds it (its first positive point, else the
    centre of its box, else the centre of its mask's bounding box), with the halo as context;
    only that tile is embedded (and kept, or read from an embedding store). When the answer
    reaches an inner edge of the tile, the object continues into a neighbour: the prompt is
    answered again from a tile of the same size centred on the object, which holds the object
    and its surroundings from both tiles.

    Parameters
    ----------
    model : Sam
    tile, halo : int
        Tile size and context in pixels (see :func:`tile_layout`).
    store : EmbeddingStore, optional
        Reuse and keep tile embeddings there.

    Examples
    --------
    >>> predictor = TiledPredictor(load_model(), tile=1024, halo=128)  # doctest: +SKIP
    >>> predictor.set_image(plane, limits=volume_limits)  # doctest: +SKIP
    >>> masks, scores, logits = predictor.predict(points=[[2100, 3050]])  # doctest: +SKIP
    """

    def __init__(self, model, *, tile: int | None = 1024, halo: int = 128, store=None) -> None:
        from napari_sam.engine.predictor import Predictor

        self.predictor = Predictor(model, enlarge=False)
        self.tile, self.halo, self.store = tile, halo, store
        self._rgb: np.ndarray | None = None
        self._embeddings: dict[tuple[int, int, int, int], object] = {}

    @property
    def image(self) -> np.ndarray | None:
        """The plane as the model sees it, ``(H, W, 3)`` uint8 RGB; None before :meth:`set_image`."""
        return self._rgb

    def set_image(self, image: np.ndarray, *, channel_axis: int | None = None, limits=None) -> None:
        """Set the plane (any 2D image, see :meth:`napari_sam.Predictor.set_image`); nothing is
        embedded until a prompt needs a tile."""
        from napari_sam.engine.image import to_rgb_uint8

        self._rgb = to_rgb_uint8(image, channel_axis=channel_axis, limits=limits)
        self._embeddings.clear()
        self.tiles = tile_layout(self._rgb.shape[:2], self.tile, self.halo)

    def predict(self, points=None, labels=None, box=None, multimask: bool = True, *, mask=None):
        """Masks for one object, in pixels of the whole plane.

        Arguments and returns as :meth:`napari_sam.Predictor.predict`; points and boxes are
        ``(row, col)`` in the plane. Points outside the chosen tile are not seen. The logits
        are those of the tile that answered.

        Parameters
        ----------
        mask : (H, W) array-like of bool, optional
            A mask of the whole plane to refine (a mask prompt, see
            :meth:`napari_sam.Predictor.mask_prompt`); the part inside the chosen tile is used.
            With a mask alone, the tile holding the centre of its bounding box answers.
        """
        if self._rgb is None:
            raise RuntimeError("no image yet: call set_image(plane) first")
        shape = self._rgb.shape[:2]
        points = None if points is None else np.asarray(points, dtype=float).reshape(-1, 2)
        labels = (None if points is None else
                  np.ones(len(points), int) if labels is None else np.asarray(labels).ravel())
        box = None if box is None else np.asarray(box, dtype=float).ravel()
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != shape:
                raise ValueError(
                    f"mask has shape {mask.shape} but the plane has shape {shape}: give a mask "
                    "of the whole plane given to set_image"
                )
        anchor = _anchor(points, labels, box, mask)
        tile = _owner(self.tiles, anchor, shape)
        answer = self._predict_in(tile.box, points, labels, box, mask, multimask)
        best = answer[0][int(np.argmax(answer[1]))]
        if _touches_inner_edge(best, tile.box, shape):
            centre = box_centre(bounding_box(best))
            answer = self._predict_in(_centred_box(centre, self.tile, shape), points, labels, box,
                                      mask, multimask)
        return answer

    def _predict_in(self, tile_box, points, labels, box, mask, multimask):
        r0, c0, r1, c1 = tile_box
        offset = np.array([r0, c0], dtype=float)
        tile_points = tile_labels = tile_prompt_box = mask_input = None
        if points is not None:
            inside = np.all((points >= offset - 0.5) & (points <= np.array([r1, c1]) - 0.5), axis=1)
            if inside.any():
                tile_points, tile_labels = points[inside] - offset, labels[inside]
        if box is not None:
            tile_prompt_box = np.clip(box - np.tile(offset, 2), 0, [r1 - r0 - 1, c1 - c0 - 1] * 2)
        self._embed(tile_box)
        if mask is not None:
            mask_input = self.predictor.mask_prompt(mask[r0:r1, c0:c1])
        masks, scores, logits = self.predictor.predict(
            points=tile_points, labels=tile_labels, box=tile_prompt_box, mask_input=mask_input,
            multimask=multimask)
        placed = np.zeros((len(masks), *self._rgb.shape[:2]), dtype=bool)
        placed[:, r0:r1, c0:c1] = masks
        return placed, scores, logits

    def embed_tile(self, tile: Tile) -> bool:
        """Embed one tile of :attr:`tiles` now (from the store if it is there), so that a
        prompt later runs the decoder only; returns whether the encoder ran."""
        if tile.box in self._embeddings:
            return False
        misses = self.store.misses if self.store is not None else 0
        self._embed(tile.box)
        return self.store is None or self.store.misses > misses

    def embedding(self, tile: Tile):
        """The :class:`~napari_sam.engine.embeddings.Embedding` of one tile of :attr:`tiles`
        (embedded now, or kept from before, or read from the store)."""
        self._embed(tile.box)
        return self._embeddings[tile.box]

    def _embed(self, tile_box) -> None:
        if tile_box in self._embeddings:
            self.predictor.set_embedding(self._embeddings[tile_box])
            return
        r0, c0, r1, c1 = tile_box
        rgb = np.ascontiguousarray(self._rgb[r0:r1, c0:c1])
        if self.store is None:
            embedding = self.predictor.set_image(rgb)
        else:
            embedding = self.store.embed(self.predictor, rgb)
        self._embeddings[tile_box] = embedding


def _anchor(points, labels, box, mask=None) -> tuple[float, float]:
    if points is not None and (labels == 1).any():
        return tuple(points[np.flatnonzero(labels == 1)[0]])
    if box is not None:
        return box_centre(box)
    if mask is not None and mask.any():
        return box_centre(bounding_box(mask))
    raise ValueError(
        "give at least one positive point or a box (or a non-empty mask): it decides which tile "
        "answers"
    )


def _owner(tiles: list[Tile], point, shape) -> Tile:
    """The tile whose core holds the pixel nearest to ``point``."""
    row, col = (min(max(int(round(v)), 0), n - 1) for v, n in zip(point, shape))
    return next(t for t in tiles if t.core[0] <= row < t.core[2] and t.core[1] <= col < t.core[3])


def _touches_inner_edge(mask: np.ndarray, box, shape) -> bool:
    r0, c0, r1, c1 = box
    return bool((r0 > 0 and mask[r0].any()) or (c0 > 0 and mask[:, c0].any())
                or (r1 < shape[0] and mask[r1 - 1].any()) or (c1 < shape[1] and mask[:, c1 - 1].any()))


def _centred_box(centre, size: int | None, shape) -> tuple[int, int, int, int]:
    """A box of ``size`` pixels a side (at most the plane) centred on ``centre``, inside the plane."""
    box = []
    for middle, length in zip(centre, shape):
        side = length if size is None else min(size, length)
        start = int(min(max(round(middle - side / 2), 0), length - side))
        box.append((start, start + side))
    return box[0][0], box[1][0], box[0][1], box[1][1]
