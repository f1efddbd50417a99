"""Instance F1 below an IoU of 0.5 (one-to-one assignment) and on label volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.synthetic import synthetic_nuclei
from napari_sam.training.evaluation import instance_f1


def strips(*spans: tuple[int, int]) -> np.ndarray:
    """A 1 x 20 label image with object ``k + 1`` on columns ``spans[k]`` (inclusive)."""
    labels = np.zeros((1, 20), int)
    for k, (start, stop) in enumerate(spans):
        labels[0, start:stop + 1] = k + 1
    return labels


def test_low_threshold_matches_one_to_one_as_many_as_possible():
    truth = strips((0, 9), (10, 19))  # A, B
    # P1 overlaps A (IoU 7/15) and B (5/17), P2 only A (3/10): taking the best pair first
    # (P1-A) leaves one match, counting every pair above 0.25 gives three for two objects
    predicted = strips((3, 14), (0, 2))
    scores = instance_f1(predicted, truth, threshold=0.25)
    assert scores["matched"] == 2 and scores["f1"] == 1.0
    assert instance_f1(predicted, truth, threshold=0.4)["matched"] == 1  # P1-A only
    assert instance_f1(predicted, truth, threshold=0.5)["matched"] == 0


def test_the_two_ways_agree_at_one_half():
    truth = synthetic_nuclei((128, 128), seed=3, density=0.5)[1]
    predicted = ndi.grey_dilation(np.roll(truth, 2, axis=1), size=3)  # crowded, overlapping
    below = instance_f1(predicted, truth, threshold=0.5 - 1e-9)  # by assignment
    at = instance_f1(predicted, truth, threshold=0.5)  # every pair above 0.5
    assert 0 < at["matched"] == below["matched"] < at["true"]
    low = instance_f1(predicted, truth, threshold=0.05)
    assert below["matched"] < low["matched"] <= min(low["predicted"], low["true"])


def test_volumes_are_matched_as_3d_objects():
    truth = np.zeros((8, 10, 10), np.uint32)
    truth[0:6, 2:6, 2:6] = 1
    truth[6:8, 2:6, 2:6] = 2  # right under object 1, touching it
    predicted = np.zeros_like(truth)
    predicted[0:4, 2:6, 2:6] = 1_000_001  # object 1 cut in two along z
    predicted[4:6, 2:6, 2:6] = 5_000_002
    predicted[6:8, 2:6, 2:6] = 7  # object 2
    predicted[[0, 7], 9, 9] = 9  # one false object in two distant planes
    scores = instance_f1(predicted, truth)
    assert scores["predicted"] == 4 and scores["true"] == 2
    assert scores["matched"] == 2  # the larger part (IoU 4/6) and object 2
    assert scores["f1"] == pytest.approx(2 * 2 / 6)
    # the smaller part (IoU 2/6) is a candidate at 0.25, but object 1 is taken already
    assert instance_f1(predicted, truth, threshold=0.25)["matched"] == 2
    # joined into one object, as a 3D method should: IoU 1 and F1 of two objects out of three
    predicted[predicted == 5_000_002] = 1_000_001
    assert instance_f1(predicted, truth)["f1"] == pytest.approx(2 * 2 / 5)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="differ in shape"):
        instance_f1(np.zeros((2, 4, 4), int), np.zeros((4, 4), int))
