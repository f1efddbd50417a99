"""Losses for training SAM: focal + dice on masks (20:1), MSE on the predicted IoU.

All functions take **logits** (before the sigmoid) laid out as ``(..., H, W)``: the last two axes
are the pixels of one mask, every leading axis indexes a separate mask (typically ``(B, K, H, W)``
for ``B`` objects with ``K`` = 3 multimask answers or ``K`` = 1). A loss "per mask" is therefore a
tensor of shape ``logits.shape[:-2]``, and ``reduction="mean"`` averages it over all masks.

Targets are ground-truth masks of exactly the logits' shape, ``bool`` or float in ``[0, 1]``
(fractional values, e.g. from an area-averaged downsampling, are allowed as soft targets for the
focal and dice terms; the IoU treats ``target > 0.5`` as foreground).

Resolution
----------
SAM's mask decoder returns low-resolution logits (256 x 256 for a 1024 input, ``4h x 4w`` for an
``h x w`` embedding grid). These losses are computed at whatever resolution they are given; the
caller brings the ground truth to the logits' size first, e.g. with
:func:`~napari_sam.training.targets.downsample_target` (cheapest), or upsamples the logits to the
ground truth instead (as Meta did; ``Recipe(loss_resolution="full")``), which lets outlines fall
between low-resolution pixels: binarised targets cap the mask quality of small objects. The ground truth must be in the
model's *input frame*: resized like the image (longest side to the input size) and zero-padded to
the square input, so that it lines up with the low-resolution logits.

Multimask outputs are trained either against one target with SAM's best-of-``K`` rule
(:func:`sam_loss`) or against ``K`` targets (e.g. the ground truth and eroded versions of it, see
:func:`napari_sam.training.targets.erosion_targets`) matched to the outputs by optimal assignment
(:func:`matched_sam_loss`).

Half-precision logits (``float16``, ``bfloat16``) are promoted to ``float32`` before any loss is
computed, so that the losses are accurate under autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = [
    "focal_loss",
    "dice_loss",
    "mask_loss",
    "iou_of_masks",
    "iou_loss",
    "sam_loss",
    "matched_sam_loss",
    "optimal_assignment",
    "SamLossParts",
]

_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _check_logits(logits, name: str = "logits", *, min_ndim: int = 2) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor of logits, got dtype {logits.dtype}")
    if logits.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions (..., H, W), got shape {tuple(logits.shape)}"
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits


def _check_target(target, logits: torch.Tensor, name: str = "target") -> torch.Tensor:
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(np.ascontiguousarray(target))
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(target).__name__}")
    if tuple(target.shape) != tuple(logits.shape):
        hint = ""
        if target.ndim == logits.ndim - 1 and tuple(target.shape) == tuple(logits.shape[:1]) + tuple(
            logits.shape[2:]
        ):
            hint = "; add the mask axis, e.g. target[:, None], or use sam_loss, which broadcasts it"
        elif target.shape[-2:] != logits.shape[-2:]:
            hint = "; bring the target to the logits' resolution first, e.g. with downsample_target"
        raise ValueError(
            f"{name} must have the shape of the logits {tuple(logits.shape)}, got {tuple(target.shape)}{hint}"
        )
    return target.to(device=logits.device, dtype=logits.dtype)


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(per_mask: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_mask.mean()
    if reduction == "sum":
        return per_mask.sum()
    return per_mask


def _check_decoder_outputs(logits, iou_pred) -> tuple[torch.Tensor, torch.Tensor]:
    logits = _check_logits(logits)
    if logits.ndim != 4:
        raise ValueError(f"logits must have shape (B, K, H, W), got {tuple(logits.shape)}")
    b, k = logits.shape[:2]
    iou_pred = _check_logits(iou_pred, "iou_pred", min_ndim=0)
    if tuple(iou_pred.shape) != (b, k):
        raise ValueError(
            f"iou_pred must have shape (B, K) = {(b, k)} for logits of shape {tuple(logits.shape)}, "
            f"got {tuple(iou_pred.shape)}"
        )
    return logits, iou_pred


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    return value


def _check_weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- #
# mask losses
# --------------------------------------------------------------------------- #
def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Sigmoid focal loss (Lin et al. 2017, RetinaNet; used by SAM), averaged over pixels.

    For a pixel with probability :math:`p = \sigma(x)` and target :math:`t`,

    .. math::

        \mathrm{FL} = -\alpha_t \, (1 - p_t)^\gamma \, \log p_t, \qquad
        p_t = p t + (1 - p)(1 - t), \qquad \alpha_t = \alpha t + (1 - \alpha)(1 - t),

    computed stably from the logits as ``BCE-with-logits * (1 - p_t) ** gamma * alpha_t`` (the
    same formula as ``torchvision.ops.sigmoid_focal_loss``, which also holds for soft targets).

    Parameters
    ----------
    logits : (..., H, W) float tensor
        Mask logits; each ``(H, W)`` slice is one mask.
    target : (..., H, W) bool or float tensor
        Ground truth of exactly the logits' shape, values in ``[0, 1]``.
    alpha : float in [0, 1] or None
        Weight of the foreground pixels (background gets ``1 - alpha``); None weighs both by 1.
    gamma : float >= 0
        Focusing exponent; ``gamma=0`` with ``alpha=None`` is the binary cross-entropy.
    reduction : {"mean", "sum", "none"}
        The loss is first the **mean over the H*W pixels** of each mask (shape
        ``logits.shape[:-2]``, returned by ``"none"``); ``"mean"`` (default) then averages and
        ``"sum"`` sums over the masks.

    Returns
    -------
    torch.Tensor
        A scalar, or one value per mask with ``reduction="none"``.

    Raises
    ------
    ValueError
        If the shapes differ, the logits are not a floating tensor with at least 2 dimensions,
        or ``alpha``, ``gamma`` or ``reduction`` are invalid.
    """
    logits = _check_logits(logits)
    target = _check_target(target, logits)
    _check_reduction(reduction)
    if alpha is not None:
        alpha = _check_weight("alpha", alpha)
        if alpha > 1:
            raise ValueError(f"alpha must lie in [0, 1] (or be None), got {alpha!r}")
    gamma = _check_weight("gamma", gamma)

    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma if gamma != 0 else ce
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return _reduce(loss.mean(dim=(-2, -1)), reduction)


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Soft dice loss on the sigmoid probabilities, ``1 - dice`` per mask.

    .. math::

        \mathrm{dice} = \frac{2 \sum p t + \varepsilon}{\sum p + \sum t + \varepsilon},
        \qquad p = \sigma(x),

    with the sums over the ``H * W`` pixels of each mask. The smoothing ``eps`` keeps the loss
    defined (and 0) for an empty target predicted empty.

    Parameters
    ----------
    logits : (..., H, W) float tensor
        Mask logits.
    target : (..., H, W) bool or float tensor
        Ground truth of exactly the logits' shape, values in ``[0, 1]``.
    eps : float > 0
        Smoothing added to the numerator and the denominator.
    reduction : {"mean", "sum", "none"}
        ``"none"`` returns one value per mask (shape ``logits.shape[:-2]``); ``"mean"`` (default)
        averages and ``"sum"`` sums them.

    Returns
    -------
    torch.Tensor
        A scalar, or one value per mask with ``reduction="none"``; each value lies in ``[0, 1)``.

    Raises
    ------
    ValueError
        If the shapes differ or ``eps`` / ``reduction`` are invalid.
    """
    logits = _check_logits(logits)
    target = _check_target(target, logits)
    _check_reduction(reduction)
    eps = _check_weight("eps", eps)
    if eps == 0:
        raise ValueError("eps must be > 0, e.g. eps=1.0 (it keeps the dice of empty masks defined)")
    prob = torch.sigmoid(logits).flatten(-2)
    target = target.flatten(-2)
    numerator = 2 * (prob * target).sum(-1) + eps
    denominator = prob.sum(-1) + target.sum(-1) + eps
    return _reduce(1 - numerator / denominator, reduction)


def mask_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    eps: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """SAM's mask loss: ``focal_weight * focal + dice_weight * dice`` (20:1 by default).

    Parameters
    ----------
    logits : (..., H, W) float tensor
        Mask logits.
    target : (..., H, W) bool or float tensor
        Ground truth of exactly the logits' shape.
    focal_weight, dice_weight : float >= 0
        Weights of :func:`focal_loss` and :func:`dice_loss`.
    alpha, gamma : float
        Passed to :func:`focal_loss`.
    eps : float
        Passed to :func:`dice_loss`.
    reduction : {"mean", "sum", "none"}
        As for :func:`focal_loss`; ``"none"`` gives one value per mask.

    Returns
    -------
    torch.Tensor
        A scalar, or one value per mask (shape ``logits.shape[:-2]``).
    """
    _check_reduction(reduction)
    focal_weight = _check_weight("focal_weight", focal_weight)
    dice_weight = _check_weight("dice_weight", dice_weight)
    focal = focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none")
    dice = dice_loss(logits, target, eps=eps, reduction="none")
    return _reduce(focal_weight * focal + dice_weight * dice, reduction)


# --------------------------------------------------------------------------- #
# IoU
# --------------------------------------------------------------------------- #
@torch.no_grad()
def iou_of_masks(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded prediction ``logits > 0`` with the target, per mask, no gradient.

    Parameters
    ----------
    logits : (..., H, W) float tensor
        Mask logits.
    target : (..., H, W) bool or float tensor
        Ground truth of exactly the logits' shape; ``target > 0.5`` is foreground.

    Returns
    -------
    (...) float32 tensor
        ``|pred & target| / |pred | target|`` for each mask, shape ``logits.shape[:-2]``. Two
        empty masks agree perfectly: their IoU is 1. The result never requires grad.
    """
    logits = _check_logits(logits)
    target = _check_target(target, logits)
    pred = (logits > 0).flatten(-2)
    truth = (target > 0.5).flatten(-2)
    inter = (pred & truth).sum(-1, dtype=torch.float32)
    union = (pred | truth).sum(-1, dtype=torch.float32)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_loss(
    iou_pred: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """MSE between the predicted IoU and the true IoU of the thresholded masks.

    The true IoU comes from :func:`iou_of_masks` and carries no gradient, so this loss trains the
    IoU head only, never the masks.

    Parameters
    ----------
    iou_pred : (...) float tensor
        The IoU head's output, one value per mask: shape ``logits.shape[:-2]``.
    logits : (..., H, W) float tensor
        Mask logits.
    target : (..., H, W) bool or float tensor
        Ground truth of exactly the logits' shape.
    reduction : {"mean", "sum", "none"}
        ``"none"`` returns the squared error per mask; ``"mean"`` (default) averages it.

    Returns
    -------
    torch.Tensor
    """
    _check_reduction(reduction)
    logits = _check_logits(logits)
    iou_pred = _check_logits(iou_pred, "iou_pred", min_ndim=0)
    if tuple(iou_pred.shape) != tuple(logits.shape[:-2]):
        raise ValueError(
            f"iou_pred must have one value per mask, shape {tuple(logits.shape[:-2])} for logits of "
            f"shape {tuple(logits.shape)}, got {tuple(iou_pred.shape)}"
        )
    true_iou = iou_of_masks(logits, target).to(iou_pred.dtype)
    return _reduce((iou_pred - true_iou) ** 2, reduction)


# --------------------------------------------------------------------------- #
# the full SAM loss
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class SamLossParts:
    """The parts of :func:`sam_loss`, all detached from the graph (no ``.item()`` sync is done).

    From :func:`matched_sam_loss`, every mask is "chosen" (matched to a target): ``focal``,
    ``dice``, ``mask`` and ``iou`` are then means over objects of **sums** over the ``K`` matched
    pairs (the terms of its loss, ``loss = mask + iou_weight * iou``), ``index`` is the output
    matched to the first target (the full mask), and ``true_iou`` compares each mask with the
    target matched to it.

    Attributes
    ----------
    loss : scalar tensor
        The total loss (detached copy).
    focal, dice : scalar tensors
        Mean over objects of the focal and dice losses of the chosen masks (unweighted).
    mask : scalar tensor
        Mean over objects of the weighted mask loss of the chosen masks.
    iou : scalar tensor
        MSE of the IoU head over all ``B * K`` masks (unweighted).
    index : (B,) int64 tensor
        Index of the chosen (lowest mask loss) mask of each object; zeros when ``K`` = 1.
    true_iou : (B, K) float32 tensor
        IoU of every thresholded mask with the target.
    chosen_iou : (B,) float32 tensor
        ``true_iou`` of the chosen masks (their mean is the batch's mIoU).
    """

    loss: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    mask: torch.Tensor
    iou: torch.Tensor
    index: torch.Tensor
    true_iou: torch.Tensor
    chosen_iou: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        """Scalars as Python floats for logging: loss, focal, dice, mask, iou, miou."""
        return {
            "loss": float(self.loss),
            "focal": float(self.focal),
            "dice": float(self.dice),
            "mask": float(self.mask),
            "iou": float(self.iou),
            "miou": float(self.chosen_iou.mean()) if self.chosen_iou.numel() else float("nan"),
        }


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    *,
    multimask: bool,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    eps: float = 1.0,
    present: torch.Tensor | None = None,
) -> tuple[torch.Tensor, SamLossParts]:
    """SAM's training loss for a batch of ``B`` objects with ``K`` masks each.

    ``loss = mean_b(mask_loss[b, k_b]) + iou_weight * mean_{b,k}((iou_pred[b,k] - iou[b,k])**2)``

    where ``mask_loss = focal_weight * focal + dice_weight * dice`` and

    - with ``multimask=True`` (``K`` masks, usually 3), ``k_b`` is the mask with the **lowest
      mask loss** for object ``b`` (the first one on ties): only that mask receives gradient from
      the mask terms, the others get exactly zero. The IoU head still learns all ``K`` predicted
      IoUs (MSE against the true IoU of every thresholded mask), as in SAM;
    - with ``multimask=False`` (``K`` must be 1), it is the plain sum of the mask loss and the
      IoU loss.

    The true IoU carries no gradient, so the logits are trained by the mask terms only.

    Parameters
    ----------
    logits : (B, K, H, W) float tensor
        Low-resolution mask logits from the mask decoder.
    iou_pred : (B, K) float tensor
        Predicted IoUs from the mask decoder.
    target : (B, H, W) or (B, 1, H, W) bool or float tensor
        Ground truth of each object at the logits' resolution ``(H, W)``: the caller downsamples
        the full-resolution masks, e.g. with :func:`downsample_target`. Broadcast over ``K``.
    multimask : bool
        Whether the decoder was asked for multimask output (best-of-``K`` rule).
    focal_weight, dice_weight, iou_weight : float >= 0
        Weights of the three terms (SAM: 20, 1, 1).
    alpha, gamma, eps : float
        Parameters of :func:`focal_loss` and :func:`dice_loss`.
    present : (B,) bool tensor, optional
        False for prompts that point at no object (a click on background, empty target): their
        true IoU is 0 whatever the prediction, so the IoU head learns to score them low.

    Returns
    -------
    loss : scalar tensor
        The loss to backpropagate.
    parts : SamLossParts
        Detached parts for logging, the chosen indices and the true IoUs.

    Raises
    ------
    ValueError
        If the shapes do not fit together (the message names them), or ``multimask=False`` is
        given with ``K != 1``.
    """
    logits, iou_pred = _check_decoder_outputs(logits, iou_pred)
    b, k, h, w = logits.shape
    target = _as_tensor(target, "target")
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != (b, h, w):
        raise ValueError(
            f"target must have shape (B, H, W) = {(b, h, w)} or (B, 1, H, W) for logits of shape "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}; downsample the ground truth to the "
            "logits' size first, e.g. with downsample_target(mask, logits.shape[-2:])"
        )
    if not isinstance(multimask, bool):
        raise ValueError(f"multimask must be True or False, got {multimask!r}")
    if not multimask and k != 1:
        raise ValueError(
            f"multimask=False needs logits with one mask per object (K = 1), got shape "
            f"{tuple(logits.shape)}; pass multimask=True for the best-of-{k} rule"
        )
    focal_weight = _check_weight("focal_weight", focal_weight)
    dice_weight = _check_weight("dice_weight", dice_weight)
    iou_weight = _check_weight("iou_weight", iou_weight)

    target = target[:, None].expand(b, k, h, w)
    focal = focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none")  # (B, K)
    dice = dice_loss(logits, target, eps=eps, reduction="none")  # (B, K)
    per_mask = focal_weight * focal + dice_weight * dice  # (B, K)
    if multimask:
        index = per_mask.detach().argmin(dim=1)  # first minimum on ties
    else:
        index = torch.zeros(b, dtype=torch.long, device=logits.device)
    pick = index[:, None]
    chosen = per_mask.gather(1, pick)[:, 0]  # (B,): gradient flows to the chosen masks only

    true_iou = iou_of_masks(logits, target)  # (B, K), no gradient
    if present is not None:
        present = torch.as_tensor(present, dtype=torch.bool, device=true_iou.device)
        if tuple(present.shape) != (b,):
            raise ValueError(f"present must have shape (B,) = ({b},), got {tuple(present.shape)}")
        true_iou = torch.where(present[:, None], true_iou, torch.zeros_like(true_iou))
    iou_err = ((iou_pred - true_iou.to(iou_pred.dtype)) ** 2).mean()
    loss = chosen.mean() + iou_weight * iou_err

    with torch.no_grad():
        parts = SamLossParts(
            loss=loss.detach().clone(),
            focal=focal.gather(1, pick).mean().detach(),
            dice=dice.gather(1, pick).mean().detach(),
            mask=chosen.mean().detach(),
            iou=iou_err.detach(),
            index=index,
            true_iou=true_iou,
            chosen_iou=true_iou.gather(1, pick)[:, 0],
        )
    return loss, parts


