"""Behaviour of napari_sam.Predictor: shapes, caching, determinism, the (row, col) flip, bad prompts."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_INPUT, TINY_LOW_RES, make_tiny_model
from napari_sam import Predictor
from napari_sam.engine.prompts import box_rc_to_xy, rc_to_xy

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 50, 90  # the nuclei_image fixture


@pytest.fixture
def predictor(tiny_model, nuclei_image):
    predictor = Predictor(tiny_model)
    predictor.set_image(nuclei_image)
    return predictor


def assert_same(a, b):
    """Bit-identical answers."""
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def count_calls(monkeypatch, module) -> list:
    """Record every call of ``module.forward``."""
    calls = []
    original = module.forward

    def forward(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "forward", forward)
    return calls


# --------------------------------------------------------------------------- #
# outputs
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("multimask, k", [(True, 3), (False, 1)])
def test_predict_shapes_and_types(predictor, multimask, k):
    masks, scores, logits = predictor.predict(points=[[20, 30]], labels=[1], multimask=multimask)
    assert masks.shape == (k, H, W) and masks.dtype == bool
    assert scores.shape == (k,) and scores.dtype == np.float32
    assert logits.shape == (k, *TINY_LOW_RES) and logits.dtype == np.float32
    assert np.isfinite(scores).all() and np.isfinite(logits).all()


@pytest.mark.parametrize(
    "shape, dtype",
    [((50, 90), np.uint16), ((32, 128), np.float32), ((64, 64), np.uint8), ((100, 40), np.uint16),
     ((30, 20, 3), np.uint8)],
)
def test_masks_have_the_original_image_size(tiny_model, shape, dtype):
    image = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    predictor = Predictor(tiny_model)
    embedding = predictor.set_image(image)
    assert tuple(embedding.original_size) == shape[:2]
    for prompt in ({"points": [[5, 7]]}, {"box": [2, 3, 10, 15]}):
        masks, _, _ = predictor.predict(**prompt)
        assert masks.shape[1:] == shape[:2]


def upsample2(x: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling of the last two axes (half-pixel centres, edges clamped)."""
    for axis in (-2, -1):
        n = x.shape[axis]
        prev = np.take(x, np.clip(np.arange(n) - 1, 0, n - 1), axis=axis)
        nxt = np.take(x, np.clip(np.arange(n) + 1, 0, n - 1), axis=axis)
        even, odd = 0.25 * prev + 0.75 * x, 0.75 * x + 0.25 * nxt
        x = np.stack([even, odd], axis=axis).reshape(*x.shape[:axis], 2 * n, *x.shape[axis:][1:])
    return x


def test_masks_are_the_thresholded_logits(predictor):
    """For an image of the model input size, the mask is the 2x upsampled logits > 0."""
    image = np.random.default_rng(1).integers(0, 256, (TINY_INPUT, TINY_INPUT), dtype=np.uint8)
    predictor.set_image(image)
    masks, _, logits = predictor.predict(points=[[20, 30]])
    up = upsample2(logits.astype(np.float64))
    assert up.shape == masks.shape == (3, TINY_INPUT, TINY_INPUT)
    clear = np.abs(up) > 1e-5
    assert clear.mean() > 0.99 and 0.05 < masks.mean() < 0.95
    np.testing.assert_array_equal(masks[clear], up[clear] > 0)


def test_predict_before_set_image_is_refused(tiny_model):
    predictor = Predictor(tiny_model)
    assert predictor.embedding is None
    with pytest.raises(RuntimeError, match=r"set_image"):
        predictor.predict(points=[[1, 1]])
    with pytest.raises(RuntimeError, match=r"set_image"):
        predictor.predict_batch(boxes=[[0, 0, 3, 3]])


@pytest.mark.parametrize("multimask, k", [(True, 3), (False, 1)])
def test_predict_batch_shapes(predictor, multimask, k):
    B = 4
    masks, scores, logits = predictor.predict_batch(
        points=np.full((B, 2, 2), 10.0), labels=np.ones((B, 2)), multimask=multimask
    )
    assert masks.shape == (B, k, H, W) and masks.dtype == bool
    assert scores.shape == (B, k) and scores.dtype == np.float32
    assert logits.shape == (B, k, *TINY_LOW_RES) and logits.dtype == np.float32


