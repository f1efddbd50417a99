"""Operations on masks for automatic segmentation: exact upsampling of mask windows, stability,
non-maximum suppression, small-region removal, painting and run-length encoding.

Boxes in this module are SAM's ``(x0, y0, x1, y1)`` with inclusive maxima, as Meta's automatic
mask generator computes them, because its decisions (crop-edge filter, NMS) depend on them. The
geometry of single masks (boxes, centres, IoU) is :mod:`napari_sam.engine.geometry`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.segmentation import relabel_sequential

from napari_sam.engine.geometry import WindowMask
from napari_sam.engine.prompts import box_rc_to_xy

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def paint_labels(masks: list[WindowMask], shape: tuple[int, int]) -> np.ndarray:
    """A uint32 label image of ``masks``, larger ones painted first so smaller ones stay visible.

    Ids are 1..n in painting order, renumbered after painting so that masks hidden entirely by
    smaller ones leave no gaps.
    """
    labels = np.zeros(shape, dtype=np.uint32)
    for label, i in enumerate(np.argsort([-m.area for m in masks], kind="stable"), 1):
        mask = masks[i]
        labels[mask.slices][mask.window] = label
    return relabel_sequential(labels)[0].astype(np.uint32)


class LogitUpsampler:
    """Upsample low-resolution mask logits to the image, window by window.

    SAM upsamples its logits bilinearly to the padded model input, crops the padding and
    upsamples again to the image (:meth:`napari_sam.models.sam.Sam.postprocess_masks`). Both
    steps are separable, so along each axis an output pixel is a weighted sum of a few
    neighbouring logits (its "taps"), with non-negative weights that sum to 1. This class
    evaluates those sums only inside the window that can exceed a threshold: pixels outside it
    mix only logits below the threshold. The values equal ``postprocess_masks`` up to float
    rounding (about 1e-6), at a fraction of the cost for objects smaller than the image.

    Parameters
    ----------
    low_res : tuple of int
        ``(h, w)`` of the decoder's logits.
    img_size : int
        Side of the padded model input.
    input_size, original_size : tuple of int
        Size of the resized image before padding, and of the image.
    """

    def __init__(self, low_res, img_size: int, input_size, original_size) -> None:
        self.shape = tuple(int(s) for s in original_size)
        self._rows = _Taps(_interpolation_matrix(low_res[0], img_size, input_size[0], original_size[0]))
        self._cols = _Taps(_interpolation_matrix(low_res[1], img_size, input_size[1], original_size[1]))

    def window(self, logits: np.ndarray, threshold: float) -> tuple[int, int, np.ndarray] | None:
        """Logits at image resolution inside the window of all pixels above ``threshold``.

        Parameters
        ----------
        logits : (h, w) float32 array
        threshold : float

        Returns
        -------
        (top, left, values) or None
            ``values`` is the ``(H', W')`` window of upsampled logits; None when no pixel of
            the image can exceed ``threshold``.
        """
        above = logits > threshold
        rows = self._rows.reach(above.any(1))
        cols = self._cols.reach(above.any(0))
        if rows is None or cols is None:
            return None
        (r0, r1), (c0, c1) = rows, cols
        values = self._rows.apply(logits, r0, r1)  # (H', w)
        values = self._cols.apply(values.T, c0, c1).T
        return r0, c0, values


class _Taps:
    """A banded interpolation matrix as per-output taps: the first input it reads, and weights.

    Parameters
    ----------
    matrix : (n_out, n_in) tensor
    """

    def __init__(self, matrix: np.ndarray) -> None:
        nonzero = matrix != 0
        n_out, n_in = nonzero.shape
        self.first_in = nonzero.argmax(1)
        self.last_in = n_in - 1 - nonzero[:, ::-1].argmax(1)
        reads = nonzero.any(0)
        self.first_out = np.where(reads, nonzero.argmax(0), -1)
        self.last_out = np.where(reads, n_out - 1 - nonzero[::-1].argmax(0), -1)
        taps = int((self.last_in - self.first_in).max()) + 1
        # Weights padded to a fixed number of taps; padded taps read a valid index with weight 0.
        wanted = self.first_in[:, None] + np.arange(taps)
        self.index = np.minimum(wanted, n_in - 1)
        self.weights = np.take_along_axis(matrix, self.index, 1)
        self.weights[wanted > self.last_in[:, None]] = 0

    def reach(self, used: np.ndarray) -> tuple[int, int] | None:
        """Outputs ``[o0, o1)`` that read any of the ``used`` inputs."""
        index = np.flatnonzero(used & (self.first_out >= 0))
        if index.size == 0:
            return None
        return int(self.first_out[index[0]]), int(self.last_out[index[-1]]) + 1

    def apply(self, values: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Outputs ``start:stop`` along the first axis of ``(n_in, m)`` values."""
        index, weights = self.index[start:stop], self.weights[start:stop]
        out = weights[:, :1] * values[index[:, 0]]
        for tap in range(1, index.shape[1]):
            out += weights[:, tap: tap + 1] * values[index[:, tap]]
        return out


