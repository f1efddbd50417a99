"""Propagation of a committed object through z with SAM 2.1's memory, for the interactive widget.

The object's mask on its slice becomes a mask prompt of a
:class:`~napari_sam.engine.tracking.PlaneTracker`, which follows it up and / or down the stack
and stops where the model says, slice after slice, that the object has ended. No Qt here: the
widget runs :func:`follow` in a worker and writes each yielded slice with :func:`free_pixels`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from napari_sam.engine.geometry import bounding_box
from napari_sam.engine.tracking import PlaneTracker
from napari_sam.models.registry import MODELS, build_sam2_1
from napari_sam.models.sam2.model import Sam2
from napari_sam.plugin.session import ImageSource, Session
from napari_sam.volume.tracking import plane_features

#: An object is no longer followed after this many slices in a row where the model says it is
#: absent (the tracker's ``end_after``).
END_AFTER = 2
#: The widget's directions as the tracker's: "up" towards higher slice indices.
REVERSE = {"up": (False,), "down": (True,), "both": (False, True)}

MEMORY_TEXT = ("SAM 2.1 memory: the object is followed through z until the model says it has "
               "ended; the stop settings below are for SAM models")
REPROMPT_TEXT = ("SAM: each slice is prompted with the previous slice's mask, until a stop "
                 "setting below is crossed")


def memory_model(session: Session) -> bool | None:
    """Whether the session's model is a SAM 2.1 model (propagation with memory), without
    loading it: from the loaded model when it matches the settings, else from the registry.
    None when only loading can tell (a checkpoint file not loaded yet)."""
    settings = session.settings
    # Session has no public "loaded model" accessor: session.model() would load the weights.
    loaded = getattr(session, "_model", None)
    key = getattr(session, "_model_key", None)
    if loaded is not None and key == (settings.model, settings.checkpoint, settings.device):
        return isinstance(loaded, Sam2)
    if settings.checkpoint:
        return None
    spec = MODELS.get(settings.model)
    if spec is None:
        return None
    return getattr(spec.build, "func", spec.build) is build_sam2_1


@dataclass
class MemoryStep:
    """The object on one slice.

    Attributes
    ----------
    plane : int
        Index of the slice along z.
    mask : (H, W) bool array
        The object there (empty where the model says it is absent).
    score : float
        The model's logit that the object is present (> 0) on the slice.
    """

    plane: int
    mask: np.ndarray
    score: float

    @property
    def present(self) -> bool:
        return self.score > 0 and bool(self.mask.any())


@dataclass
class MemorySummary:
    """What :func:`follow` did.

    Attributes
    ----------
    reached : dict
        For each direction followed ("up", "down"): the farthest slice where the object was
        found (None: on none), and whether the object ended there (the model said it was absent
        on the next ``END_AFTER`` slices, or on the slices up to the stack's edge).
    cancelled : bool
    """

    reached: dict[str, tuple[int | None, bool]] = field(default_factory=dict)
    cancelled: bool = False

    def describe(self, plane: int) -> str:
        """For the status line: how far the object was followed from ``plane``."""
        parts = []
        for name, (last, ended) in self.reached.items():
            if last is None:
                parts.append(f"{name}: absent beyond slice {plane}")
            elif ended:
                parts.append(f"{name}: to slice {last}, where it ends")
            else:
                parts.append(f"{name}: to slice {last}")
        return "; ".join(parts)


def follow(session: Session, source: ImageSource, index: tuple[int, ...], mask: np.ndarray,
           object_id: int, *, direction: str = "both",
           should_stop: Callable[[], bool] | None = None,
           end_after: int = END_AFTER) -> Iterator[MemoryStep]:
    """Follow one object from its mask on slice ``index`` through z with SAM 2.1's memory.

    Every model call holds the session's lock, one slice at a time, so that prompts on other
    slices get their turn. Slices are embedded SAM 2's way (the whole slice resized to the
    model input, with the volume's intensity limits), through the session's disk cache if it
    has one.

    Parameters
    ----------
    index : tuple of int
        The slice of ``mask``; its last value is the position along z.
    direction : {"both", "up", "down"}
        "both" goes up, then down.
    should_stop : callable, optional
        Checked before each slice; True ends the propagation (a cancel button).

    Yields
    ------
    MemoryStep
        Each slice visited, ``index`` itself excepted, in order: up, then down.

    Returns
    -------
    MemorySummary
        Through ``StopIteration.value`` (a worker's ``returned`` signal).

    Raises
    ------
    TypeError
        The session's model is not a SAM 2.1 model.
    """
    if direction not in REVERSE:
        raise ValueError(f"direction must be 'both', 'up' or 'down', got {direction!r}")
    volume = source.volume
    lead, start = tuple(index[:-1]), int(index[-1])
    n_planes = volume.planes[-1]
    with session.lock:
        model = session.model()
        if not isinstance(model, Sam2):
            raise TypeError(f"{type(model).__name__} is not a SAM 2.1 model: use the "
                            "propagation of napari_sam.volume.propagation")
        # the session's disk cache (Session has no public accessor for it)
        features = plane_features(model, volume, source.limits, session._embedding_store())

        def features_for(plane: int):
            return features(int(np.ravel_multi_index((*lead, plane), volume.planes)))

        tracker = PlaneTracker(model, n_planes=n_planes, plane_shape=volume.plane_shape,
                               features_for=features_for, end_after=end_after)
        tracker.add_prompt(start, object_id, mask=np.asarray(mask, bool))
    summary = MemorySummary()
    for reverse in REVERSE[direction]:
        name = "down" if reverse else "up"
        edge = 0 if reverse else n_planes - 1
        last, visited = None, start
        planes = tracker.propagate(start, reverse=reverse)
        try:
            while True:
                if should_stop is not None and should_stop():
                    summary.cancelled = True
                    summary.reached[name] = (last, False)
                    return summary
                with session.lock:
                    tracked = next(planes, None)
                if tracked is None:
                    break
                if tracked.plane == start:
                    continue  # the committed slice stays as it was committed
                visited = tracked.plane
                found = (tracked.masks[0] if tracked.object_ids
                         else np.zeros(volume.plane_shape, bool))
                score = float(tracked.object_scores[0]) if tracked.object_ids else -np.inf
                step = MemoryStep(tracked.plane, found, score)
                if step.present:
                    last = step.plane
                yield step
        finally:
            planes.close()
        ended = visited != edge or last != edge
        summary.reached[name] = (last, ended)
    return summary


def free_pixels(labels_layer, index: tuple[int, ...], mask: np.ndarray, value: int) -> np.ndarray:
    """The part of ``mask`` that may take ``value`` on slice ``index`` of a labels layer: where
    the labels are 0 or already ``value`` (other objects are never painted over). Only the box
    around ``mask`` is read."""
    if not mask.any():
        return mask
    top, left, bottom, right = bounding_box(mask)
    window = (slice(top, bottom + 1), slice(left, right + 1))
    labels = np.asarray(labels_layer.data[(*index, *window)])
    free = np.zeros_like(mask)
    free[window] = mask[window] & ((labels == 0) | (labels == value))
    return free