def matched_sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    targets: torch.Tensor,
    *,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    eps: float = 1.0,
) -> tuple[torch.Tensor, SamLossParts]:
    """SAM's loss with one target per output, outputs and targets matched by optimal assignment.

    For each object ``b``, output ``i`` and target ``j`` the cost is the loss of that pair,

    ``cost[b, i, j] = mask_loss(logits[b, i], targets[b, j])
    + iou_weight * (iou_pred[b, i] - iou(logits[b, i], targets[b, j]))**2``

    with ``mask_loss = focal_weight * focal + dice_weight * dice`` as in :func:`sam_loss`. The
    outputs are matched one to one with the targets to minimise the total cost
    (:func:`optimal_assignment`, on the detached costs), and

    ``loss = mean_b sum_i cost[b, i, match[b, i]]``.

    Every output receives gradient from the mask terms, towards the target it is matched to; the
    IoU head learns each output's IoU with its matched target.

    Parameters
    ----------
    logits : (B, K, H, W) float tensor
        Low-resolution mask logits from the mask decoder.
    iou_pred : (B, K) float tensor
        Predicted IoUs from the mask decoder.
    targets : (B, K, H, W) bool or float tensor
        ``K`` targets per object at the logits' resolution, e.g. from
        :func:`~napari_sam.training.targets.erosion_targets`; the first is taken as the object
        itself for :attr:`SamLossParts.index` and the logged mIoU.
    focal_weight, dice_weight, iou_weight : float >= 0
        Weights of the three terms, in the loss and in the matching cost.
    alpha, gamma, eps : float
        Parameters of :func:`focal_loss` and :func:`dice_loss`.

    Returns
    -------
    loss : scalar tensor
        The loss to backpropagate.
    parts : SamLossParts
        Detached parts for logging (see there for what they mean here).

    Raises
    ------
    ValueError
        If the shapes do not fit together (the message names them).
    """
    logits, iou_pred = _check_decoder_outputs(logits, iou_pred)
    b, k, h, w = logits.shape
    targets = _as_tensor(targets, "targets")
    if tuple(targets.shape) != (b, k, h, w):
        raise ValueError(
            f"targets must have shape (B, K, H, W) = {(b, k, h, w)}, one per output, for logits of "
            f"shape {tuple(logits.shape)}, got {tuple(targets.shape)}; build them at the logits' "
            "size, e.g. erosion_targets(downsample_target(mask, logits.shape[-2:]))"
        )
    focal_weight = _check_weight("focal_weight", focal_weight)
    dice_weight = _check_weight("dice_weight", dice_weight)
    iou_weight = _check_weight("iou_weight", iou_weight)

    # every (output i, target j) pair: axes (B, K outputs, K targets)
    pair_logits = logits[:, :, None].expand(b, k, k, h, w)
    pair_targets = targets[:, None].expand(b, k, k, h, w)
    focal = focal_loss(pair_logits, pair_targets, alpha=alpha, gamma=gamma, reduction="none")
    dice = dice_loss(pair_logits, pair_targets, eps=eps, reduction="none")
    true_iou = iou_of_masks(pair_logits, pair_targets)  # no gradient
    iou_err = (iou_pred[:, :, None] - true_iou.to(iou_pred.dtype)) ** 2
    per_mask = focal_weight * focal + dice_weight * dice
    cost = per_mask + iou_weight * iou_err

    match = optimal_assignment(cost.detach())[:, :, None]  # (B, K, 1): target of each output
    loss = cost.gather(2, match).sum(dim=1).mean()

    with torch.no_grad():
        index = (match[:, :, 0] == 0).int().argmax(dim=1)  # the output matched to target 0
        matched_iou = true_iou.gather(2, match)[:, :, 0]
        parts = SamLossParts(
            loss=loss.detach().clone(),
            focal=focal.gather(2, match).sum(dim=1).mean(),
            dice=dice.gather(2, match).sum(dim=1).mean(),
            mask=per_mask.gather(2, match).sum(dim=1).mean(),
            iou=iou_err.gather(2, match).sum(dim=1).mean(),
            index=index,
            true_iou=matched_iou,
            chosen_iou=matched_iou.gather(1, index[:, None])[:, 0],
        )
    return loss, parts


