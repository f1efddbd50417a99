"""Prompt samplers for automatic segmentation: where the generator asks the decoder for masks.

A sampler yields rounds of prompts for one image (or crop). Between rounds the generator
updates :class:`Coverage` with the masks it kept, so a sampler can look at what is still
missing. Coordinates are ``(row, col)`` pixels of the image given to :meth:`rounds`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max

from napari_sam.engine.detection import detect_objects


@dataclass
class PromptRound:
    """Prompts the decoder answers in one round: points or boxes, not both.

    Attributes
    ----------
    points : (N, 2) float array or None
        ``(row, col)`` of single positive clicks.
    boxes : (N, 4) float array or None
        ``(min_row, min_col, max_row, max_col)``.
    multimask : bool
        Ask for 3 masks per prompt (ambiguous clicks) or 1 (boxes).
    """

    points: np.ndarray | None = None
    boxes: np.ndarray | None = None
    multimask: bool = True

    def __len__(self) -> int:
        prompts = self.points if self.points is not None else self.boxes
        return 0 if prompts is None else len(prompts)


@dataclass
class Coverage:
    """Pixels of the current image covered by the masks kept so far; the generator updates it."""

    mask: np.ndarray
    history: list[int] = field(default_factory=list)  # covered pixels after each round

    def gain(self) -> int:
        """Pixels the last round added."""
        if not self.history:
            return 0
        return self.history[-1] - (self.history[-2] if len(self.history) > 1 else 0)


class PromptSampler(Protocol):
    """Anything with a ``rounds`` method can place prompts for the generator."""

    def rounds(self, image: np.ndarray, layer: int, coverage: Coverage) -> Iterator[PromptRound]:
        """Yield prompts for ``image`` (``(H, W, 3)`` uint8) in crop layer ``layer``."""


def point_grid(n_per_side: int) -> np.ndarray:
    """``(n^2, 2)`` ``(x, y)`` points at the centres of an ``n x n`` grid of cells in [0, 1]^2,
    in Meta's order (x fastest)."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    x, y = np.meshgrid(side, side)
    return np.stack([x.ravel(), y.ravel()], axis=-1)


