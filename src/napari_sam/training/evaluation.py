"""Segmentation quality on labelled images: mean IoU of prompted masks, instance F1 of label
images."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from napari_sam.engine.geometry import bounding_box, centre_point, iou, label_iou
from napari_sam.engine.predictor import Predictor
from napari_sam.models.sam import Sam

# The mIoU scores of :func:`prompt_miou`.
SCORES = ("point", "point_oracle", "box")


def prompt_miou(
    model: Sam,
    examples: list[tuple[np.ndarray, np.ndarray]],
    *,
    max_objects: int = 32,
    min_area: int = 16,
    batch: int = 16,
) -> dict[str, float]:
    """Mean IoU of the model's masks for a centre click and for the bounding box of each object.

    Parameters
    ----------
    model : Sam
    examples : list of (image, labels)
        2D images (anything :meth:`Predictor.set_image` takes) and their label images.
    max_objects : int
        Objects evaluated per image (the largest first).
    min_area : int
        Smaller objects are skipped.
    batch : int
        Prompts decoded at once.

    Returns
    -------
    dict
        ``point`` (one positive click, the mask with the highest predicted IoU of the three),
        ``point_oracle`` (the best of the three masks), ``box`` (single mask), ``objects``.
    """
    predictor = Predictor(model)
    ious: dict[str, list[float]] = {score: [] for score in SCORES}
    was_training = model.training
    model.eval()
    try:
        for image, labels in examples:
            ids, areas = np.unique(labels[labels > 0], return_counts=True)
            ids = ids[areas >= min_area][np.argsort(-areas[areas >= min_area])][:max_objects]
            if len(ids) == 0:
                continue
            predictor.set_image(image)
            truths = [labels == i for i in ids]
            for start in range(0, len(truths), batch):
                chunk = np.stack(truths[start : start + batch])
                points = np.array([[centre_point(m)] for m in chunk], dtype=float)
                masks, scores, _ = predictor.predict_batch(points=points, multimask=True)
                chosen = masks[np.arange(len(chunk)), scores.argmax(axis=1)]
                ious["point"] += list(iou(chosen, chunk))
                every = iou(masks, chunk[:, None])  # (B, 3)
                ious["point_oracle"] += list(every.max(axis=1))
                boxes = np.array([bounding_box(m) for m in chunk], dtype=float)
                masks, _, _ = predictor.predict_batch(boxes=boxes, multimask=False)
                ious["box"] += list(iou(masks[:, 0], chunk))
    finally:
        model.train(was_training)
    result = {key: float(np.mean(values)) if values else float("nan") for key, values in ious.items()}
    result["objects"] = len(ious["box"])
    return result


def instance_f1(predicted: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Instance detection quality of a label image or volume: objects matched one to one at an IoU.

    A predicted object and a true object may match when their IoU is above ``threshold``, and
    each object matches at most once. Above 0.5 such pairs are unique (an object cannot overlap
    two others by more than half), so all of them are matches; below, an object may have
    several candidates and the matches are a largest set of one-to-one pairs, found by optimal
    assignment (:func:`scipy.optimize.linear_sum_assignment`).

    Parameters
    ----------
    predicted, truth : int arrays of the same shape
        Label images (H, W) or volumes (Z, Y, X), 0 for background.
    threshold : float
        IoU a match must exceed, in ``(0, 1)``.

    Returns
    -------
    dict
        ``f1``, ``precision``, ``recall``, ``matched``, ``predicted``, ``true``.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be an IoU between 0 and 1 (exclusive), not {threshold}")
    if np.shape(predicted) != np.shape(truth):
        raise ValueError(f"predicted {np.shape(predicted)} and truth {np.shape(truth)} differ in "
                         "shape")
    candidates = label_iou(predicted, truth)[2] > threshold
    if threshold >= 0.5:
        matched = int(candidates.sum())
    else:
        rows, cols = linear_sum_assignment(candidates, maximize=True)
        matched = int(candidates[rows, cols].sum())
    n_pred, n_true = candidates.shape
    precision = matched / n_pred if n_pred else 1.0
    recall = matched / n_true if n_true else 1.0
    f1 = 2 * matched / (n_pred + n_true) if n_pred + n_true else 1.0
    return {"f1": f1, "precision": precision, "recall": recall, "matched": matched,
            "predicted": n_pred, "true": n_true}
