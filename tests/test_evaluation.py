"""Quality measures used by the benchmarks and the model card."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.training.evaluation import instance_f1


def test_instance_f1_counts_one_to_one_matches():
    truth = np.zeros((12, 12), int)
    truth[1:4, 1:4] = 1
    truth[5:9, 5:9] = 2
    truth[10:12, 0:2] = 3
    predicted = np.zeros_like(truth)
    predicted[1:4, 1:4] = 7  # exact
    predicted[5:9, 5:8] = 3  # IoU 0.75: a match
    predicted[10:12, 0:1] = 9  # IoU 0.5: not above the threshold
    predicted[0, 11] = 4  # a false positive
    scores = instance_f1(predicted, truth)
    assert scores["matched"] == 2 and scores["predicted"] == 4 and scores["true"] == 3
    assert scores["precision"] == 0.5 and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 2 / 7)


def test_instance_f1_of_empty_images():
    empty = np.zeros((5, 5), int)
    assert instance_f1(empty, empty)["f1"] == 1.0
    one = empty.copy()
    one[1:3, 1:3] = 1
    assert instance_f1(empty, one)["f1"] == 0.0 and instance_f1(one, empty)["precision"] == 0.0


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2])
def test_instance_f1_refuses_thresholds_that_are_no_iou(threshold):
    with pytest.raises(ValueError, match="between 0 and 1"):
        instance_f1(np.zeros((2, 2), int), np.zeros((2, 2), int), threshold=threshold)