def optimal_assignment(cost: torch.Tensor) -> torch.Tensor:
    """One-to-one matching of rows to columns with the lowest total cost, per matrix.

    Solved exactly by the Hungarian method (:func:`scipy.optimize.linear_sum_assignment`).

    Parameters
    ----------
    cost : (B, K, K) tensor
        ``cost[b, i, j]`` of giving row ``i`` column ``j`` (the values are read, never
        differentiated).

    Returns
    -------
    (B, K) int64 tensor
        ``match[b, i]``, the column given to row ``i``: a permutation of ``0 .. K-1`` per matrix
        minimising ``sum_i cost[b, i, match[b, i]]``; on the device of ``cost``.

    Examples
    --------
    >>> optimal_assignment(torch.tensor([[[1.0, 2.0], [0.0, 9.0]]]))  # greedy would give [0, 1]
    tensor([[1, 0]])
    """
    if not isinstance(cost, torch.Tensor) or cost.ndim != 3 or cost.shape[1] != cost.shape[2]:
        shape = tuple(cost.shape) if isinstance(cost, torch.Tensor) else type(cost).__name__
        raise ValueError(f"cost must be a (B, K, K) tensor of square cost matrices, got {shape}")
    values = cost.detach().double().cpu().numpy()
    match = np.array([linear_sum_assignment(matrix)[1] for matrix in values], dtype=np.int64)
    return torch.as_tensor(match.reshape(cost.shape[:2]), device=cost.device)
