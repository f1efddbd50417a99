"""Automatic prompt generation (APG): equal to micro-sam's ``AutomaticPromptGenerator``; edge cases.

Parity runs both sides from identical maps (made from a synthetic image's true labels, as for
the AIS tests) handed to micro-sam through ``set_state``, so that no instance decoder is
involved, and with the same SAM: the shipped ``nuclei_s`` weights in Meta's classes configured to
its architecture. Random SAM weights give one mask covering the image for every prompt (one
object survives the suppression, so the test could not fail); the trained weights give tens of
objects. micro-sam's batched inference maps prompts to a 1024-pixel model input whatever the
model (all of micro-sam's models have that input); for ``nuclei_s`` (256 pixels) it is given the
model's own input size, the only change made to their code.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tiny_model
from test_amg_parity import models  # noqa: F401 (a fixture: ours and Meta's nuclei_s)
from test_instance_segmentation import (  # noqa: F401 (a fixture)
    assert_same_instances,
    decoder_maps,
    micro_sam_instances,
    smooth_random_maps,
)

from napari_sam import Segmenter, load_model
from napari_sam.engine.apg import point_prompts, prompted_labels, prompted_masks
from napari_sam.engine.image import to_rgb_uint8
from napari_sam.engine.predictor import Predictor
from napari_sam.synthetic import synthetic_nuclei

SQUARE, WIDE = (256, 256), (200, 300)


@pytest.fixture(scope="module")
def micro_sam_apg(micro_sam_instances):  # noqa: F811
    """micro-sam's ``AutomaticPromptGenerator`` (imported by ``micro_sam_instances``)."""
    from micro_sam.instance_segmentation import AutomaticPromptGenerator

    return AutomaticPromptGenerator


@pytest.fixture(scope="module")
def scenes():
    """An 8-bit image and its decoder maps, per shape."""
    made = {}
    for shape in SQUARE, WIDE:
        image, truth = synthetic_nuclei(shape, seed=3)
        made[shape] = to_rgb_uint8(image), decoder_maps(truth, seed=0)
    return made


def micro_sam_labels(generator_class, reference, rgb, maps, monkeypatch, **settings):
    """micro-sam's APG labels of ``rgb`` from ``maps``, with Meta's predictor on ``reference``."""
    import micro_sam.inference
    from reference import segment_anything

    transform = segment_anything.utils.transforms.ResizeLongestSide
    size = reference.image_encoder.img_size
    monkeypatch.setattr(micro_sam.inference, "ResizeLongestSide", lambda _: transform(size))
    predictor = segment_anything.SamPredictor(reference)
    predictor.set_image(rgb)
    generator = generator_class(predictor, decoder=None)
    generator.set_state(dict(zip(("foreground", "center_distances", "boundary_distances"), maps)))
    return generator.generate(**settings)


@pytest.mark.parametrize(
    "shape, settings",
    [
        (SQUARE, dict()),
        (WIDE, dict()),
        (SQUARE, dict(multimasking=True)),
        (WIDE, dict(intersection_over_min=True, nms_threshold=0.5)),
        (SQUARE, dict(min_size=100, mask_threshold=1.0, batch_size=7)),
        # Square only: micro-sam clips a refinement box's x to the image height (see apg.py).
        (SQUARE, dict(refine_with_box_prompts=True)),
    ],
    ids=["defaults", "wide", "multimask", "iomin-wide", "thresholds", "box-refinement"],
)
def test_same_objects_as_micro_sam(models,  # noqa: F811
                                    scenes, micro_sam_apg, monkeypatch, shape, settings):
    ours, reference = models
    rgb, maps = scenes[shape]
    predictor = Predictor(ours)
    predictor.set_image(rgb)
    mine = prompted_labels(predictor, *maps, **settings)
    theirs = micro_sam_labels(micro_sam_apg, reference, rgb, maps, monkeypatch, **settings)
    assert theirs.max() >= 20, "the scene should keep tens of objects, so that the test can fail"
    assert_same_instances(mine, theirs)


@pytest.mark.parametrize("seed", range(3))
def test_points_equal_micro_sams_prompts(micro_sam_apg, seed):
    from micro_sam.instance_segmentation import _derive_point_prompts

    maps = smooth_random_maps((180, 240), seed=seed)
    settings = dict(foreground_threshold=0.4, center_distance_threshold=0.6,
                    boundary_distance_threshold=0.6)
    theirs = _derive_point_prompts(*maps, **settings)
    points = point_prompts(*maps, **settings)
    assert len(points) >= 5
    np.testing.assert_array_equal(points, theirs["points"][:, 0, ::-1])


# -- our own --------------------------------------------------------------------------------------


@pytest.fixture
def tiny_predictor(nuclei_image):
    predictor = Predictor(make_tiny_model())
    predictor.set_image(nuclei_image)
    return predictor


@pytest.mark.parametrize("case", ["background", "constant 0", "constant 0.5", "constant 1", "nan"])
def test_maps_without_objects_give_no_objects(tiny_predictor, case):
    shape = tiny_predictor.embedding.original_size
    if case == "background":
        maps = [np.zeros(shape), np.ones(shape), np.ones(shape)]
    elif case == "nan":
        maps = [np.full(shape, np.nan)] * 3
    else:
        maps = [np.full(shape, float(case.split()[1]))] * 3
    labels = prompted_labels(tiny_predictor, *maps)
    assert labels.dtype == np.uint32 and labels.shape == shape and labels.max() == 0
    assert prompted_masks(tiny_predictor, *maps) == []