def _interpolation_matrix(n_low: int, img_size: int, n_input: int, n_out: int) -> np.ndarray:
    """``(n_out, n_low)`` weights of SAM's two bilinear steps along one axis."""
    basis = torch.eye(n_low, dtype=torch.float32)[:, None, :, None]
    weights = F.interpolate(basis, (img_size, 1), mode="bilinear", align_corners=False)
    weights = weights[:, :, :n_input]
    if n_input != n_out:
        weights = F.interpolate(weights, (n_out, 1), mode="bilinear", align_corners=False)
    return weights[:, 0, :, 0].T.numpy()


def meta_box(mask: WindowMask) -> np.ndarray:
    """Meta's box of a mask, ``(x0, y0, x1, y1)`` with maxima inclusive; zeros for an empty mask,
    as Meta's ``batched_mask_to_box`` gives (its crop-edge filter and NMS see those zeros)."""
    if not mask.window.any():
        return np.zeros(4, dtype=np.int64)
    return box_rc_to_xy(np.array(mask.box(), dtype=np.int64))


def stability_score(logits, threshold: float, offset: float):
    """IoU between the masks thresholded at ``threshold + offset`` and ``threshold - offset``.

    Parameters
    ----------
    logits : (..., H, W) array or tensor
    threshold, offset : float

    Returns
    -------
    (...) float array or tensor
        NaN where both masks are empty, as in Meta's generator (such masks fail any filter).
    """
    inner = (logits > threshold + offset).sum(axis=(-2, -1))
    outer = (logits > threshold - offset).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore"):
        return inner / outer


def box_iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of ``(N, 4)`` against ``(M, 4)`` ``(x0, y0, x1, y1)`` float32 boxes (area = w * h)."""
    x0 = np.maximum(boxes[:, None, 0], others[None, :, 0])
    y0 = np.maximum(boxes[:, None, 1], others[None, :, 1])
    x1 = np.minimum(boxes[:, None, 2], others[None, :, 2])
    y1 = np.minimum(boxes[:, None, 3], others[None, :, 3])
    inter = np.maximum(x1 - x0, np.float32(0)) * np.maximum(y1 - y0, np.float32(0))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_other = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area[:, None] + area_other[None, :] - inter)


def nms(boxes, scores, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression, with the decisions and order of torchvision's.

    A box is dropped when its IoU with a kept, higher-scoring box exceeds ``iou_threshold``.
    Ties (e.g. masks of equal crops, scored by crop area) are broken as torchvision breaks them:
    a stable sort for the suppression, and for more than 1000 boxes a final unstable re-sort.

    Parameters
    ----------
    boxes : (N, 4) array-like
        ``(x0, y0, x1, y1)``.
    scores : (N,) array-like
    iou_threshold : float

    Returns
    -------
    (K,) int array
        Indices of the kept boxes, highest score first.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    order = torch.sort(scores, descending=True, stable=True).indices.numpy()
    suppressed = np.zeros(len(boxes), dtype=bool)
    kept = []
    for i in order:
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= box_iou_matrix(boxes[i: i + 1], boxes)[0] > iou_threshold
    kept = np.array(kept, dtype=np.int64)
    if boxes.size > 4000:  # torchvision's batched_nms re-sorts the kept boxes above this size
        ascending = np.sort(kept)
        kept = ascending[torch.sort(scores[ascending], descending=True).indices.numpy()]
    return kept


def remove_small_regions(mask: np.ndarray, min_area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``min_area``.

    Regions are 8-connected. When every island is small, the largest one stays.

    Returns
    -------
    mask : (H, W) bool array
    changed : bool
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', not {mode!r}")
    holes = mode == "holes"
    regions, n = ndimage.label(mask ^ holes, structure=EIGHT_CONNECTED)
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    small = np.flatnonzero(sizes < min_area) + 1
    if small.size == 0:
        return mask, False
    if holes:  # label 0 is the mask itself
        return np.isin(regions, np.concatenate([[0], small])), True
    keep = np.setdiff1d(np.arange(1, n + 1), small)
    if keep.size == 0:
        keep = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, keep), True


def mask_to_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO run-length encoding (column-major runs, starting with background)."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [h, w], "counts": counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    """The ``(H, W)`` bool mask of an uncompressed COCO run-length encoding."""
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape(w, h).T


def coco_rle(mask: np.ndarray) -> dict:
    """Compressed COCO run-length encoding (needs ``pycocotools``), JSON-serialisable."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError as error:
        raise ImportError(
            "output_mode='coco_rle' needs pycocotools: pip install pycocotools "
            "(or use output_mode='uncompressed_rle' or 'binary_mask')"
        ) from error
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