def test_predict_batch_of_nothing_gives_empty_results(predictor):
    """A detector that found no boxes gives an empty batch: empty answers, not a crash."""
    masks, scores, logits = predictor.predict_batch(boxes=np.zeros((0, 4)))
    assert masks.shape == (0, 3, H, W) and masks.dtype == bool
    assert scores.shape == (0, 3) and logits.shape == (0, 3, *TINY_LOW_RES)


def test_batch_equals_single_calls(predictor):
    points = np.array([[[10, 20], [30, 60]], [[40, 80], [5, 5]], [[25, 45], [26, 46]]], float)
    labels = np.array([[1, 0], [1, 1], [1, 0]])
    boxes = np.array([[0, 0, 30, 50], [20, 40, 49, 89], [10, 10, 40, 80]], float)
    for multimask in (True, False):
        masks, scores, logits = predictor.predict_batch(
            points=points, labels=labels, boxes=boxes, multimask=multimask
        )
        for b in range(len(points)):
            m, s, lg = predictor.predict(
                points=points[b], labels=labels[b], box=boxes[b], multimask=multimask
            )
            np.testing.assert_allclose(scores[b], s, atol=1e-5, rtol=0)
            np.testing.assert_allclose(logits[b], lg, atol=1e-5, rtol=0)
            assert (masks[b] != m).mean() < 1e-3  # only pixels with logits ~ 0 may differ


def test_batch_of_boxes_only_and_points_only(predictor):
    boxes = np.array([[0, 0, 30, 50], [20, 40, 49, 89]], float)
    masks, scores, _ = predictor.predict_batch(boxes=boxes)
    for b in range(2):
        np.testing.assert_allclose(predictor.predict(box=boxes[b])[1], scores[b], atol=1e-5)
    points = np.array([[[10, 20]], [[40, 80]]], float)
    _, scores, _ = predictor.predict_batch(points=points)
    for b in range(2):
        np.testing.assert_allclose(predictor.predict(points=points[b])[1], scores[b], atol=1e-5)


def test_labels_default_to_positive(predictor):
    assert_same(predictor.predict(points=[[10, 20], [30, 40]]),
                predictor.predict(points=[[10, 20], [30, 40]], labels=[1, 1]))
    negative = predictor.predict(points=[[10, 20], [30, 40]], labels=[1, 0])
    assert not np.array_equal(negative[2], predictor.predict(points=[[10, 20], [30, 40]])[2])


def test_single_point_as_a_pair(predictor):
    assert_same(predictor.predict(points=(10, 20), labels=1), predictor.predict(points=[[10, 20]]))


def test_different_prompts_give_different_answers(predictor):
    """Sanity check that the equality tests below can fail."""
    a = predictor.predict(points=[[10, 20]])
    b = predictor.predict(points=[[40, 70]])
    assert not np.array_equal(a[2], b[2])


# --------------------------------------------------------------------------- #
# embeddings, caching and determinism
# --------------------------------------------------------------------------- #
def test_set_embedding_restores_identical_answers(tiny_model, nuclei_image):
    predictor = Predictor(tiny_model)
    first = predictor.set_image(nuclei_image)
    assert predictor.embedding is first
    before = predictor.predict(points=[[10, 20]], box=[0, 0, 30, 50])
    other = np.random.default_rng(3).integers(0, 255, (40, 40), dtype=np.uint8)
    predictor.set_image(other)
    changed = predictor.predict(points=[[10, 20]], box=[0, 0, 30, 39])
    assert changed[0].shape == (3, 40, 40)
    predictor.set_embedding(first)
    assert predictor.embedding is first
    assert_same(before, predictor.predict(points=[[10, 20]], box=[0, 0, 30, 50]))


def test_embedding_works_in_another_predictor(tiny_model, nuclei_image):
    a = Predictor(tiny_model)
    embedding = a.set_image(nuclei_image)
    b = Predictor(tiny_model)
    b.set_embedding(embedding)
    assert_same(a.predict(points=[[10, 20]]), b.predict(points=[[10, 20]]))