def test_nan_pixels_are_never_prompted():
    maps = decoder_maps(np.pad(np.ones((9, 9), int), 8), seed=0, noise=0)
    assert len(point_prompts(*maps)) == 1
    maps[1][12, 12] = np.nan
    maps[0][:, 14:] = np.nan
    points = point_prompts(*maps)
    assert len(points) >= 1
    assert all(np.isfinite(m[tuple(points.T)]).all() for m in maps)


def test_masks_carry_their_prompt_and_scores(tiny_predictor):
    shape = tiny_predictor.embedding.original_size
    maps = decoder_maps(np.pad(np.ones((20, 20), int), ((15, 15), (35, 35))), seed=0, noise=0)
    found = prompted_masks(tiny_predictor, *maps, min_size=0)
    assert len(found) == 1
    np.testing.assert_array_equal(found[0].prompt, [24, 44])
    assert found[0].mask.shape == shape and np.isfinite(found[0].predicted_iou)


@pytest.mark.parametrize(
    "settings, fix",
    [
        (dict(nms_threshold=1.5), "nms_threshold must be a number in [0, 1]"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(min_size=-1), "pass an integer >= 0"),
        (dict(mask_threshold="auto"), "mask_threshold must be a finite number"),
        (dict(foreground_threshold=float("nan")), "foreground_threshold must be a finite"),
    ],
)
def test_bad_settings_are_refused_naming_the_fix(tiny_predictor, settings, fix):
    maps = [np.zeros(tiny_predictor.embedding.original_size)] * 3
    with pytest.raises(ValueError, match=fix.replace("[", r"\[").replace("]", r"\]")):
        prompted_labels(tiny_predictor, *maps, **settings)


def test_maps_of_another_size_or_no_image_are_refused(tiny_predictor):
    with pytest.raises(ValueError, match="give the maps at the image's pixels"):
        prompted_labels(tiny_predictor, *[np.zeros((20, 20))] * 3)
    with pytest.raises(RuntimeError, match="set_image"):
        prompted_labels(Predictor(make_tiny_model()), *[np.zeros((20, 20))] * 3)


# -- the one path: Segmenter.segment_all(mode="apg"), tiled -----------------------------------


@pytest.fixture(scope="module")
def nuclei_s(one_thread):
    """The shipped model: random SAM weights answer every prompt with one mask of the image."""
    return load_model(device="cpu")


def canonical(labels: np.ndarray) -> np.ndarray:
    """The labels renumbered 1..n in raster order of their first pixel."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    order = ids[np.argsort(first)]
    order = order[order > 0]
    lookup = np.zeros(int(labels.max()) + 1, np.uint32)
    lookup[order] = np.arange(1, len(order) + 1)
    return lookup[labels]


def apg_segmenter(model, image, truth) -> Segmenter:
    """A segmenter on ``image`` whose stitched maps are those of ``truth`` (no decoder), its
    outlines as SAM draws them (not snapped), to compare with the engine's."""
    segmenter = Segmenter(model, diameter=None, snap=False)
    segmenter.set_image(image)
    maps = np.stack(decoder_maps(truth, seed=0))
    segmenter.instance_maps = lambda: maps
    return segmenter


@pytest.mark.parametrize("settings", [{}, dict(multimasking=True, refine_with_box_prompts=True)])
def test_on_a_plane_of_one_tile_the_one_path_gives_prompted_labels(nuclei_s, settings):
    image, truth = synthetic_nuclei(SQUARE, seed=3)
    segmenter = apg_segmenter(nuclei_s, image, truth)
    assert len(segmenter.tiles) == 1
    predictor = Predictor(nuclei_s, enlarge=False)
    predictor.set_image(segmenter.image)
    expected = prompted_labels(predictor, *segmenter.instance_maps(), **settings)
    assert expected.max() >= 10
    np.testing.assert_array_equal(canonical(segmenter.segment_all("apg", **settings)), expected)


def test_an_object_across_a_tile_seam_comes_out_once_and_whole(nuclei_s):
    """A nucleus across a seam with one prompt is never two objects: its prompt is answered by
    one tile, which sees the whole nucleus in its halo, so the object crosses the seam. (A
    nucleus with two seeds may give two masks that the suppression keeps, as micro-sam's APG
    does on one image; SAM may also join a nucleus to its neighbour.)"""
    image, truth = synthetic_nuclei((420, 460), seed=5)
    segmenter = apg_segmenter(nuclei_s, image, truth)
    assert len(segmenter.tiles) > 4
    labels = segmenter.segment_all("apg")
    prompted = truth[tuple(point_prompts(*segmenter.instance_maps()).T)]
    areas = np.bincount(labels.ravel())
    across, whole = 0, 0
    for index in np.unique(truth[truth > 0]):
        nucleus = truth == index
        # across a seam by a tenth of its pixels at least: an outline may miss a tip of 2 px
        if _cores(segmenter, nucleus, share=0.1) < 2 or (prompted == index).sum() != 1:
            continue
        ids, counts = np.unique(labels[nucleus], return_counts=True)
        on_it = ids[(ids > 0) & (counts > 0.5 * areas[ids])]  # objects mostly on the nucleus
        assert len(on_it) <= 1, f"nucleus {index} across a seam came out {len(on_it)} times"
        across += 1
        whole += len(on_it) == 1 and _cores(segmenter, labels == on_it[0]) >= 2
    assert across >= 5, "the test needs nuclei across seams"
    assert whole >= 0.8 * across


def _cores(segmenter: Segmenter, mask: np.ndarray, share: float = 0.0) -> int:
    """In how many tile cores ``mask`` has more than ``share`` of its pixels."""
    least = share * np.count_nonzero(mask)
    return sum(np.count_nonzero(mask[t.core[0]:t.core[2], t.core[1]:t.core[3]]) > least
               for t in segmenter.tiles)
