"""Prompt simulation from ground-truth labels: points, boxes, correction clicks, batches."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.engine.prompts import box_rc_to_xy, rc_to_xy
from napari_sam.synthetic import synthetic_nuclei
from napari_sam.training.object_prompts import (
    correction_point,
    jittered_box,
    negative_points,
    positive_points,
)
from napari_sam.training.prompts import (
    PromptBatch,
    background_points,
    correction_points,
    sample_objects,
    simulate_prompts,
)


@pytest.fixture(scope="module")
def nuclei_labels() -> np.ndarray:
    _, labels = synthetic_nuclei((96, 128), seed=3, density=0.4)
    assert len(np.unique(labels)) > 8
    return labels


def hand_labels() -> np.ndarray:
    """A 20x24 image: a 6x8 rectangle (1), a touching 5x5 square (2), a 2-pixel object (3)."""
    labels = np.zeros((20, 24), dtype=np.uint32)
    labels[4:10, 3:11] = 1
    labels[4:9, 11:16] = 2
    labels[15, 20:22] = 3
    return labels


def disc(shape=(40, 40), centre=(20, 20), radius=10) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


# --------------------------------------------------------------------------- #
# objects and points
# --------------------------------------------------------------------------- #
def test_sample_objects_distinct_and_skips_tiny():
    labels = hand_labels()
    ids = sample_objects(labels, 5, np.random.default_rng(0), min_area=4)
    assert sorted(ids.tolist()) == [1, 2]  # object 3 has 2 pixels
    assert ids.dtype == labels.dtype
    assert len(sample_objects(labels, 1, np.random.default_rng(0), min_area=1)) == 1
    assert sorted(sample_objects(labels, 9, np.random.default_rng(0), min_area=1).tolist()) == [1, 2, 3]
    assert len(sample_objects(np.zeros((5, 5), np.int32), 3, np.random.default_rng(0))) == 0


def test_positive_points_inside_and_away_from_border(nuclei_labels):
    rng = np.random.default_rng(1)
    for obj in sample_objects(nuclei_labels, 6, rng):
        mask = nuclei_labels == obj
        points = positive_points(mask, 5, rng)
        assert points.shape == (5, 2) and points.dtype == np.int64
        assert mask[points[:, 0], points[:, 1]].all()
        assert len({tuple(p) for p in points.tolist()}) == 5  # distinct
    # drawn with probability ~ distance to the border: the mean distance beats uniform sampling
    mask = disc(radius=12)
    dist = ndi.distance_transform_edt(mask)
    points = positive_points(mask, 60, np.random.default_rng(2))
    assert dist[points[:, 0], points[:, 1]].mean() > dist[mask].mean()


def test_positive_points_tiny_object_gives_fewer():
    labels = hand_labels()
    points = positive_points(labels == 3, 3, np.random.default_rng(0))
    assert sorted(map(tuple, points.tolist())) == [(15, 20), (15, 21)]


def test_negative_points_outside_and_near(nuclei_labels):
    rng = np.random.default_rng(3)
    for obj in sample_objects(nuclei_labels, 6, rng):
        mask = nuclei_labels == obj
        points = negative_points(mask, 4, rng, labels=nuclei_labels, margin=5)
        assert len(points) == 4
        assert not mask[points[:, 0], points[:, 1]].any()
        dist = ndi.distance_transform_edt(~mask)
        assert (dist[points[:, 0], points[:, 1]] <= 5).all()


def test_negative_points_use_neighbours_when_labels_given():
    labels = hand_labels()
    mask = labels == 1
    points = negative_points(mask, 20, np.random.default_rng(0), labels=labels, margin=3)
    on = labels[points[:, 0], points[:, 1]]
    assert (on != 1).all()
    assert (on == 2).sum() >= 5 and (on == 0).sum() >= 5  # half of the probability each
    # an object filling the image has no outside: no negative point
    assert negative_points(np.ones((4, 4), bool), 2, np.random.default_rng(0)).shape == (0, 2)


# --------------------------------------------------------------------------- #
# boxes
# --------------------------------------------------------------------------- #
def test_background_points_are_away_from_every_object(nuclei_labels):
    rng = np.random.default_rng(0)
    points = background_points(nuclei_labels, 50, rng, margin=3)
    assert points.shape == (50, 2) and len(np.unique(points, axis=0)) == 50
    distance = ndi.distance_transform_edt(nuclei_labels == 0)
    assert (distance[points[:, 0], points[:, 1]] > 3).all()
    # only what there is: a tiny background gives fewer points, a full image none
    full = np.ones((8, 8), int)
    full[0, 0] = 0
    assert len(background_points(full, 5, rng, margin=0)) == 1
    assert background_points(np.ones((8, 8), int), 5, rng).shape == (0, 2)
    with pytest.raises(ValueError, match="margin"):
        background_points(nuclei_labels, 1, rng, margin=-1)


def test_background_clicks_join_single_click_batches(nuclei_labels):
    rng = np.random.default_rng(1)
    prompts = simulate_prompts(nuclei_labels, 4, rng, mode="point", n_points=1)
    clicks = background_points(nuclei_labels, 3, rng)
    both = prompts.with_background_clicks(clicks)
    assert both.batch == prompts.batch + 3
    assert both.points.shape == (prompts.batch + 3, 1, 2) and (both.labels == 1).all()
    np.testing.assert_array_equal(both.points[-3:, 0], clicks)
    assert not both.masks[-3:].any() and (both.ids[-3:] == 0).all()
    assert (both.ids[:-3] != 0).all()
    boxes = simulate_prompts(nuclei_labels, 4, rng, mode="box")
    with pytest.raises(ValueError, match="single clicks"):
        boxes.with_background_clicks(clicks)


def test_box_without_jitter_is_the_bounding_box(nuclei_labels):
    rng = np.random.default_rng(4)
    for obj in sample_objects(nuclei_labels, 8, rng):
        mask = nuclei_labels == obj
        box = jittered_box(mask, rng, jitter=0.0, image_shape=mask.shape)
        rows, cols = np.nonzero(mask)
        assert box.tolist() == [rows.min(), cols.min(), rows.max(), cols.max()]
        assert ((rows >= box[0]) & (rows <= box[2]) & (cols >= box[1]) & (cols <= box[3])).all()


def test_jittered_boxes_stay_in_image_and_keep_most_of_the_object(nuclei_labels):
    rng = np.random.default_rng(5)
    h, w = nuclei_labels.shape
    # objects touching the image edge too: the box is clipped
    touching = np.unique(np.concatenate([nuclei_labels[0], nuclei_labels[-1], nuclei_labels[:, 0]]))
    objects = np.union1d(touching[touching != 0], sample_objects(nuclei_labels, 5, rng))
    for obj in objects:
        mask = nuclei_labels == obj
        rows, cols = np.nonzero(mask)
        r0, c0, r1, c1 = rows.min(), cols.min(), rows.max(), cols.max()
        for _ in range(20):
            box = jittered_box(mask, rng, jitter=0.2)
            assert 0 <= box[0] <= box[2] <= h - 1 and 0 <= box[1] <= box[3] <= w - 1
            # every side stays within 0.2 * extent of the bounding box
            hh, ww = r1 - r0 + 1, c1 - c0 + 1
            assert abs(box[0] - r0) <= 0.2 * hh + 1e-9 and abs(box[2] - r1) <= 0.2 * hh + 1e-9
            assert abs(box[1] - c0) <= 0.2 * ww + 1e-9 and abs(box[3] - c1) <= 0.2 * ww + 1e-9
            # it keeps the central 60% x 60% of the bounding box, hence most of a round object
            assert box[0] <= r0 + 0.2 * hh and box[2] >= r1 - 0.2 * hh
            assert box[1] <= c0 + 0.2 * ww and box[3] >= c1 - 0.2 * ww
            inside = (rows >= box[0]) & (rows <= box[2]) & (cols >= box[1]) & (cols <= box[3])
            if min(hh, ww) >= 8:  # not a sliver cut by the image edge
                assert inside.mean() > 0.5


def test_box_max_shift_and_validation():
    mask = np.zeros((50, 50), bool)
    mask[10:40, 10:40] = True
    box = jittered_box(mask, np.random.default_rng(0), jitter=0.4, max_shift=2)
    assert np.abs(box - [10, 10, 39, 39]).max() <= 2
    with pytest.raises(ValueError, match="jitter"):
        jittered_box(mask, np.random.default_rng(0), jitter=0.6)
    with pytest.raises(ValueError, match="empty"):
        jittered_box(np.zeros((5, 5), bool), np.random.default_rng(0))


# --------------------------------------------------------------------------- #
# correction points
# --------------------------------------------------------------------------- #
def test_correction_point_false_negative_gives_positive_point():
    true = disc()
    pred = true.copy()
    pred[:, 20:] = False  # the right half of the object is missed
    (r, c), label = correction_point(pred, true, np.random.default_rng(0))
    assert label == 1
    assert true[r, c] and not pred[r, c]
    # at the maximum distance from the border of the missed half
    fn = np.pad(true & ~pred, 1)
    dist = ndi.distance_transform_edt(fn)[1:-1, 1:-1]
    assert dist[r, c] == dist.max()


def test_correction_point_false_positive_gives_negative_point():
    true = disc(radius=6)
    pred = true.copy()
    pred[2:9, 25:32] = True  # a 7x7 spill next to the object, the largest error
    pred[20, 30] = True  # a one-pixel spill too
    point, label = correction_point(pred, true, np.random.default_rng(0))
    assert label == 0
    assert point == (5, 28)  # the unique centre of the 7x7 square
    assert pred[point] and not true[point]


def test_correction_point_picks_the_largest_region():
    true = np.zeros((30, 30), bool)
    true[2:12, 2:12] = True
    pred = true.copy()
    pred[2:5, 2:5] = False  # small false negative (9 px)
    pred[20:25, 20:25] = True  # larger false positive (25 px)
    assert correction_point(pred, true, np.random.default_rng(0)) == ((22, 22), 0)


def test_correction_point_perfect_prediction_is_none():
    true = disc()
    assert correction_point(true.copy(), true, np.random.default_rng(0)) is None
    assert correction_point(np.zeros((6, 6), bool), np.zeros((6, 6), bool), np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="same shape"):
        correction_point(true, true[:-1], np.random.default_rng(0))


def test_correction_points_batch_pads_perfect_predictions():
    true = np.stack([disc(), disc(radius=5)])
    pred = true.copy()
    pred[0, :, 20:] = False
    points, labels = correction_points(pred, true, np.random.default_rng(0))
    assert points.shape == (2, 1, 2) and labels.tolist() == [[1], [-1]]
    assert points[1].tolist() == [[0.0, 0.0]]
    assert true[0][tuple(points[0, 0].astype(int))]


# --------------------------------------------------------------------------- #
# batches
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("mode", ["point", "box", "point+box", "mixed"])
def test_simulate_prompts_modes(nuclei_labels, mode):
    batch = simulate_prompts(nuclei_labels, 6, np.random.default_rng(6), mode=mode, jitter=0.1)
    assert isinstance(batch, PromptBatch)
    assert batch.batch == 6 and batch.masks.shape == (6,) + nuclei_labels.shape
    assert batch.masks.dtype == bool
    for i, obj in enumerate(batch.ids):
        assert np.array_equal(batch.masks[i], nuclei_labels == obj)
    assert batch.mode in ("point", "box", "point+box")
    if mode != "mixed":
        assert batch.mode == mode
    if "point" in batch.mode:
        assert batch.points.dtype == np.float32 and batch.labels.dtype == np.int64
        assert batch.points.shape[:2] == batch.labels.shape and batch.points.shape[1] <= 3
        assert (batch.labels[:, 0] == 1).all()  # the first point is always positive
        b, n = np.nonzero(batch.labels >= 0)
        r, c = batch.points[b, n].astype(int).T
        assert np.array_equal(batch.masks[b, r, c], batch.labels[b, n] == 1)
        pad = batch.labels == -1
        assert (batch.points[pad] == 0).all()
    else:
        assert batch.points is None and batch.labels is None
    if "box" in batch.mode:
        assert batch.boxes.shape == (6, 4) and batch.boxes.dtype == np.float32
        h, w = nuclei_labels.shape
        assert (batch.boxes >= 0).all() and (batch.boxes[:, [0, 2]] <= h - 1).all()
        assert (batch.boxes[:, [1, 3]] <= w - 1).all()
    else:
        assert batch.boxes is None


def test_simulate_prompts_points_inside_and_outside_many_seeds(nuclei_labels):
    for seed in range(5):
        batch = simulate_prompts(nuclei_labels, 8, np.random.default_rng(seed), n_points=(2, 5))
        b, n = np.nonzero(batch.labels >= 0)
        r, c = batch.points[b, n].astype(int).T
        inside = batch.masks[b, r, c]
        assert inside[batch.labels[b, n] == 1].all()
        assert not inside[batch.labels[b, n] == 0].any()


def test_simulate_prompts_box_without_jitter_contains_objects(nuclei_labels):
    batch = simulate_prompts(nuclei_labels, 8, np.random.default_rng(7), mode="box", jitter=0.0)
    for mask, box in zip(batch.masks, batch.boxes):
        rows, cols = np.nonzero(mask)
        assert box.tolist() == [rows.min(), cols.min(), rows.max(), cols.max()]


def test_simulate_prompts_pads_objects_with_fewer_points():
    labels = hand_labels()
    batch = simulate_prompts(labels, 3, np.random.default_rng(0), n_points=3, p_negative=0.0, min_area=1)
    assert batch.points.shape == (3, 3, 2)
    row = {int(obj): i for i, obj in enumerate(batch.ids)}
    assert batch.labels[row[3]].tolist() == [1, 1, -1]  # 2-pixel object: 2 points and padding
    assert batch.points[row[3], 2].tolist() == [0.0, 0.0]
    assert batch.labels[row[1]].tolist() == [1, 1, 1]


def test_simulate_prompts_is_deterministic(nuclei_labels):
    def run(seed):
        return simulate_prompts(nuclei_labels, 5, np.random.default_rng(seed), mode="mixed")

    a, b, c = run(11), run(11), run(12)
    assert a.mode == b.mode and np.array_equal(a.ids, b.ids)
    for name in ("points", "labels", "boxes"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or np.array_equal(x, y)
    assert not (np.array_equal(a.ids, c.ids) and a.mode == c.mode and (
        a.points is None or np.array_equal(a.points, c.points)))
    # the building blocks too
    mask = nuclei_labels == a.ids[0]
    assert np.array_equal(positive_points(mask, 4, np.random.default_rng(1)),
                          positive_points(mask, 4, np.random.default_rng(1)))
    assert np.array_equal(jittered_box(mask, np.random.default_rng(1)),
                          jittered_box(mask, np.random.default_rng(1)))


def test_prompt_batch_to_sam_order_and_appending_corrections(nuclei_labels):
    batch = simulate_prompts(nuclei_labels, 4, np.random.default_rng(8), mode="point+box")
    xy = batch.points_xy()
    assert xy.flags.c_contiguous and np.array_equal(xy, rc_to_xy(batch.points))
    assert np.array_equal(xy[..., 0], batch.points[..., 1])  # x is the column
    assert np.array_equal(batch.boxes_xy(), box_rc_to_xy(batch.boxes))
    pred = np.zeros_like(batch.masks)
    points, labels = correction_points(pred, batch.masks, np.random.default_rng(0))
    more = batch.with_points(points, labels)
    n = batch.points.shape[1]
    assert more.points.shape == (4, n + 1, 2) and (more.labels[:, n] == 1).all()
    boxes_only = simulate_prompts(nuclei_labels, 4, np.random.default_rng(8), mode="box")
    assert boxes_only.with_points(points, labels).mode == "point+box"


def test_simulate_prompts_validation(nuclei_labels):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="integer"):
        simulate_prompts(nuclei_labels.astype(float), 2, rng)
    with pytest.raises(ValueError, match="integer"):
        simulate_prompts(nuclei_labels > 0, 2, rng)
    with pytest.raises(ValueError, match="2D"):
        simulate_prompts(nuclei_labels[None], 2, rng)
    with pytest.raises(ValueError, match="no object"):
        simulate_prompts(np.zeros((10, 10), np.uint32), 2, rng)
    with pytest.raises(ValueError, match="min_area"):
        simulate_prompts(hand_labels(), 2, rng, min_area=1000)
    with pytest.raises(ValueError, match="mode"):
        simulate_prompts(nuclei_labels, 2, rng, mode="scribble")
    with pytest.raises(ValueError, match="n_points"):
        simulate_prompts(nuclei_labels, 2, rng, n_points=(3, 1))
    with pytest.raises(ValueError, match="n_points"):
        simulate_prompts(nuclei_labels, 2, rng, n_points=0)
    with pytest.raises(ValueError, match="n_objects"):
        simulate_prompts(nuclei_labels, 0, rng)
    with pytest.raises(ValueError, match="Generator"):
        simulate_prompts(nuclei_labels, 2, 0)
    with pytest.raises(ValueError, match="negative"):
        simulate_prompts(np.array([[-1, 2]]), 2, rng)
    with pytest.raises(ValueError, match="empty"):
        positive_points(np.zeros((4, 4), bool), 1, rng)
    with pytest.raises(ValueError, match="shape"):
        negative_points(nuclei_labels == 1, 1, rng, labels=nuclei_labels[:-1])
