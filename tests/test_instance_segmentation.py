"""AIS post-processing: an instance decoder's maps to labels, equal to micro-sam's; edge cases."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import numpy as np
import pytest
from scipy import ndimage

from napari_sam.engine.geometry import label_iou
from napari_sam.engine.instances import labels_from_maps


def decoder_maps(labels: np.ndarray, *, seed: int, noise: float = 0.05):
    """The three maps a well-trained decoder predicts for ``labels``, made as micro-sam makes its
    training targets (distances per object, normalised, 1 outside objects), then blurred and
    noised a little like a network's output."""
    rng = np.random.default_rng(seed)
    center = np.ones(labels.shape, np.float32)
    boundary = np.ones(labels.shape, np.float32)
    for index, window in enumerate(ndimage.find_objects(labels), 1):
        if window is None:  # a disc hidden by later ones
            continue
        mask = labels[window] == index
        inner = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        centre = np.unravel_index(np.argmax(inner), mask.shape)
        rows, cols = np.indices(mask.shape)
        to_centre = np.hypot(rows - centre[0], cols - centre[1])
        center[window][mask] = (to_centre / to_centre[mask].max())[mask]
        boundary[window][mask] = ((inner.max() - inner) / inner.max())[mask]
    maps = [(labels > 0).astype(np.float32), center, boundary]
    return [
        np.clip(ndimage.gaussian_filter(m, 1) + noise * rng.standard_normal(m.shape), 0, 1)
        .astype(np.float32)
        for m in maps
    ]


def discs(shape, centres_and_radii) -> np.ndarray:
    """Labels of discs, later ones over earlier ones where they overlap (so they touch)."""
    rows, cols = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for index, (row, col, radius) in enumerate(centres_and_radii, 1):
        labels[np.hypot(rows - row, cols - col) < radius] = index
    return labels


def random_discs(shape, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return discs(shape, zip(rng.uniform(0, shape[0], count), rng.uniform(0, shape[1], count),
                            rng.uniform(6, 18, count)))


def smooth_random_maps(shape, seed: int):
    """Maps with no objects drawn in: smooth noise scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    maps = []
    for sigma in (6, 4, 4):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        maps.append(((field - field.min()) / np.ptp(field)).astype(np.float32))
    return maps


def assert_same_instances(ours: np.ndarray, theirs: np.ndarray, min_iou: float = 0.99) -> None:
    ids, their_ids, iou = label_iou(ours, theirs)
    assert len(ids) == len(their_ids) > 0
    best = iou.max(axis=1)
    assert best.min() >= min_iou, f"worst IoU {best.min():.4f}"
    assert len(set(iou.argmax(axis=1))) == len(ids), "two of ours match one of theirs"


# micro-sam's module imports, at its top, packages its post-processing never calls; where they
# are not installed they are stood in for (see micro_sam_instances).
UNUSED_BY_POSTPROCESSING = (
    "matplotlib", "matplotlib.pyplot", "kornia_rs",
    "sklearn", "sklearn.ensemble", "sklearn.cluster", "sklearn.decomposition",
)


class _Unused(types.ModuleType):
    """A module whose every attribute is another such module: enough to be imported from."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unused(f"{self.__name__}.{name}")


@pytest.fixture(scope="module")
def micro_sam_instances():
    """micro-sam's AIS post-processing (``InstanceSegmentationWithDecoder.generate``) as a
    function of the three maps and its keyword arguments."""
    pytest.importorskip("micro_sam", reason="micro-sam 1.8.14 (the reference) is not installed")
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in UNUSED_BY_POSTPROCESSING
                     if importlib.util.find_spec(n.split(".")[0]) is None]:
            stand_in = _Unused(name)
            stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)
            patch.setitem(sys.modules, name, stand_in)
        from micro_sam.instance_segmentation import InstanceSegmentationWithDecoder

    def run(foreground, center_distances, boundary_distances, **settings):
        segmenter = InstanceSegmentationWithDecoder(predictor=None, decoder=None)
        segmenter.set_state(dict(foreground=foreground, center_distances=center_distances,
                                 boundary_distances=boundary_distances))
        return segmenter.generate(**settings)

    return run


@pytest.mark.parametrize("seed", range(4))
def test_same_instances_as_micro_sam_on_maps_of_touching_discs(micro_sam_instances, seed):
    maps = decoder_maps(random_discs((256, 300), count=25, seed=seed), seed=seed)
    assert_same_instances(labels_from_maps(*maps), micro_sam_instances(*maps))


@pytest.mark.slow
def test_same_instances_as_micro_sam_on_a_1024_plane_of_300_discs(micro_sam_instances):
    maps = decoder_maps(random_discs((1024, 1024), count=300, seed=0), seed=0)
    assert_same_instances(labels_from_maps(*maps), micro_sam_instances(*maps))


@pytest.mark.parametrize(
    "settings",
    [
        dict(min_size=150),
        dict(center_distance_threshold=0.3, boundary_distance_threshold=0.6,
             foreground_threshold=0.4),
        dict(foreground_smoothing=2.5, distance_smoothing=0.7, min_size=40),
    ],
)
def test_same_instances_as_micro_sam_with_other_settings(micro_sam_instances, settings):
    maps = decoder_maps(random_discs((200, 240), count=18, seed=7), seed=7, noise=0.1)
    ours, theirs = labels_from_maps(*maps, **settings), micro_sam_instances(*maps, **settings)
    assert_same_instances(ours, theirs)


