"""Outlines snapped to the blurred edge of fluorescent objects: wide and narrow outlines meet
the edge, neighbours keep their pixels, blobs of noise are not made into objects, and the one
path snaps for the shipped model only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam import Segmenter, load_model
from napari_sam.engine.image import to_rgb_uint8
from napari_sam.engine.outlines import snap_outlines
from napari_sam.synthetic import synthetic_nuclei

ROWS, COLS = np.mgrid[:64, :96]


def disc(radius: float, centre) -> np.ndarray:
    return np.hypot(ROWS - centre[0], COLS - centre[1]) <= radius


def blurred(*discs, noise: float = 2.0) -> np.ndarray:
    """Bright discs (contrast 200 over 50) seen through a PSF of sigma 1.5 px, with noise."""
    clean = 50.0 + 200.0 * sum(d.astype(float) for d in discs)
    rng = np.random.default_rng(0)
    return ndi.gaussian_filter(clean, 1.5) + rng.normal(0, noise, clean.shape)


def radius_of(mask: np.ndarray) -> float:
    return float(np.sqrt(mask.sum() / np.pi))


def test_outlines_drawn_wide_or_narrow_move_to_the_edge():
    true = disc(8, (32, 30))
    image = blurred(true)
    for drawn in (10, 11, 6):  # 2 and 3 px too wide, 2 px too narrow
        labels = disc(drawn, (32, 30)).astype(np.uint16) * 7
        snapped = snap_outlines(image, labels)
        assert snapped.dtype == labels.dtype and set(np.unique(snapped)) == {0, 7}
        assert abs(radius_of(snapped == 7) - 8) < 0.75, drawn


def test_touching_neighbours_keep_their_own_pixels():
    left, right = disc(9, (32, 30)), disc(9, (32, 48))  # touching in one column
    image = blurred(left, right)
    labels = np.where(left, 1, np.where(right, 2, 0)).astype(np.int32)
    wide = np.where(disc(12, (32, 30)) & (COLS < 39), 1, labels)  # the first drawn too wide
    snapped = snap_outlines(image, wide)
    assert not (snapped[labels == 2] == 1).any()
    assert (snapped == 2).sum() >= 0.9 * (labels == 2).sum()
    assert abs(radius_of(snapped == 1) - 9) < 1


def test_a_blob_of_noise_keeps_its_outline_and_a_bright_object_is_still_snapped():
    nucleus = disc(8, (32, 30))
    image = blurred(nucleus, noise=8.0)
    blob = disc(5, (32, 75))  # on the background: nothing to find there
    labels = np.where(disc(11, (32, 30)), 1, np.where(blob, 2, 0)).astype(np.uint8)
    snapped = snap_outlines(image, labels)
    np.testing.assert_array_equal(snapped == 2, blob)
    assert abs(radius_of(snapped == 1) - 8) < 1


def test_nothing_to_snap_and_bad_share():
    image = blurred(disc(8, (32, 30)))
    empty = np.zeros(image.shape, np.uint32)
    np.testing.assert_array_equal(snap_outlines(image, empty), empty)
    with pytest.raises(ValueError, match="share"):
        snap_outlines(image, empty, share=1.5)


@pytest.fixture(scope="module")
def nuclei_s():
    return load_model("nuclei_s", device="cpu")


def test_the_one_path_snaps_the_shipped_models_objects_and_can_be_told_not_to(nuclei_s):
    image, _ = synthetic_nuclei((160, 160), seed=4)
    drawn = Segmenter(nuclei_s, snap=False)
    drawn.set_image(image)
    raw = drawn.segment_all()
    snapped = Segmenter(nuclei_s)
    snapped.set_image(image)
    labels = snapped.segment_all()
    np.testing.assert_array_equal(labels, snap_outlines(to_rgb_uint8(image), raw))
    assert not np.array_equal(labels, raw)


def test_a_model_without_an_edge_level_is_not_snapped(tiny_model, nuclei_image):
    found = []
    for snap in (True, False):
        segmenter = Segmenter(tiny_model, diameter=None, snap=snap,
                              automatic=dict(points_per_side=4, pred_iou_thresh=0.0,
                                             stability_score_thresh=0.0))
        segmenter.set_image(nuclei_image)
        found.append(segmenter.segment_all())
    assert found[0].any()
    np.testing.assert_array_equal(found[0], found[1])
