"""Training losses against values computed by hand, the best-of-3 rule, and shape checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_sam.training.losses import (
    SamLossParts,
    dice_loss,
    focal_loss,
    iou_loss,
    iou_of_masks,
    mask_loss,
    sam_loss,
)
from napari_sam.training.targets import downsample_target

LN3 = math.log(3.0)
# sigmoid of these logits: 0.5, 0.75 / 0.25, 0.5
LOGITS = [[0.0, LN3], [-LN3, 0.0]]
TARGET = [[1.0, 1.0], [0.0, 0.0]]
PROBS = [0.5, 0.75, 0.25, 0.5]  # row-major, by hand
TRUTH = [1, 1, 0, 0]


def tiny():
    return torch.tensor(LOGITS).reshape(1, 1, 2, 2), torch.tensor(TARGET).reshape(1, 1, 2, 2)


def focal_by_hand(alpha=0.25, gamma=2.0):
    total = 0.0
    for p, t in zip(PROBS, TRUTH):
        if t == 1:
            total += -alpha * (1 - p) ** gamma * math.log(p)
        else:
            total += -(1 - alpha) * p**gamma * math.log(1 - p)
    return total / 4


def dice_by_hand(eps=1.0):
    inter = sum(p * t for p, t in zip(PROBS, TRUTH))  # 0.5 + 0.75 = 1.25
    return 1 - (2 * inter + eps) / (sum(PROBS) + sum(TRUTH) + eps)  # 1 - 3.5 / 5 = 0.3


def test_focal_matches_hand_computation():
    logits, target = tiny()
    assert focal_loss(logits, target).item() == pytest.approx(focal_by_hand(), rel=1e-6)
    assert focal_loss(logits, target, alpha=0.5, gamma=1.0).item() == pytest.approx(
        focal_by_hand(0.5, 1.0), rel=1e-6
    )
    # gamma=0 without alpha is the binary cross-entropy: (ln 2 + ln 4/3 + ln 4/3 + ln 2) / 4
    bce = (2 * math.log(2) + 2 * math.log(4 / 3)) / 4
    assert focal_loss(logits, target, alpha=None, gamma=0.0).item() == pytest.approx(bce, rel=1e-6)
    assert focal_loss(logits, target.bool()).item() == pytest.approx(focal_by_hand(), rel=1e-6)


def test_dice_and_mask_loss_match_hand_computation():
    logits, target = tiny()
    assert dice_by_hand() == pytest.approx(0.3)
    assert dice_loss(logits, target).item() == pytest.approx(0.3, rel=1e-6)
    # eps = 0.5: 1 - 3 / 4.5
    assert dice_loss(logits, target, eps=0.5).item() == pytest.approx(1 - 3 / 4.5, rel=1e-6)
    expected = 20 * focal_by_hand() + 0.3
    assert mask_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert mask_loss(logits, target, focal_weight=1.0, dice_weight=2.0).item() == pytest.approx(
        focal_by_hand() + 0.6, rel=1e-6
    )


def test_iou_and_iou_loss_match_hand_computation():
    logits, target = tiny()
    # logits > 0 only at (0, 1); target is the top row: intersection 1, union 2
    iou = iou_of_masks(logits, target)
    assert iou.shape == (1, 1) and iou.item() == pytest.approx(0.5)
    assert not iou.requires_grad
    iou_pred = torch.tensor([[0.8]], requires_grad=True)
    loss = iou_loss(iou_pred, logits, target)
    assert loss.item() == pytest.approx(0.3**2, rel=1e-6)
    loss.backward()
    assert iou_pred.grad.item() == pytest.approx(2 * 0.3, rel=1e-6)


def test_reductions_per_mask():
    logits = torch.tensor(LOGITS).reshape(1, 1, 2, 2).repeat(2, 3, 1, 1)
    logits[1] = -logits[1]
    target = torch.tensor(TARGET).reshape(1, 1, 2, 2).expand(2, 3, 2, 2)
    per_mask = mask_loss(logits, target, reduction="none")
    assert per_mask.shape == (2, 3)
    assert mask_loss(logits, target).item() == pytest.approx(per_mask.mean().item(), rel=1e-6)
    assert dice_loss(logits, target, reduction="sum").item() == pytest.approx(
        dice_loss(logits, target, reduction="none").sum().item(), rel=1e-6
    )


def test_perfect_prediction():
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:6, 3:7] = 1
    target[1, 0, 0:3, 0:8] = 1
    logits = (target * 2 - 1) * 30.0
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert focal_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(iou_of_masks(logits, target), torch.ones(2, 1))
    # two empty masks agree: IoU 1, dice loss 0
    empty = torch.zeros(1, 1, 4, 4)
    assert iou_of_masks(empty - 10, empty).item() == 1.0
    assert dice_loss(empty - 30, empty).item() == pytest.approx(0.0, abs=1e-6)


def best_of_three():
    """One object (a 2x2 square in 4x4); mask 0 misses it, mask 1 is perfect, mask 2 spills."""
    target = torch.zeros(1, 4, 4)
    target[0, 1:3, 1:3] = 1
    logits = torch.full((1, 3, 4, 4), -5.0)
    logits[0, 1, 1:3, 1:3] = 5.0
    logits[0, 2] = 5.0
    return logits.requires_grad_(True), target


def test_best_of_three_backpropagates_only_the_best_mask():
    logits, target = best_of_three()
    iou_pred = torch.tensor([[0.3, 0.5, 0.7]], requires_grad=True)
    loss, parts = sam_loss(logits, iou_pred, target, multimask=True)
    assert isinstance(parts, SamLossParts)
    assert parts.index.tolist() == [1]
    assert parts.true_iou.tolist() == [[0.0, 1.0, 0.25]]  # 0/4, 4/4, 4/16
    assert parts.chosen_iou.tolist() == [1.0]
    loss.backward()
    assert torch.count_nonzero(logits.grad[0, 0]) == 0
    assert torch.count_nonzero(logits.grad[0, 2]) == 0
    assert torch.count_nonzero(logits.grad[0, 1]) == 16  # every pixel of the chosen mask
    # the IoU head learns all three: d/dp mean((p - iou)^2) = 2 (p - iou) / 3
    expected = [2 * (0.3 - 0.0) / 3, 2 * (0.5 - 1.0) / 3, 2 * (0.7 - 0.25) / 3]
    assert iou_pred.grad[0].tolist() == pytest.approx(expected, rel=1e-5)
    # total = mask loss of mask 1 + MSE over the three IoUs
    mse = ((0.3 - 0.0) ** 2 + (0.5 - 1.0) ** 2 + (0.7 - 0.25) ** 2) / 3
    mask1 = mask_loss(logits[:, 1].detach(), target).item()
    assert loss.item() == pytest.approx(mask1 + mse, rel=1e-5)
    assert parts.iou.item() == pytest.approx(mse, rel=1e-5)
    assert parts.as_dict()["miou"] == 1.0


def test_best_of_three_with_detached_iou_and_per_object_choice():
    logits, target = best_of_three()
    # a second object whose best mask is mask 2 (the full image)
    logits2 = logits.detach().clone()
    target2 = torch.ones(1, 4, 4)
    logits = torch.cat([logits.detach(), logits2]).requires_grad_(True)
    target = torch.cat([target, target2])[:, None]  # (B, 1, H, W) is accepted too
    loss, parts = sam_loss(logits, torch.zeros(2, 3), target, multimask=True)
    assert parts.index.tolist() == [1, 2]
    loss.backward()
    nonzero = (logits.grad.flatten(2) != 0).any(-1)
    assert nonzero.tolist() == [[False, True, False], [False, False, True]]


def test_single_mask_is_the_plain_sum():
    logits, target = tiny()
    iou_pred = torch.tensor([[0.8]], requires_grad=True)
    loss, parts = sam_loss(logits, iou_pred, target[:, 0], multimask=False)
    expected = 20 * focal_by_hand() + dice_by_hand() + 0.3**2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts.focal.item() == pytest.approx(focal_by_hand(), rel=1e-6)
    assert parts.dice.item() == pytest.approx(0.3, rel=1e-6)
    assert parts.index.tolist() == [0]
    weighted, _ = sam_loss(logits, iou_pred, target, multimask=False, focal_weight=0.0, iou_weight=2.0)
    assert weighted.item() == pytest.approx(0.3 + 2 * 0.09, rel=1e-6)


def test_prompt_on_no_object_has_true_iou_zero():
    """A click on background: the target is empty and, with ``present`` False, the true IoU is 0
    even for an empty prediction (otherwise 1, two empty masks agreeing)."""
    logits = torch.full((2, 1, 2, 2), -5.0)  # both predictions empty
    target = torch.zeros(2, 2, 2)
    iou_pred = torch.tensor([[0.6], [0.6]])
    _, parts = sam_loss(logits, iou_pred, target, multimask=False)
    assert parts.true_iou.tolist() == [[1.0], [1.0]]
    loss, parts = sam_loss(logits, iou_pred, target, multimask=False, focal_weight=0.0,
                           dice_weight=0.0, present=torch.tensor([True, False]))
    assert parts.true_iou.tolist() == [[1.0], [0.0]]
    assert loss.item() == pytest.approx((0.4**2 + 0.6**2) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="present must have shape"):
        sam_loss(logits, iou_pred, target, multimask=False, present=torch.tensor([True]))


def test_half_precision_logits_are_promoted():
    logits, target = tiny()
    assert mask_loss(logits.bfloat16(), target).dtype == torch.float32


def test_shape_validation():
    logits = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\).*\(2, 3, 4, 4\)"):
        focal_loss(logits, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="downsample_target"):
        dice_loss(logits, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"target\[:, None\]"):
        mask_loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"iou_pred.*\(2, 3\).*\(2, 1\)"):
        sam_loss(logits, torch.zeros(2, 1), torch.zeros(2, 8, 8), multimask=True)
    with pytest.raises(ValueError, match=r"target.*\(2, 8, 8\).*\(2, 4, 4\)"):
        sam_loss(logits, torch.zeros(2, 3), torch.zeros(2, 4, 4), multimask=True)
    with pytest.raises(ValueError, match="K = 1"):
        sam_loss(logits, torch.zeros(2, 3), torch.zeros(2, 8, 8), multimask=False)
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        sam_loss(torch.zeros(3, 8, 8), torch.zeros(3), torch.zeros(3, 8, 8), multimask=True)
    with pytest.raises(ValueError, match="iou_pred"):
        iou_loss(torch.zeros(2, 3, 1), logits, torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="floating"):
        focal_loss(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(logits, torch.zeros_like(logits), reduction="avg")
    with pytest.raises(ValueError, match="alpha"):
        focal_loss(logits, torch.zeros_like(logits), alpha=1.5)


def test_downsample_target():
    mask = np.zeros((2, 8, 8), dtype=bool)
    mask[0, :4, :4] = True  # whole 2x2 output blocks
    mask[1, 0, :] = True  # half of each block of the first output row: not > 0.5
    mask[1, 4:6, 4:7] = True  # 2x2 block (4:6, 4:6) full, (4:6, 6:8) half: not > 0.5
    out = downsample_target(mask, (4, 4))
    assert out.dtype == torch.float32 and out.shape == (2, 4, 4)
    expected0 = torch.zeros(4, 4)
    expected0[:2, :2] = 1
    assert torch.equal(out[0], expected0)
    expected1 = torch.zeros(4, 4)
    expected1[2, 2] = 1
    assert torch.equal(out[1], expected1)
    soft = downsample_target(torch.from_numpy(mask)[:, None], 4, threshold=None)
    assert soft.shape == (2, 1, 4, 4)
    assert soft[1, 0, 0].tolist() == [0.5] * 4
    assert soft[1, 0, 2, 3].item() == 0.5
    assert torch.equal(downsample_target(mask[0], (8, 8)), torch.from_numpy(mask[0]).float())
    with pytest.raises(ValueError, match="shape"):
        downsample_target(np.zeros((2, 3, 8, 8)), 4)
    with pytest.raises(ValueError, match="size"):
        downsample_target(mask, (4, 0))


def test_end_to_end_with_simulated_prompts(tiny_model):
    """Simulated prompts -> tiny SAM prompt encoder and decoder -> sam_loss -> gradients."""
    from conftest import TINY_INPUT, TINY_LOW_RES

    from napari_sam.synthetic import synthetic_nuclei
    from napari_sam.training.prompts import simulate_prompts

    _, labels = synthetic_nuclei((TINY_INPUT, TINY_INPUT), seed=0, radius=(5.0, 9.0))
    batch = simulate_prompts(labels, 4, np.random.default_rng(0), mode="point+box")
    model = tiny_model.train()
    coords = torch.from_numpy(batch.points_xy())
    sparse, dense = model.prompt_encoder(
        (coords, torch.from_numpy(batch.labels)), torch.from_numpy(batch.boxes_xy()), None
    )
    pe = model.prompt_encoder.get_dense_pe()
    embedding = torch.randn(pe.shape, generator=torch.Generator().manual_seed(0))  # no encoder: fast
    logits, iou_pred = model.mask_decoder(
        embedding, pe, sparse, dense, multimask_output=True
    )
    assert logits.shape == (batch.batch, 3) + TINY_LOW_RES
    target = downsample_target(batch.masks, logits.shape[-2:])
    loss, parts = sam_loss(logits, iou_pred, target, multimask=True)
    loss.backward()
    assert torch.isfinite(loss) and parts.index.shape == (batch.batch,)
    grads = [p.grad for p in model.mask_decoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