def test_without_smoothing_only_pixels_on_plateaus_may_go_to_another_neighbour(micro_sam_instances):
    # Noisy maps clipped at 1 have plateaus of equal height. Where two objects reach a plateau
    # pixel at once, micro-sam's flood (last in, first out within a level) and scikit-image's
    # (first in, first out) may give it to different ones: the same objects, a pixel apart.
    maps = decoder_maps(random_discs((200, 240), count=18, seed=7), seed=7, noise=0.1)
    settings = dict(foreground_smoothing=0, distance_smoothing=0)
    ours, theirs = labels_from_maps(*maps, **settings), micro_sam_instances(*maps, **settings)
    ids, their_ids, iou = label_iou(ours, theirs)
    assert len(ids) == len(their_ids) and (iou.argmax(axis=1) == np.arange(len(ids))).all()
    differ = ours != theirs
    assert differ.sum() <= 5 and (maps[2][differ] == 1).all()


@pytest.mark.parametrize("seed", range(3))
def test_same_instances_as_micro_sam_on_smooth_random_maps(micro_sam_instances, seed):
    maps = smooth_random_maps((192, 224), seed=seed)
    settings = dict(min_size=30)
    ours, theirs = labels_from_maps(*maps, **settings), micro_sam_instances(*maps, **settings)
    assert_same_instances(ours, theirs)


def test_touching_discs_come_out_as_separate_objects():
    truth = discs((80, 120), [(40, 30, 16), (40, 58, 14), (40, 84, 13)])
    labels = labels_from_maps(*decoder_maps(truth, seed=0))
    ids, _, iou = label_iou(labels, truth)
    assert len(ids) == 3 and iou.max(axis=1).min() > 0.85


def test_min_size_removes_small_objects_and_keeps_ids_consecutive():
    truth = discs((80, 120), [(20, 20, 6), (40, 60, 15), (60, 100, 12)])
    maps = decoder_maps(truth, seed=1, noise=0)
    assert labels_from_maps(*maps).max() == 3
    labels = labels_from_maps(*maps, min_size=200)
    assert np.unique(labels).tolist() == [0, 1, 2]
    assert labels[20, 20] == 0 and labels[40, 60] == 1 and labels[60, 100] == 2


@pytest.mark.parametrize(
    "maps",
    [
        pytest.param([np.zeros((40, 50), np.float32)] * 3, id="empty"),
        pytest.param([np.full((40, 50), 0.3, np.float32)] * 3, id="constant-background"),
        pytest.param([np.full((40, 50), 0.9, np.float32), np.ones((40, 50)), np.ones((40, 50))],
                     id="constant-foreground-without-seeds"),
        pytest.param([np.full((40, 50), np.nan, np.float32)] * 3, id="nan"),
        pytest.param([np.zeros((0, 0))] * 3, id="no-pixels"),
    ],
)
def test_maps_without_objects_give_empty_labels(maps):
    labels = labels_from_maps(*maps)
    assert labels.dtype == np.uint32 and labels.shape == maps[0].shape and not labels.any()


def test_pixels_that_are_not_finite_are_background():
    truth = discs((60, 120), [(30, 30, 15), (30, 90, 15)])
    maps = decoder_maps(truth, seed=2, noise=0)
    maps[0][:, 60:] = np.nan
    maps[2][0, 0] = np.inf
    labels = labels_from_maps(*maps)
    assert labels.max() == 1 and labels[30, 30] == 1 and not labels[:, 60:].any()


def test_the_maps_may_be_any_real_dtype():
    truth = discs((60, 80), [(30, 40, 15)])
    maps = decoder_maps(truth, seed=3, noise=0)
    expected = labels_from_maps(*maps)
    np.testing.assert_array_equal(labels_from_maps(*(m.astype(np.float64) for m in maps)), expected)
    np.testing.assert_array_equal(labels_from_maps(truth > 0, *maps[1:]), expected)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(foreground=np.zeros((3, 40, 50))), "pass the decoder's three output channels"),
        (dict(center_distances=np.zeros((40, 51))), "differ in shape"),
        (dict(boundary_distances=np.full((40, 50), "a")), "must hold real numbers"),
        (dict(foreground_threshold=float("nan")), "foreground_threshold must be a finite number"),
        (dict(center_distance_threshold="0.5"), "center_distance_threshold must be a finite"),
        (dict(distance_smoothing=-1), "distance_smoothing is a Gaussian sigma in pixels: pass 0"),
        (dict(min_size=2.5), "min_size is a number of pixels: pass an integer >= 0"),
        (dict(min_size=-1), "min_size is a number of pixels"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(change, message):
    arguments = dict(foreground=np.zeros((40, 50)), center_distances=np.zeros((40, 50)),
                     boundary_distances=np.zeros((40, 50)))
    arguments.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        labels_from_maps(**arguments)
