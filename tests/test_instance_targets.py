"""Training targets of the instance decoder, against torch-em's per-object distance transform
with micro-sam's settings (tolerance 1e-5: float32 distances)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.synthetic import synthetic_nuclei
from napari_sam.training.instance_targets import distance_targets

TOL = 1e-5


def c_shape() -> np.ndarray:
    """An object whose centroid lies outside it."""
    labels = np.zeros((40, 40), int)
    labels[5:35, 5:12] = labels[5:12, 5:35] = labels[28:35, 5:35] = 3
    return labels


def diagonal_pair() -> np.ndarray:
    """Two labels touching at a corner, the same id, and a speck under micro-sam's min size."""
    labels = np.zeros((30, 30), int)
    labels[2:12, 2:12] = labels[12:22, 12:22] = 1
    labels[25:28, 0:3] = 2
    return labels


@pytest.mark.parametrize("labels", [
    synthetic_nuclei((256, 256), seed=0)[1], synthetic_nuclei((200, 180), seed=5)[1], c_shape(),
    diagonal_pair(), np.zeros((16, 16), int),
], ids=["nuclei", "nuclei-2", "c-shape", "diagonal", "empty"])
def test_targets_equal_torch_ems_per_object_distances(labels):
    label_transforms = pytest.importorskip(
        "torch_em.transform.label", reason="torch-em (micro-sam's training code) is not installed")
    reference = label_transforms.PerObjectDistanceTransform(
        distances=True, boundary_distances=True, directed_distances=False, foreground=True,
        instances=False, min_size=25)
    expected = reference(labels)
    found = distance_targets(labels)
    assert found.shape == expected.shape and found.dtype == np.float32
    assert np.abs(found - expected).max() <= TOL


def test_targets_are_zero_at_the_centre_and_one_at_the_edge():
    labels = np.zeros((21, 21), int)
    labels[3:18, 3:18] = 7
    foreground, to_centre, to_boundary = distance_targets(labels)
    assert foreground.sum() == 15 * 15 and foreground[0, 0] == 0
    assert to_centre[10, 10] == 0 and to_boundary[10, 10] == 0
    assert np.isclose(to_centre[3:18, 3:18].max(), 1) and np.isclose(to_boundary[3, 10], 1)
    assert (to_centre[foreground == 0] == 1).all() and (to_boundary[foreground == 0] == 1).all()


def test_an_object_under_the_minimum_size_is_background():
    labels = np.zeros((20, 20), int)
    labels[2:6, 2:6] = 1  # 16 pixels
    assert distance_targets(labels)[0].sum() == 0
    assert distance_targets(labels, min_size=16)[0].sum() == 16


@pytest.mark.parametrize("labels, match", [
    (np.zeros((4, 4, 4), int), "2D integer array"),
    (np.zeros((4, 4), float), "2D integer array"),
])
def test_bad_labels_are_refused(labels, match):
    with pytest.raises(ValueError, match=match):
        distance_targets(labels)