def test_deterministic(nuclei_image):
    """Same weights, image and prompts -> bit-identical results, also across fresh predictors."""

    def run(predictor, embed=True):
        if embed:
            predictor.set_image(nuclei_image)
        return (predictor.embedding.features.clone().numpy(),
                *predictor.predict(points=[[10, 20], [30, 40]], labels=[1, 0]),
                *predictor.predict_batch(boxes=[[0, 0, 20, 20], [10, 10, 40, 80]]))

    predictor = Predictor(make_tiny_model(seed=0))
    first = run(predictor)
    assert_same(first, run(predictor, embed=False))  # asking again
    assert_same(first, run(predictor))  # embedding again
    assert_same(first, run(Predictor(make_tiny_model(seed=0))))  # a fresh model and predictor
    other = run(Predictor(make_tiny_model(seed=1)))  # the comparison can fail
    assert not np.array_equal(other[3], first[3])


def test_clicks_do_not_rerun_the_encoder(monkeypatch, tiny_model, nuclei_image):
    calls = count_calls(monkeypatch, tiny_model.image_encoder)
    predictor = Predictor(tiny_model)
    predictor.set_image(nuclei_image)
    assert len(calls) == 1
    predictor.predict(points=[[10, 20]])
    predictor.predict(points=[[10, 20], [30, 40]], labels=[1, 0])
    _, _, logits = predictor.predict(box=[0, 0, 30, 40])
    predictor.predict(points=[[10, 20]], mask_input=logits[0])
    predictor.predict_batch(boxes=[[0, 0, 30, 40], [5, 5, 20, 20]])
    assert len(calls) == 1
    predictor.set_image(nuclei_image)
    assert len(calls) == 2


def test_set_image_does_not_modify_the_image(tiny_model):
    image = np.random.default_rng(4).uniform(-1, 1, (40, 30, 2))
    image[3, 3] = np.nan
    before = image.copy()
    Predictor(tiny_model).set_image(image)
    np.testing.assert_array_equal(image, before)


# --------------------------------------------------------------------------- #
# mask_input refinement
# --------------------------------------------------------------------------- #
def test_mask_input_from_a_previous_call(predictor):
    masks, scores, logits = predictor.predict(points=[[20, 30]])
    best = int(np.argmax(scores))
    plain = predictor.predict(points=[[20, 30], [10, 10]], labels=[1, 0], multimask=False)
    as_hw = predictor.predict(points=[[20, 30], [10, 10]], labels=[1, 0],
                              mask_input=logits[best], multimask=False)
    as_1hw = predictor.predict(points=[[20, 30], [10, 10]], labels=[1, 0],
                               mask_input=logits[best : best + 1], multimask=False)
    assert as_hw[0].shape == (1, H, W) and as_hw[2].shape == (1, *TINY_LOW_RES)
    assert_same(as_hw, as_1hw)
    assert not np.allclose(as_hw[2], plain[2])  # the mask prompt is used
    # and it does not stick: the next call without a mask answers as before
    assert_same(plain, predictor.predict(points=[[20, 30], [10, 10]], labels=[1, 0],
                                         multimask=False))


def test_mask_input_alone(predictor):
    _, _, logits = predictor.predict(box=[10, 10, 40, 60])
    masks, scores, low = predictor.predict(mask_input=logits[0])
    assert masks.shape == (3, H, W) and scores.shape == (3,) and low.shape == (3, *TINY_LOW_RES)


def test_mask_input_in_a_batch(predictor):
    _, _, logits = predictor.predict_batch(points=[[[20, 30]], [[40, 80]]], multimask=False)
    masks, _, low = predictor.predict_batch(points=[[[20, 30]], [[40, 80]]], mask_input=logits,
                                            multimask=False)
    assert masks.shape == (2, 1, H, W)
    single = predictor.predict(points=[[40, 80]], mask_input=logits[1], multimask=False)
    np.testing.assert_allclose(low[1], single[2], atol=1e-5)


# --------------------------------------------------------------------------- #
# (row, col) -> (x, y): the one flip into the model
# --------------------------------------------------------------------------- #
def test_rc_to_xy():
    np.testing.assert_array_equal(rc_to_xy(np.array([10, 40])), [40, 10])
    np.testing.assert_array_equal(rc_to_xy(np.array([[[1, 2], [3, 4]]])), [[[2, 1], [4, 3]]])


def test_box_rc_to_xy():
    np.testing.assert_array_equal(box_rc_to_xy(np.array([5, 10, 20, 50])), [10, 5, 50, 20])
    np.testing.assert_array_equal(box_rc_to_xy(np.array([[1, 2, 3, 4], [5, 6, 7, 8]])),
                                  [[2, 1, 4, 3], [6, 5, 8, 7]])


