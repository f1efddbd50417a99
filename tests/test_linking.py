"""Linking slice-by-slice labels into 3D objects (napari_sam.volume.linking)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_sam.volume.linking import LinkSummary, link_slices

SHAPE = (12, 48, 64)


def synthetic_truth(gap: bool = False) -> np.ndarray:
    """Four separate 3D objects, numbered 1-4: two ellipsoids, a slanted and a straight tube.

    With ``gap``, the slanted tube (3) is missing from slice 6.
    """
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    objects = [
        ((z - 3) / 3.5) ** 2 + ((y - 12) / 8) ** 2 + ((x - 12) / 8) ** 2 <= 1,  # slices 0-6
        ((z - 8) / 3.5) ** 2 + ((y - 12) / 9) ** 2 + ((x - 40) / 7) ** 2 <= 1,  # slices 5-11
        (y - 34) ** 2 + (x - 8 - 2 * z) ** 2 <= 25,  # moves 2 px per slice, all slices
        ((y - 36) ** 2 + (x - 52) ** 2 <= 16) & (z >= 2) & (z <= 9),
    ]
    assert sum(o.astype(int) for o in objects).max() == 1  # no two objects touch
    truth = np.zeros(SHAPE, dtype=np.uint32)
    for number, mask in enumerate(objects, start=1):
        truth[mask] = number
    if gap:
        truth[6][truth[6] == 3] = 0
    return truth


def per_slice(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """Slice-by-slice labels: slice z numbers its objects z * 1000 + k, k in a random order."""
    rng = np.random.default_rng(seed)
    labels = np.zeros_like(truth)
    for z, plane in enumerate(truth):
        present = np.unique(plane[plane > 0])
        lut = np.zeros(truth.max() + 1, dtype=truth.dtype)
        lut[present] = z * 1000 + rng.permutation(present.size) + 1
        labels[z] = lut[plane]
    return labels


def expected_linking(truth: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each true object labelled everywhere with its id in the first slice that holds it."""
    expected = np.zeros_like(labels)
    for number in np.unique(truth[truth > 0]):
        mask = truth == number
        first = np.flatnonzero(mask.any(axis=(1, 2)))[0]
        expected[mask] = labels[first][mask[first]][0]
    return expected


def strips(*slices, width: int = 20) -> np.ndarray:
    """A (Z, 3, width) volume of full-height strips: slice z holds strips ``(x0, x1)`` numbered
    z * 1000 + 1, z * 1000 + 2, ... in the order given."""
    volume = np.zeros((len(slices), 3, width), dtype=np.uint32)
    for z, intervals in enumerate(slices):
        for k, (x0, x1) in enumerate(intervals, start=1):
            volume[z, :, x0:x1] = z * 1000 + k
    return volume


def ids_along_row(volume: np.ndarray, x: int) -> list[int]:
    """The id at column x of every slice."""
    return [int(v) for v in volume[:, 0, x]]


class Recorder:
    """A numpy-like array that records which slices are read and written."""

    def __init__(self, array):
        self.array, self.reads, self.writes = array, [], []
        self.shape, self.dtype = array.shape, array.dtype

    def __getitem__(self, z):
        self.reads.append(z)
        return self.array[z].copy()

    def __setitem__(self, z, value):
        self.writes.append(z)
        self.array[z] = value


class Stop(Exception):
    pass


def stop_after(k: int):
    """A progress callback that interrupts the run once k slices are done."""
    def progress(done, total):
        if done == k:
            raise Stop
    return progress


@pytest.fixture
def zarr_labels(tmp_path):
    def make(values):
        array = zarr.create_array(store=tmp_path / "l.zarr", shape=values.shape,
                                  chunks=(1,) + values.shape[1:], dtype="uint32")
        array[:] = values
        return array
    return make


# --------------------------------------------------------------------------- #
# 3D objects get one id each
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", [0, 1])
def test_each_3d_object_gets_one_id_its_first_slice_id(seed):
    truth = synthetic_truth()
    labels = per_slice(truth, seed)
    expected = expected_linking(truth, labels)
    n_2d = sum(np.unique(plane[plane > 0]).size for plane in truth)

    summary = link_slices(labels)

    np.testing.assert_array_equal(labels, expected)
    assert summary == LinkSummary(n_slices=12, n_objects_2d=n_2d, n_objects_3d=4, n_links=n_2d - 4)


