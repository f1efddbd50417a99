"""Choosing among the multimask answers: select_mask's strategies and Predictor.predict(select=)."""

from __future__ import annotations

import numpy as np
import pytest

import napari_sam
from conftest import TINY_LOW_RES
from napari_sam import Predictor, select_mask
from napari_sam.engine.selection import STRATEGIES


def rows(*counts: int, width: int = 10) -> np.ndarray:
    """Masks whose first ``count`` rows are foreground: areas ``count * width``."""
    masks = np.zeros((len(counts), 10, width), bool)
    for mask, count in zip(masks, counts):
        mask[:count] = True
    return masks


def test_each_strategy_picks_a_different_mask():
    masks = rows(10, 1, 9, 5)  # areas 100, 10, 90, 50: relative areas 1, 0.1, 0.9, 0.5
    scores = np.array([0.5, 0.6, 0.9, 0.85])
    # balanced, by hand: 0.5*0.9 = 0.45, 0.6*0.92 = 0.552, 0.9*0.92 = 0.828, 0.85*1 = 0.85
    picks = {strategy: select_mask(masks, scores, strategy) for strategy in STRATEGIES}
    assert picks == {"score": 2, "largest": 0, "smallest": 1, "balanced": 3}


def test_score_is_the_default():
    masks = rows(10, 5, 2)
    scores = np.array([0.7, 0.8, 0.9], np.float32)
    assert select_mask(masks, scores) == 2


@pytest.mark.parametrize("scores, expected", [([0.9, 0.88, 0.5], 1), ([0.95, 0.8, 0.5], 0)])
def test_balanced_weighs_the_score_by_the_relative_area(scores, expected):
    """Whole cell / body / nucleus: the middle mask wins when the scores are close, not always."""
    masks = rows(10, 5, 2)  # relative areas 1, 0.5, 0.2: weights 0.9, 1.0, 0.94
    weighted = np.array(scores) * (1 - 0.2 * np.abs(np.array([1.0, 0.5, 0.2]) - 0.5))
    assert select_mask(masks, scores, "balanced") == expected == int(np.argmax(weighted))


def test_ties_go_to_the_first_mask():
    masks = rows(4, 4, 4)
    for strategy in STRATEGIES:
        assert select_mask(masks, [0.5, 0.5, 0.5], strategy) == 0


def test_empty_masks_are_chosen_by_score():
    masks = np.zeros((3, 4, 4), bool)
    assert select_mask(masks, [0.1, 0.3, 0.2], "balanced") == 1
    assert select_mask(masks, [0.1, 0.3, 0.2], "largest") == 0


@pytest.mark.parametrize(
    "masks, scores, strategy, match",
    [
        (rows(2, 1), [0.5, 0.4], "best", "one of 'score', 'largest', 'smallest', 'balanced'"),
        (rows(2, 1), [0.5, 0.4], None, "one of 'score', 'largest'"),
        (np.zeros((0, 4, 4), bool), [], "score", "empty"),
        (rows(2, 1), [0.5, 0.4, 0.3], "score", r"one value per mask, shape \(2,\)"),
        (rows(2, 1), [[0.5, 0.4]], "score", r"one value per mask"),
        (rows(2)[0], [0.5], "score", r"shape \(k, H, W\)"),
        (rows(2, 1), [0.5, np.nan], "score", "finite"),
    ],
)
def test_bad_input_is_refused(masks, scores, strategy, match):
    with pytest.raises(ValueError, match=match):
        select_mask(masks, scores, strategy)


def test_select_mask_is_public():
    assert "select_mask" in napari_sam.__all__


# --------------------------------------------------------------------------- #
# Predictor.predict(select=...)
# --------------------------------------------------------------------------- #
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_predict_returns_the_selected_mask(tiny_model, nuclei_image, strategy):
    predictor = Predictor(tiny_model)
    predictor.set_image(nuclei_image)
    masks, scores, logits = predictor.predict(points=[[20, 30]])
    chosen = predictor.predict(points=[[20, 30]], select=strategy)
    i = select_mask(masks, scores, strategy)
    assert chosen[0].shape == (1, *nuclei_image.shape) and chosen[1].shape == (1,)
    assert chosen[2].shape == (1, *TINY_LOW_RES)
    for got, full in zip(chosen, (masks, scores, logits), strict=True):
        np.testing.assert_array_equal(got, full[i : i + 1])


@pytest.mark.usefixtures("one_thread")
def test_predict_select_with_one_mask_returns_it(tiny_model, nuclei_image):
    predictor = Predictor(tiny_model)
    predictor.set_image(nuclei_image)
    single = predictor.predict(points=[[20, 30]], multimask=False)
    for got, expected in zip(predictor.predict(points=[[20, 30]], multimask=False, select="largest"), single):
        np.testing.assert_array_equal(got, expected)


def test_predict_refuses_a_bad_strategy_before_decoding(tiny_model):
    # No image is set: the strategy is checked first, so the message is about it.
    with pytest.raises(ValueError, match="strategy must be one of"):
        Predictor(tiny_model).predict(points=[[20, 30]], select="biggest")