@pytest.fixture
def captured(monkeypatch, tiny_model):
    """What the prompt encoder receives: (points, boxes, masks) of each call."""
    return count_calls(monkeypatch, tiny_model.prompt_encoder)


def test_point_arrives_as_xy(tiny_model, captured):
    predictor = Predictor(tiny_model)
    predictor.set_image(np.zeros((TINY_INPUT, TINY_INPUT), np.uint8))  # no resize
    predictor.predict(points=[[10, 40], [20, 30]], labels=[1, 0])
    (coords, labels), boxes, masks = captured[-1][0]
    np.testing.assert_allclose(coords.numpy(), [[[40, 10], [30, 20]]])
    np.testing.assert_array_equal(labels.numpy(), [[1, 0]])
    assert boxes is None and masks is None


def test_box_arrives_as_x0_y0_x1_y1(tiny_model, captured):
    predictor = Predictor(tiny_model)
    predictor.set_image(np.zeros((TINY_INPUT, TINY_INPUT), np.uint8))
    predictor.predict(box=[5, 10, 20, 50])  # (min_row, min_col, max_row, max_col)
    points, boxes, _ = captured[-1][0]
    assert points is None
    np.testing.assert_allclose(boxes.numpy(), [[10, 5, 50, 20]])


def test_coordinates_are_scaled_with_the_image(tiny_model, captured):
    predictor = Predictor(tiny_model)
    predictor.set_image(np.zeros((32, 128), np.uint8))  # resized to 16 x 64
    predictor.predict(points=[[10, 40]], box=[4, 8, 20, 100])
    (coords, _), boxes, _ = captured[-1][0]
    np.testing.assert_allclose(coords.numpy(), [[[20, 5]]])
    np.testing.assert_allclose(boxes.numpy(), [[4, 2, 50, 10]])


def test_coordinates_are_scaled_per_axis(tiny_model, captured):
    predictor = Predictor(tiny_model)
    predictor.set_image(np.zeros((H, W), np.uint8))  # resized to 36 x 64: y by 0.72, x by 0.711
    predictor.predict(points=[[25, 45], [49.5, 89.5]])
    (coords, _), _, _ = captured[-1][0]
    np.testing.assert_allclose(coords.numpy(), [[[32, 18], [89.5 * 64 / 90, 49.5 * 36 / 50]]],
                               rtol=1e-6)


def test_batched_coordinates_are_flipped(tiny_model, captured):
    predictor = Predictor(tiny_model)
    predictor.set_image(np.zeros((TINY_INPUT, TINY_INPUT), np.uint8))
    predictor.predict_batch(points=[[[1, 2]], [[3, 4]]], boxes=[[1, 2, 5, 6], [3, 4, 7, 8]])
    (coords, _), boxes, _ = captured[-1][0]
    np.testing.assert_allclose(coords.numpy(), [[[2, 1]], [[4, 3]]])
    np.testing.assert_allclose(boxes.numpy(), [[2, 1, 6, 5], [4, 3, 8, 7]])