def test_progress_is_reported_after_each_slice():
    calls = []
    link_slices(per_slice(synthetic_truth()), progress=lambda *args: calls.append(args))
    assert calls == [(z, 12) for z in range(1, 13)]


def test_each_slice_is_read_once_and_written_only_if_it_changed():
    labels = Recorder(per_slice(synthetic_truth()))
    link_slices(labels)
    assert labels.reads == list(range(12))
    assert 0 not in labels.writes and labels.writes == sorted(set(labels.writes))

    labels.reads, labels.writes = [], []
    link_slices(labels)
    assert labels.reads == list(range(12))
    assert labels.writes == []


def test_2d_array_is_one_slice_with_nothing_to_link():
    plane = strips([(0, 5), (8, 12), (15, 20)])[0]
    before = plane.copy()
    assert link_slices(plane) == LinkSummary(1, 3, 3, 0)
    np.testing.assert_array_equal(plane, before)


# --------------------------------------------------------------------------- #
# Gaps, touching objects, splits
# --------------------------------------------------------------------------- #
def test_object_keeps_its_id_across_a_one_slice_gap():
    volume = strips([(2, 10)], [(2, 10)], [], [(3, 10)], [(3, 11)])
    summary = link_slices(volume)
    assert ids_along_row(volume, 5) == [1, 1, 0, 1, 1]
    assert summary == LinkSummary(5, 4, 1, 3)


def test_a_two_slice_gap_needs_max_gap_2():
    volume = strips([(2, 10)], [(2, 10)], [], [], [(2, 10)], [(2, 10)])
    linked = volume.copy()
    link_slices(linked)
    assert ids_along_row(linked, 5) == [1, 1, 0, 0, 4001, 4001]
    link_slices(volume, max_gap=2)
    assert ids_along_row(volume, 5) == [1, 1, 0, 0, 1, 1]


def test_max_gap_0_links_only_neighbouring_slices():
    volume = strips([(2, 10)], [], [(2, 10)])
    link_slices(volume, max_gap=0)
    assert ids_along_row(volume, 5) == [1, 0, 2001]


def test_gap_links_only_to_objects_that_end_before_the_gap():
    # Slice 2's strip overlaps nothing in slice 1 and the strip (0, 20) of slice 0 (IoU 0.4).
    # That strip continues in slice 1, so slice 2's strip starts a new object ...
    continued = strips([(0, 20)], [(0, 10)], [(12, 20)])
    link_slices(continued)
    assert ids_along_row(continued, 15) == [1, 0, 2001]
    # ... whereas an object that ended in slice 0 is taken up again.
    ended = strips([(0, 10), (10, 20)], [(0, 10)], [(12, 20)])
    link_slices(ended)
    assert ids_along_row(ended, 15) == [2, 0, 2]


def iou(a, b) -> float:
    return (a & b).sum() / (a | b).sum()


def test_optimal_assignment_keeps_touching_objects_apart_where_greedy_swaps_them():
    # Two touching objects, A wide and B narrow; in slice 1 the boundary between them is
    # misplaced. The best single pair is (P, A): greedy matching takes it and leaves Q and B
    # unlinked, then swaps the ids in slice 2. The best assignment is Q-A, P-B.
    volume = strips([(0, 14), (14, 19)], [(0, 5), (5, 19)], [(0, 14), (14, 19)], width=19)
    a, b, q, p = volume[0] == 1, volume[0] == 2, volume[1] == 1001, volume[1] == 1002
    assert iou(p, a) > max(iou(p, b), iou(q, a)) and iou(q, b) == 0
    assert iou(q, a) + iou(p, b) > iou(p, a)

    summary = link_slices(volume)

    assert ids_along_row(volume, 2) == [1, 1, 1]
    assert ids_along_row(volume, 16) == [2, 2, 2]
    assert summary == LinkSummary(3, 6, 2, 4)


def test_split_object_continues_in_one_part_and_starts_a_new_one():
    volume = strips([(0, 20)], [(0, 12), (12, 20)], [(0, 12), (12, 20)])
    summary = link_slices(volume)
    assert ids_along_row(volume, 5) == [1, 1, 1]  # the larger part (IoU 0.6) continues
    assert ids_along_row(volume, 15) == [1, 1002, 1002]  # the other (0.4) keeps its own id
    assert summary == LinkSummary(3, 5, 2, 3)