def grid_points(grid_xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Normalised ``(x, y)`` grid points to ``(row, col)`` pixels of an image of ``shape``.

    Points stay within half a pixel of the image, which matters only for images with fewer
    pixels along a side than grid points.
    """
    points = (np.asarray(grid_xy) * np.array([shape[1], shape[0]]))[:, ::-1]
    return np.clip(points, -0.5, np.array(shape) - 0.5)


class GridSampler:
    """Meta's sampler: a fixed grid of single clicks per crop layer, in one round.

    Parameters
    ----------
    grids : list of (N, 2) arrays
        Normalised ``(x, y)`` points for each crop layer (Meta's ``point_grids``).
    """

    def __init__(self, grids: list[np.ndarray]) -> None:
        self.grids = grids

    @classmethod
    def per_side(cls, points_per_side: int, crop_n_layers: int = 0, downscale: int = 1) -> GridSampler:
        """``points_per_side`` points along each side, ``/ downscale**i`` in crop layer ``i``."""
        return cls([point_grid(int(points_per_side / downscale**i)) for i in range(crop_n_layers + 1)])

    def rounds(self, image: np.ndarray, layer: int, coverage: Coverage) -> Iterator[PromptRound]:
        if layer >= len(self.grids):
            raise ValueError(
                f"no point grid for crop layer {layer}: give one grid per layer "
                f"({len(self.grids)} given) or use points_per_side"
            )
        yield PromptRound(points=grid_points(self.grids[layer], image.shape[:2]))


class BoxSampler:
    """Object-aware box prompts: one box per object found by a detector, one round, no grid.

    Parameters
    ----------
    detector : callable, optional
        ``detector(image) -> (N, 4)`` boxes ``(min_row, min_col, max_row, max_col)`` for an
        ``(H, W, 3)`` uint8 image: any detector (a YOLO model, a cell detector). By default
        :func:`napari_sam.engine.detection.detect_objects`, which needs no weights and suits
        bright objects on a dark background.
    """

    def __init__(self, detector: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.detector = detector or detect_objects

    def rounds(self, image: np.ndarray, layer: int, coverage: Coverage) -> Iterator[PromptRound]:
        boxes = np.asarray(self.detector(image), dtype=np.float64)
        if boxes.size == 0:
            return
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"the detector returned an array of shape {boxes.shape}; it must return (N, 4) "
                "boxes (min_row, min_col, max_row, max_col)"
            )
        yield PromptRound(boxes=boxes, multimask=False)


class AdaptiveSampler:
    """Our sampler: a coarse grid, then new clicks only where nothing is segmented yet.

    Round 0 clicks a coarse grid, skipping flat background. Each later round finds the pixels
    that are neither covered by a kept mask (nor next to one) nor flat background nor within a
    fine grid cell of an earlier click, and clicks the most interior points of those regions
    (maxima of their distance transform, at least a fine grid cell apart). It stops when a
    round no longer adds coverage, when nothing is left to click, or after ``max_rounds``.

    Parameters
    ----------
    points_per_side : int
        The fine grid this sampler stands in for: its cell sets the spacing of new clicks and
        the size of the smallest region worth a click.
    coarse_per_side : int
        Points per side of the first grid.
    flat_tolerance : float
        A fine grid cell counts as flat background when the standard deviation of the smoothed
        image in it is below this fraction of the image's intensity range.
    min_gain : float
        Stop when a round adds less than this fraction of the image to the coverage.
    max_rounds : int
        Rounds after the coarse grid, at most.
    """

    def __init__(self, points_per_side: int = 32, coarse_per_side: int = 8, *,
                 flat_tolerance: float = 0.02, min_gain: float = 0.001, max_rounds: int = 4) -> None:
        if coarse_per_side < 1 or points_per_side < coarse_per_side:
            raise ValueError(
                f"need 1 <= coarse_per_side <= points_per_side, got {coarse_per_side} and "
                f"{points_per_side}"
            )
        self.points_per_side = points_per_side
        self.coarse_per_side = coarse_per_side
        self.flat_tolerance = flat_tolerance
        self.min_gain = min_gain
        self.max_rounds = max_rounds

    def rounds(self, image: np.ndarray, layer: int, coverage: Coverage) -> Iterator[PromptRound]:
        shape = image.shape[:2]
        cell = max(1.0, min(shape) / self.points_per_side)
        active = self.foreground(image, cell)
        clicked = np.zeros(shape, dtype=bool)

        coarse = np.round(grid_points(point_grid(self.coarse_per_side), shape) - 0.5).astype(int)
        coarse = np.clip(coarse, 0, np.array(shape) - 1)
        points = coarse[active[coarse[:, 0], coarse[:, 1]]]
        for round_index in range(self.max_rounds + 1):
            if len(points) == 0:
                return
            clicked[points[:, 0], points[:, 1]] = True
            yield PromptRound(points=points.astype(np.float64) + 0.5)
            if round_index > 0 and coverage.gain() < self.min_gain * active.size:
                return
            points = self._uncovered_peaks(active, coverage.mask, clicked, cell)

    def foreground(self, image: np.ndarray, cell: float) -> np.ndarray:
        """Pixels that are not flat background: locally varying, or enclosed by such pixels."""
        grey = image.astype(np.float32).mean(-1) if image.ndim == 3 else image.astype(np.float32)
        smooth = ndimage.gaussian_filter(grey, max(1.0, cell / 8))
        size = max(3, int(round(cell)))
        mean = ndimage.uniform_filter(smooth, size)
        variance = np.maximum(ndimage.uniform_filter(smooth * smooth, size) - mean * mean, 0)
        value_range = float(np.percentile(smooth, 99.5) - np.percentile(smooth, 0.5))
        if value_range <= 0:
            return np.zeros(grey.shape, dtype=bool)
        varying = np.sqrt(variance) > self.flat_tolerance * value_range
        return ndimage.binary_fill_holes(varying)

    def _uncovered_peaks(self, active, covered, clicked, cell: float) -> np.ndarray:
        """Most interior points of the regions still to segment, a grid cell apart."""
        margin = max(1, int(round(cell / 4)))
        todo = active & ~ndimage.binary_dilation(covered, iterations=margin)
        # A click closer than a fine grid cell to an earlier one mostly repeats it: where the
        # earlier click's mask was rejected (e.g. on background), it would be rejected again.
        todo &= ndimage.distance_transform_edt(~clicked) >= cell
        depth = ndimage.distance_transform_edt(todo)
        return peak_local_max(depth, min_distance=max(1, int(cell)), threshold_abs=cell / 4,
                              exclude_border=False)
