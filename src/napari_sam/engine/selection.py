"""Choosing one of the multimask answers: a click is ambiguous (whole cell, cell body, nucleus)."""

from __future__ import annotations

import numpy as np

__all__ = ["STRATEGIES", "select_mask"]

STRATEGIES = ("score", "largest", "smallest", "balanced")


def select_mask(masks, scores, strategy: str = "score") -> int:
    """Index of the mask to keep among the candidate answers to one prompt.

    Strategies:

    - ``"score"``: the highest predicted IoU;
    - ``"largest"`` / ``"smallest"``: the most / fewest foreground pixels;
    - ``"balanced"``: the highest ``score * (1 - 0.2 * |area / max_area - 0.5|)``, the score
      weighted (by at most 10 %) towards the mask whose area is half that of the largest one,
      i.e. a middle-sized answer when the scores are close.

    Ties go to the first mask.

    Parameters
    ----------
    masks : (k, H, W) bool array
        Candidate masks of one object (nonzero is foreground), e.g. ``masks`` from
        :meth:`~napari_sam.Predictor.predict`.
    scores : (k,) float array
        Their predicted IoUs.
    strategy : {"score", "largest", "smallest", "balanced"}
        How to choose.

    Returns
    -------
    int
        The position of the chosen mask in ``masks``.

    Raises
    ------
    ValueError
        If ``strategy`` is not one of the above, there is no mask, the shapes do not fit together
        or a score is not finite.

    See Also
    --------
    napari_sam.Predictor.predict : ``select=`` returns the chosen mask only.

    Examples
    --------
    >>> import numpy as np
    >>> masks = np.zeros((3, 8, 8), bool)
    >>> masks[0, :8], masks[1, :4], masks[2, :1] = True, True, True  # areas 64, 32, 8
    >>> scores = np.array([0.80, 0.78, 0.84])
    >>> [select_mask(masks, scores, s) for s in ("score", "largest", "smallest", "balanced")]
    [2, 0, 2, 1]
    """
    masks, scores = _validate(masks, scores, strategy)
    if strategy == "score":
        return int(np.argmax(scores))
    areas = np.count_nonzero(masks.reshape(len(masks), -1), axis=1)
    if strategy == "largest":
        return int(np.argmax(areas))
    if strategy == "smallest":
        return int(np.argmin(areas))
    relative = areas / max(int(areas.max()), 1)  # all-empty masks: every weight is the same
    return int(np.argmax(scores * (1 - 0.2 * np.abs(relative - 0.5))))


def check_strategy(strategy) -> None:
    """Raise ValueError unless ``strategy`` is one of :data:`STRATEGIES`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}; got {strategy!r}")


def _validate(masks, scores, strategy) -> tuple[np.ndarray, np.ndarray]:
    check_strategy(strategy)
    masks, scores = np.asarray(masks), np.asarray(scores, dtype=float)
    if masks.ndim != 3:
        raise ValueError(
            f"masks must have shape (k, H, W), got {masks.shape}; for one mask use masks[None]"
        )
    if scores.shape != (len(masks),):
        raise ValueError(
            f"scores must have one value per mask, shape ({len(masks)},) for masks of shape "
            f"{masks.shape}, got {scores.shape}"
        )
    if len(masks) == 0:
        raise ValueError("masks is empty (k = 0): there is no mask to select; pass at least one")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite, got {scores}")
    return masks, scores
