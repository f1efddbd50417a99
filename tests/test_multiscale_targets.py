"""Multi-scale targets for the 3 outputs: erosion targets, optimal matching, matched loss, training."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.morphology import disk
from test_training import RANGES, small_random_model

from napari_sam.synthetic import SyntheticNuclei, synthetic_nuclei
from napari_sam.training.losses import (
    iou_of_masks,
    mask_loss,
    matched_sam_loss,
    optimal_assignment,
)
from napari_sam.training.recipes import Recipe
from napari_sam.training.targets import downsample_target, erosion_targets
from napari_sam.training.trainer import train


def nuclei_masks(seed: int = 0) -> torch.Tensor:
    """Ground truth of synthetic nuclei at a low resolution of 128 x 128 (2 input pixels each)."""
    _, labels = synthetic_nuclei((256, 256), radius=(4.0, 22.0), seed=seed)
    masks = np.stack([labels == i for i in np.unique(labels[labels > 0])])
    return downsample_target(masks, 128)


# --------------------------------------------------------------------------- #
# erosion targets
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("radii", [(0, 1, 2), (0, 2, 4), (1, 3, 6)])
def test_erosion_targets_are_nested_and_not_empty(radii):
    masks = nuclei_masks()
    masks = masks[masks.sum(dim=(-2, -1)) > 0]
    targets = erosion_targets(masks, radii)
    assert targets.shape == (len(masks), 3, 128, 128) and targets.dtype == torch.float32
    assert (targets.sum(dim=(-2, -1)) > 0).all()
    assert (targets[:, 1:] <= targets[:, :-1]).all()  # each inside the previous one
    assert (targets[:, 0] <= masks).all()
    if radii[0] == 0:
        assert torch.equal(targets[:, 0], masks)


def test_erosion_is_scipy_binary_erosion_with_a_disk():
    masks = nuclei_masks(seed=1)
    targets = erosion_targets(masks, (0, 1, 3))
    for mask, target in zip(masks.numpy() > 0.5, targets.numpy()):
        for radius, eroded in zip((1, 3), target[1:]):
            expected = ndi.binary_erosion(mask, structure=disk(radius))
            if expected.any():  # otherwise the previous scale is kept
                np.testing.assert_array_equal(eroded, expected)


def test_an_erosion_that_would_erase_the_mask_keeps_the_previous_scale():
    mask = torch.zeros(1, 9, 9)
    mask[0, 3:6, 3:6] = 1  # 3 x 3: radius 1 leaves the centre, radius 2 nothing
    targets = erosion_targets(mask, (0, 1, 2))
    assert targets.sum(dim=(-2, -1)).tolist() == [[9.0, 1.0, 1.0]]
    assert targets[0, 2, 4, 4] == 1
    # Falling back from the first radius keeps the full mask.
    assert torch.equal(erosion_targets(mask, (2, 3, 4))[0, 0], mask[0])


def test_an_empty_mask_gives_empty_targets():
    assert erosion_targets(torch.zeros(2, 8, 8)).sum() == 0


@pytest.mark.parametrize("radii", [(0, 2, 2), (2, 1, 0), (-1, 0, 1), (0, 1.5, 2), (), "012", 3, (0, True, 2)])
def test_bad_radii_are_refused(radii):
    with pytest.raises(ValueError, match="strictly increasing integers >= 0"):
        erosion_targets(torch.zeros(1, 8, 8), radii)


def test_target_must_be_a_batch_of_masks():
    with pytest.raises(ValueError, match=r"\(B, H, W\).*mask\[None\]"):
        erosion_targets(torch.zeros(8, 8))


# --------------------------------------------------------------------------- #
# optimal assignment
# --------------------------------------------------------------------------- #
def test_assignment_is_optimal_where_greedy_is_not():
    # Greedy (each row its cheapest free column, in order) takes 0->0, 1->2, 2->1: cost 1+3+8.
    # The optimum is 0->1, 1->2, 2->0: cost 2+3+1 = 6.
    cost = torch.tensor([[[1.0, 2.0, 9.0], [4.0, 5.0, 3.0], [1.0, 8.0, 9.0]]])
    assert optimal_assignment(cost).tolist() == [[1, 2, 0]]


def test_assignment_matches_brute_force():
    cost = torch.rand(20, 3, 3, generator=torch.Generator().manual_seed(0))
    match = optimal_assignment(cost)
    for matrix, columns in zip(cost, match):
        assert sorted(columns.tolist()) == [0, 1, 2]
        best = min(sum(matrix[i, p[i]] for i in range(3)) for p in itertools.permutations(range(3)))
        assert matrix[torch.arange(3), columns].sum() == pytest.approx(float(best))


def test_assignment_refuses_non_square_costs():
    with pytest.raises(ValueError, match=r"\(B, K, K\)"):
        optimal_assignment(torch.zeros(2, 3, 2))


# --------------------------------------------------------------------------- #
# the matched loss
# --------------------------------------------------------------------------- #
def random_outputs(seed: int = 0, b: int = 4, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, 3, size, size, generator=g, requires_grad=True)
    iou_pred = torch.rand(b, 3, generator=g, requires_grad=True)
    mask = torch.zeros(b, size, size)
    mask[:, 3:13, 2:14] = 1
    return logits, iou_pred, erosion_targets(mask, (0, 1, 3))


@torch.no_grad()
def pair_loss(logits, iou_pred, targets, b, i, j) -> float:
    """The loss of output ``i`` of object ``b`` against target ``j``, from the basic losses."""
    lg, tg = logits[b, i][None], targets[b, j][None]
    return float(mask_loss(lg, tg, focal_weight=1.0) + (iou_pred[b, i] - iou_of_masks(lg, tg)[0]) ** 2)


def test_matched_loss_is_the_sum_of_the_optimally_matched_pair_losses():
    logits, iou_pred, targets = random_outputs()
    loss, parts = matched_sam_loss(logits, iou_pred, targets, focal_weight=1.0)
    expected = [
        min(sum(pair_loss(logits, iou_pred, targets, b, i, p[i]) for i in range(3))
            for p in itertools.permutations(range(3)))
        for b in range(len(logits))
    ]
    assert float(loss.detach()) == pytest.approx(np.mean(expected), rel=1e-5)
    assert float(parts.loss) == pytest.approx(float(parts.mask + parts.iou), rel=1e-5)
    # Every output is trained, the mask terms reach all 3 logits.
    loss.backward()
    assert (logits.grad.abs().sum(dim=(-2, -1)) > 0).all()


def test_matched_loss_does_not_depend_on_the_order_of_the_outputs():
    logits, iou_pred, targets = random_outputs(seed=1)
    order = torch.tensor([2, 0, 1])
    loss, parts = matched_sam_loss(logits, iou_pred, targets)
    shuffled, shuffled_parts = matched_sam_loss(logits[:, order], iou_pred[:, order], targets)
    assert float(shuffled_parts.loss) == pytest.approx(float(parts.loss), rel=1e-6)
    # The output matched to the full mask moves with the outputs.
    assert torch.equal(order[shuffled_parts.index], parts.index)
    assert torch.equal(shuffled_parts.chosen_iou, parts.chosen_iou)


def test_matched_loss_refuses_one_target_per_object():
    logits, iou_pred, targets = random_outputs()
    with pytest.raises(ValueError, match=r"targets must have shape \(B, K, H, W\).*erosion_targets"):
        matched_sam_loss(logits, iou_pred, targets[:, 0])


# --------------------------------------------------------------------------- #
# training
# --------------------------------------------------------------------------- #
def test_short_training_run_with_erosion_targets_lowers_the_loss(one_thread):
    """One click per object, so every loss is the matched one (measured: -8 % in 20 steps, a few seconds)."""
    recipe = Recipe(lr=2e-3, warmup=3, train_encoder=True, images_per_step=2, objects_per_image=4,
                    prompt_mode="point", n_points=(1, 1), correction_rounds=0, focal_weight=1.0,
                    multimask_targets="erosion")
    history = train(small_random_model(), SyntheticNuclei((64, 64), **RANGES), recipe, steps=20,
                    seed=0, log=None)
    assert len(history.losses) == 20
    assert np.mean(history.losses[-5:]) < 0.95 * np.mean(history.losses[:5])


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(multimask_targets="hungarian"), "multimask_targets must be one of 'best', 'erosion'"),
        (dict(multimask_targets="erosion", erosion_radii=(0, 2)), r"one radius per multimask output .*\(3\)"),
        (dict(multimask_targets="erosion", erosion_radii=(0, 2, 1)), "strictly increasing"),
    ],
)
def test_bad_multimask_target_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        train(small_random_model(), SyntheticNuclei((64, 64)), Recipe(**options), steps=1, log=None)
