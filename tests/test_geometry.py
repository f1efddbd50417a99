"""Mask geometry: boxes and centres in (row, col) order, IoU, and the one rule for empty masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.engine.geometry import (
    WindowMask,
    bounding_box,
    box_centre,
    centre_point,
    interior_distance,
    iou,
    label_iou,
)

EMPTY = np.zeros((6, 8), bool)


def rectangle(shape=(6, 8), rows=(1, 3), cols=(2, 7)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows[0]: rows[1], cols[0]: cols[1]] = True
    return mask


def test_bounding_box_is_row_col_with_inclusive_maxima():
    assert bounding_box(rectangle()) == (1, 2, 2, 6)  # rows 1-2, columns 2-6: not (x, y)
    assert bounding_box(rectangle().T) == (2, 1, 6, 2)
    assert box_centre(bounding_box(rectangle())) == (1.5, 4.0)


def test_centre_point_is_the_most_interior_pixel_in_row_col_order():
    square = rectangle((9, 20), rows=(2, 7), cols=(10, 15))  # 5 x 5, centre row 4, column 12
    assert centre_point(square) == (4, 12)
    assert centre_point(square.T) == (12, 4)
    # a square joined to a thin tail: the click goes into the square, not the tail's middle
    shape = rectangle((12, 30), rows=(2, 11), cols=(1, 10)) | rectangle((12, 30), (5, 7), (10, 29))
    row, col = centre_point(shape)
    assert (row, col) == (6, 5)


def test_centre_point_treats_the_image_edge_as_border():
    corner = rectangle((9, 10), rows=(0, 5), cols=(0, 5))  # deepest at (0, 0) without the edge
    assert centre_point(corner) == (2, 2)


def test_centre_point_agrees_with_the_distance_transform_of_the_whole_image():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = ndi.binary_opening(rng.random((30, 40)) > 0.4)
        if not mask.any():
            continue
        whole = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        expected = np.unravel_index(int(np.argmax(whole)), mask.shape)
        assert centre_point(mask) == tuple(int(v) for v in expected)
        distances, top, left = interior_distance(mask)
        r0, c0, r1, c1 = bounding_box(mask)
        assert (top, left) == (r0, c0) and distances.shape == (r1 - r0 + 1, c1 - c0 + 1)
        np.testing.assert_array_equal(distances, whole[r0: r1 + 1, c0: c1 + 1])


@pytest.mark.parametrize("measure", [bounding_box, centre_point, interior_distance])
def test_an_empty_mask_has_no_box_or_centre(measure):
    with pytest.raises(ValueError, match="empty"):
        measure(EMPTY)


def test_iou_of_two_masks_and_of_empty_ones():
    a, b = rectangle(rows=(0, 2)), rectangle(rows=(1, 3))
    assert iou(a, b) == pytest.approx(5 / 15) and isinstance(iou(a, b), float)
    assert iou(a, a) == 1.0
    assert iou(a, EMPTY) == 0.0 and iou(EMPTY, a) == 0.0
    assert iou(EMPTY, EMPTY) == 0.0  # an empty mask overlaps nothing, not even another one


def test_iou_broadcasts_over_leading_axes():
    truths = np.stack([rectangle(rows=(0, 2)), rectangle(rows=(3, 5))])  # (2, H, W)
    candidates = np.stack([np.stack([t, ~t, EMPTY]) for t in truths])  # (2, 3, H, W)
    values = iou(candidates, truths[:, None])
    assert values.shape == (2, 3)
    np.testing.assert_array_equal(values, [[1, 0, 0], [1, 0, 0]])


def test_label_iou_pairs_every_object_of_two_label_images():
    labels = np.zeros((4, 6), int)
    labels[:2, :2], labels[2:, 3:] = 5, 2
    others = np.zeros_like(labels)
    others[:2, :1], others[3:, 3:] = 9, 4
    ids, other_ids, matrix = label_iou(labels, others)
    assert ids.tolist() == [2, 5] and other_ids.tolist() == [4, 9]
    np.testing.assert_allclose(matrix, [[0.5, 0.0], [0.0, 0.5]])
    ids, other_ids, matrix = label_iou(labels, np.zeros_like(labels))
    assert ids.tolist() == [2, 5] and other_ids.size == 0 and matrix.shape == (2, 0)


def test_window_mask_keeps_the_pixels_and_their_place():
    dense = rectangle((10, 12), rows=(3, 5), cols=(4, 9))
    mask = WindowMask.trimmed(0, 0, dense, dense.shape)
    assert (mask.top, mask.left, mask.window.shape) == (3, 4, (2, 5))
    assert mask.slices == (slice(3, 5), slice(4, 9))
    assert mask.box() == bounding_box(dense) == (3, 4, 4, 8)
    np.testing.assert_array_equal(mask.dense(), dense)
    assert mask.area == 10
    empty = WindowMask.trimmed(2, 2, np.zeros((3, 3), bool), dense.shape)
    assert empty.area == 0 and empty.window.shape == (0, 0)
    with pytest.raises(ValueError, match="empty"):
        empty.box()


def test_window_mask_overlap_and_union():
    shape = (10, 12)
    a = WindowMask.trimmed(0, 0, rectangle(shape, (1, 5), (1, 5)), shape)  # 16 pixels
    b = WindowMask.trimmed(0, 0, rectangle(shape, (3, 5), (3, 9)), shape)  # 12 pixels, 4 shared
    far = WindowMask.trimmed(0, 0, rectangle(shape, (7, 9), (9, 11)), shape)
    empty = WindowMask.trimmed(0, 0, np.zeros(shape, bool), shape)
    assert a.overlap(b) == b.overlap(a) == 4 / 12  # of the smaller mask
    assert a.overlap(far) == 0.0 and a.overlap(empty) == 0.0 and empty.overlap(empty) == 0.0
    union = a.union(b)
    np.testing.assert_array_equal(union.dense(), a.dense() | b.dense())
    assert (union.top, union.left, union.window.shape) == (1, 1, (4, 8))
