"""The shipped default model segments nuclei: a user's first click must give a sensible mask."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam import Predictor, load_model
from napari_sam.engine.geometry import centre_point
from napari_sam.training.evaluation import prompt_miou
from napari_sam.training.prompts import background_points
from napari_sam.synthetic import synthetic_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

# Measured 2026-11-30 (the TinyViT nuclei_s with its background and outline stages): point mIoU
# 0.91 and box mIoU 0.90 on these 3 images (87 objects), click IoU 0.84 in the 512-pixel test;
# the thresholds leave room for differences across machines.
POINT_MIN, BOX_MIN, CLICK_MIN = 0.7, 0.7, 0.5
# Small nuclei (radius 4-9 px): box mIoU 0.787 (0.725 before the outline stage, whose loss at
# full resolution lets outlines fall between the 4-pixel steps of the decoder's 64 x 64 masks).
SMALL_BOX_MIN = 0.76


@pytest.fixture(scope="module")
def default_model():
    return load_model(device="cpu")


def test_held_out_quality(default_model):
    """Held-out synthetic nuclei (seeds never used in training): one click and one box per
    object give masks well above chance. Thresholds sit below the figures in docs/model_card.md."""
    examples = list(synthetic_dataset(3, (256, 256), seed=777))
    scores = prompt_miou(default_model, examples)
    assert scores["objects"] > 30
    assert scores["point"] > POINT_MIN and scores["box"] > BOX_MIN, scores


def test_small_nuclei_are_outlined_finer_than_the_mask_grid(default_model):
    """Nuclei a few decoder pixels across (4 input pixels each): a box gives a mask whose outline
    follows the nucleus, not the staircase of the 64 x 64 low-resolution grid."""
    examples = list(synthetic_dataset(3, (256, 256), seed=777, radius=(4.0, 9.0)))
    scores = prompt_miou(default_model, examples)
    assert scores["objects"] > 60
    assert scores["box"] > SMALL_BOX_MIN, scores


def test_click_on_a_nucleus_of_a_larger_image(default_model):
    """The quick start's situation: a 512 x 512 uint16 image (resized to the model's 256), one
    click inside a nucleus gives a mask that covers that nucleus and little else."""
    image, labels = next(synthetic_dataset(1, (512, 512), seed=4321, radius=(10.0, 16.0)))
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    target = labels == ids[np.argmax(areas)]
    rows, cols = np.nonzero(target)
    point = [int(np.median(rows)), int(np.median(cols))]
    if not target[point[0], point[1]]:
        point = [int(rows[len(rows) // 2]), int(cols[len(cols) // 2])]
    predictor = Predictor(default_model)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(points=[point])
    mask = masks[np.argmax(scores)]
    iou = (mask & target).sum() / (mask | target).sum()
    assert iou > CLICK_MIN, iou


def test_click_on_background_scores_low(default_model):
    """A click on no nucleus gets a low predicted IoU, so automatic segmentation drops the grid
    points on background (measured: 0.15 on average and at most 0.48 for background clicks,
    0.80 for clicks at nuclei centres; before the background stage, 0.65 and 0.85)."""
    predictor, rng = Predictor(default_model), np.random.default_rng(0)
    background, nuclei = [], []
    for image, labels in synthetic_dataset(3, (256, 256), seed=777):
        predictor.set_image(image)
        points = background_points(labels, 16, rng)[:, None].astype(float)
        background.append(predictor.predict_batch(points=points)[1].max(axis=1))
        centres = [[centre_point(labels == i)] for i in np.unique(labels[labels > 0])]
        nuclei.append(predictor.predict_batch(points=np.array(centres, float))[1].max(axis=1))
    background, nuclei = np.concatenate(background), np.concatenate(nuclei)
    assert background.mean() < 0.3 and (background < 0.5).mean() > 0.9, background
    assert nuclei.mean() > 0.65, nuclei