# --------------------------------------------------------------------------- #
# bad prompts
# --------------------------------------------------------------------------- #
BAD_PROMPTS = {
    "nothing": ({}, r"no prompt"),
    "row below -0.5": ({"points": [[-0.6, 10]]}, r"\(-0\.6, 10\.0\) is outside the image of shape \(50, 90\)"),
    "col past the edge": ({"points": [[10, W - 0.5 + 1e-6]]}, r"outside the image"),
    "row past the edge": ({"points": [[H, 10]]}, r"outside the image"),
    "negative": ({"points": [[-3, -7]]}, r"outside the image"),
    "one of several outside": ({"points": [[1, 1], [1, 200]], "labels": [1, 1]}, r"\(1\.0, 200\.0\)"),
    "label 2": ({"points": [[1, 1]], "labels": [2]}, r"labels must be 1 \(positive\) or 0 \(negative\).*\[2\]"),
    "label -1": ({"points": [[1, 1], [2, 2]], "labels": [1, -1]}, r"labels must be 1 .* or 0 .*-1"),
    "label 0.5": ({"points": [[1, 1]], "labels": [0.5]}, r"labels must be"),
    "too few labels": ({"points": [[1, 1], [2, 2]], "labels": [1]}, r"one value per point"),
    "too many labels": ({"points": [[1, 1]], "labels": [1, 0]}, r"one value per point"),
    "labels without points": ({"labels": [1]}, r"no prompt: give points"),
    "labels with a box only": ({"box": [0, 0, 5, 5], "labels": [1]}, r"labels were given without points"),
    "box max < min": ({"box": [20, 10, 5, 40]}, r"box max is below its min"),
    "box col max < min": ({"box": [5, 40, 20, 10]}, r"box max is below its min"),
    "box outside": ({"box": [0, 0, 60, 40]}, r"box .* outside the image"),
    "box negative": ({"box": [-5, 0, 10, 10]}, r"outside the image"),
    "points (N, 3)": ({"points": [[1, 2, 3]]}, r"points must have shape \(N, 2\)"),
    "points 3 numbers": ({"points": [1, 2, 3]}, r"points must have shape"),
    "no points": ({"points": np.zeros((0, 2))}, r"points must have shape"),
    "points not numbers": ({"points": [["a", "b"]]}, r"points must be numeric"),
    "ragged points": ({"points": [[1, 2], [3]]}, r"points must be numeric"),
    "box of 3": ({"box": [1, 2, 3]}, r"box must have shape \(4\)"),
    "two boxes": ({"box": [[0, 0, 5, 5], [1, 1, 6, 6]]}, r"box must have shape"),
    "mask wrong size": ({"mask_input": np.zeros((16, 16))}, r"mask_input must be .*\(1, 32, 32\)"),
    "mask of 3": ({"mask_input": np.zeros((3, 32, 32))}, r"mask_input must be .*got \(3, 32, 32\)"),
    "mask full size": ({"points": [[1, 1]], "mask_input": np.zeros((H, W))}, r"mask_input must be"),
    "NaN point": ({"points": [[np.nan, 3]]}, r"points contains NaN"),
    "inf box": ({"box": [0, 0, np.inf, 5]}, r"box contains NaN or infinite"),
    "NaN mask": ({"mask_input": np.full((32, 32), np.nan)}, r"mask_input contains NaN"),
}


@pytest.mark.parametrize("kwargs, match", BAD_PROMPTS.values(), ids=BAD_PROMPTS.keys())
def test_bad_prompt_is_refused(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)


def test_the_image_edges_are_inside(predictor):
    """Pixel centres are whole numbers: the image spans -0.5 .. H - 0.5."""
    masks, _, _ = predictor.predict(points=[[-0.5, -0.5], [H - 0.5, W - 0.5]], labels=[1, 0])
    assert masks.shape == (3, H, W)
    masks, _, _ = predictor.predict(box=[-0.5, -0.5, H - 0.5, W - 0.5])
    masks, _, _ = predictor.predict(box=[10, 10, 10, 10])  # a box of one point is allowed
    assert masks.shape == (3, H, W)


def test_a_refused_prompt_leaves_the_predictor_usable(predictor):
    before = predictor.predict(points=[[10, 20]])
    with pytest.raises(ValueError):
        predictor.predict(points=[[10, 2000]])
    assert_same(before, predictor.predict(points=[[10, 20]]))


BAD_BATCHES = {
    "points vs boxes": ({"points": np.zeros((2, 1, 2)), "boxes": np.zeros((3, 4))},
                        r"different batch sizes \[2, 3\]"),
    "points vs masks": ({"points": np.zeros((2, 1, 2)), "mask_input": np.zeros((1, 1, 32, 32))},
                        r"different batch sizes"),
    "labels vs points": ({"points": np.zeros((2, 3, 2)), "labels": np.ones((2, 2))},
                         r"one value per point, shape \(2, 3\)"),
    "unbatched labels": ({"points": np.zeros((2, 1, 2)), "labels": [1]}, r"one value per point"),
    "unbatched points": ({"points": [[1, 2]]}, r"points must have shape \(B, N, 2\)"),
    "unbatched box": ({"boxes": [0, 0, 5, 5]}, r"box must have shape \(B, 4\)"),
    "unbatched mask": ({"mask_input": np.zeros((32, 32))}, r"mask_input must be .*\(B, 1, 32, 32\)"),
}


@pytest.mark.parametrize("kwargs, match", BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
def test_bad_batch_is_refused(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict_batch(**kwargs)