def test_ties_are_broken_by_position_not_by_id():
    # Both halves of slice 1 overlap slice 0's strip equally (IoU 1/3): the same half continues
    # whatever the ids, so that a linked slice (other ids) links the same way again.
    for order in [[(0, 10), (10, 20)], [(10, 20), (0, 10)]]:
        volume = strips([(5, 15)], order)
        link_slices(volume)
        assert volume[1, 0, 2] == 1 and volume[1, 0, 15] != 1


def test_pairs_below_the_iou_threshold_are_not_linked():
    volume = strips([(0, 20)], [(0, 4)])  # IoU 0.2
    link_slices(volume)
    assert ids_along_row(volume, 2) == [1, 1001]
    volume = strips([(0, 20)], [(0, 4)])
    link_slices(volume, iou_threshold=0.2)
    assert ids_along_row(volume, 2) == [1, 1]


# --------------------------------------------------------------------------- #
# Idempotent and resumable; zarr
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def gap_volume():
    """Per-slice labels of the synthetic objects with a gap, and one uninterrupted linking."""
    labels = per_slice(synthetic_truth(gap=True))
    linked = labels.copy()
    summary = link_slices(linked)
    np.testing.assert_array_equal(linked, expected_linking(synthetic_truth(gap=True), labels))
    return labels, linked, summary


def test_running_twice_changes_nothing(gap_volume):
    labels, linked, summary = gap_volume
    again = linked.copy()
    assert link_slices(again) == summary
    np.testing.assert_array_equal(again, linked)


def test_zarr_array_is_linked_like_numpy(gap_volume, zarr_labels):
    labels, linked, summary = gap_volume
    array = zarr_labels(labels)
    assert link_slices(array) == summary
    np.testing.assert_array_equal(array[:], linked)


@pytest.mark.parametrize("k", [1, 6, 7, 11])
def test_interrupted_zarr_run_resumes_to_the_uninterrupted_result(gap_volume, zarr_labels, k):
    labels, linked, summary = gap_volume
    array = zarr_labels(labels)
    with pytest.raises(Stop):
        link_slices(array, progress=stop_after(k))
    np.testing.assert_array_equal(array[:k], linked[:k])
    np.testing.assert_array_equal(array[k:], labels[k:])

    assert link_slices(array) == summary
    np.testing.assert_array_equal(array[:], linked)


def test_linking_a_prefix_first_gives_the_uninterrupted_result(gap_volume):
    labels, linked, summary = gap_volume
    volume = labels.copy()
    link_slices(volume[:7])  # a view: writes into volume
    assert link_slices(volume) == summary
    np.testing.assert_array_equal(volume, linked)


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("array, match", [
    (np.zeros((2, 3, 4), np.float32), r"dtype float32.*astype"),
    (np.zeros((2, 3, 4), bool), r"dtype bool"),
    (np.zeros((2, 3, 4, 5), np.uint32), r"shape \(2, 3, 4, 5\).*one channel or time point"),
    (np.zeros(5, np.uint32), r"shape \(5,\)"),
])
def test_wrong_array_is_refused(array, match):
    with pytest.raises(ValueError, match=match):
        link_slices(array)


def test_non_array_is_refused():
    with pytest.raises(TypeError, match="np.asarray"):
        link_slices([[[1]]])


@pytest.mark.parametrize("settings, match", [
    (dict(iou_threshold=0), "iou_threshold"),
    (dict(iou_threshold=1.5), "iou_threshold"),
    (dict(max_gap=-1), "max_gap"),
    (dict(max_gap=1.5), "max_gap"),
])
def test_wrong_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        link_slices(np.zeros((2, 3, 4), np.uint32), **settings)


def test_ids_reused_across_slices_are_refused_before_anything_is_written():
    # Labelled 1, 2, ... in every slice: slice 1's new object reuses id 1 of slice 0.
    volume = strips([(0, 5), (10, 15)], [(10, 15), (17, 20)]) % 1000
    before = volume.copy()
    with pytest.raises(ValueError, match="unique in the whole volume"):
        link_slices(volume)
    np.testing.assert_array_equal(volume, before)


def test_relinking_with_other_settings_is_refused():
    volume = strips([(0, 14), (14, 19)], [(0, 5), (5, 19)], width=19)
    link_slices(volume)
    with pytest.raises(ValueError, match="per-slice labels"):
        link_slices(volume, iou_threshold=0.5)
