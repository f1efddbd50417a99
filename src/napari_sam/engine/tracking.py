"""Objects carried through the planes of a stack by SAM 2.1's memory (video semantics over z).

A :class:`PlaneTracker` takes prompts (points, boxes, masks) for any number of objects on any
planes, then propagates each object forward and backward through the planes: every plane is
segmented by the mask decoder on features conditioned, by memory attention, on the object's
prompted planes and its 6 nearest already-segmented planes, plus the object pointers of up to
16 planes. It selects memories exactly as Meta's video predictor does, so its masks are
SAM 2's; unlike it, it keeps only the memories that can still be attended to, so its memory is
bounded whatever the number of planes, and it stops following an object once the model has
said, plane after plane, that the object has ended.

Plane features come from a callable (the volume layer reads them from the
:class:`~napari_sam.engine.embeddings.EmbeddingStore`), so embedding and propagation are
separate steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

from napari_sam.engine.denormals import flush_denormals
from napari_sam.engine.prompts import box_rc_to_xy, rc_to_xy
from napari_sam.engine.resize import scale_xy
from napari_sam.models.sam2.model import (
    MAX_POINTERS,
    MEMORY_SLOTS,
    Decoded,
    PlaneFeatures,
    PlaneMemory,
    Sam2,
)

#: Holes of the low-resolution mask up to this many pixels are filled (Meta's video predictor).
FILL_HOLE_AREA = 8
#: The logit given to a filled hole.
HOLE_LOGIT = 0.1
#: Mask logits fed back with new clicks are clipped to this range (as Meta's predictor does).
PREVIOUS_LOGIT_CLIP = 32.0


@dataclass
class _Output:
    """One object on one plane: what was shown, and what later planes may attend to."""

    logits: torch.Tensor  # (1, 1, h, w) low-resolution mask logits, holes filled
    pointer: torch.Tensor  # (1, C)
    object_logits: torch.Tensor  # (1, 1)
    predicted_iou: float  # the decoder's IoU prediction of the mask shown
    memory: torch.Tensor | None = None  # (1, C_mem, h', w') bfloat16, once encoded
    from_prompt: bool = True  # encoded from a prompt: memory of the thresholded mask


@dataclass
class _Object:
    """Everything known about one object."""

    prompted: dict[int, _Output] = field(default_factory=dict)  # conditioning planes
    tracked: dict[int, _Output] = field(default_factory=dict)  # planes found by propagation
    pending: dict[int, tuple[bool, _Output]] = field(default_factory=dict)  # prompts not yet in memory
    visited: dict[int, bool] = field(default_factory=dict)  # plane -> reached in reverse


@dataclass
class TrackedPlane:
    """The objects on one plane.

    Attributes
    ----------
    plane : int
    object_ids : list of int
    logits : (n, H, W) float32 array
        Mask logits of each object at the plane's resolution (> 0 inside).
    object_scores : (n,) float array
        The model's logit that each object is present (> 0) on the plane.
    predicted_iou : (n,) float array
        The decoder's predicted IoU of each object's mask.
    """

    plane: int
    object_ids: list[int]
    logits: np.ndarray
    object_scores: np.ndarray
    predicted_iou: np.ndarray

    @property
    def masks(self) -> np.ndarray:
        """``(n, H, W)`` bool: each object's mask."""
        return self.logits > 0

    def labels(self, dtype=np.uint32) -> np.ndarray:
        """The objects as one label image (their ids; where masks overlap, the larger logit)."""
        shape = self.logits.shape[1:]
        if not self.object_ids:
            return np.zeros(shape, dtype)
        best = self.logits.argmax(axis=0)
        ids = np.asarray(self.object_ids, dtype)[best]
        return np.where(self.logits.max(axis=0) > 0, ids, 0).astype(dtype)


class PlaneTracker:
    """Prompt objects on planes of a stack and follow them through it with SAM 2.1's memory.

    Parameters
    ----------
    model : Sam2
    n_planes : int
        Number of planes of the stack.
    plane_shape : tuple of int
        ``(H, W)`` of every plane; prompts and outputs are in its pixels.
    features_for : callable
        ``features_for(plane)`` gives the plane's :class:`~napari_sam.models.sam2.model.PlaneFeatures`
        (of the plane resized to the square model input, SAM 2's way).
    fill_hole_area : int
        Holes of a low-resolution mask up to this area (pixels) are filled; 0 keeps them.
    end_after : int or None
        Stop following an object in a direction after this many planes in a row where the model
        says it is absent (the object has ended). None follows every object to the last plane,
        as Meta's video predictor does.

    Examples
    --------
    >>> tracker = PlaneTracker(model, n_planes=40, plane_shape=(512, 512),
    ...                        features_for=features)  # doctest: +SKIP
    >>> tracker.add_prompt(12, object_id=1, points=[[250, 300]])  # doctest: +SKIP
    >>> for plane in tracker.propagate():  # doctest: +SKIP
    ...     labels[plane.plane] = plane.labels()
    """

    def __init__(self, model: Sam2, *, n_planes: int, plane_shape: tuple[int, int],
                 features_for: Callable[[int], PlaneFeatures], fill_hole_area: int = FILL_HOLE_AREA,
                 end_after: int | None = 2) -> None:
        if not isinstance(model, Sam2):
            raise TypeError(
                f"propagation with memory needs a SAM 2.1 model, got {type(model).__name__}: load "
                "one with load_model('sam2.1_hiera_tiny') (or small, base_plus, large), or use "
                "napari_sam.volume.propagation.propagate for SAM models"
            )
        if n_planes < 1:
            raise ValueError(f"n_planes must be at least 1, got {n_planes}")
        if end_after is not None and end_after < 1:
            raise ValueError(f"end_after must be None or at least 1, got {end_after}")
        self.model = model.eval()
        self.n_planes = int(n_planes)
        self.plane_shape = tuple(int(s) for s in plane_shape)
        self.features_for = features_for
        self.fill_hole_area = fill_hole_area
        self.end_after = end_after
        self._objects: dict[int, _Object] = {}
        self._cached: tuple[int, PlaneFeatures] | None = None

    @property
    def object_ids(self) -> list[int]:
        """The objects prompted so far, in the order they were first prompted."""
        return list(self._objects)

    # -- prompts ---------------------------------------------------------------------------

    @flush_denormals
    @torch.inference_mode()
    def add_prompt(self, plane: int, object_id: int, *, points=None, labels=None, box=None,
                   mask=None) -> np.ndarray:
        """Prompt one object on one plane, replacing its earlier prompts on that plane.

        Parameters
        ----------
        plane : int
        object_id : int
            Positive id; a new id adds an object.
        points : (N, 2) array-like, optional
            ``(row, col)`` in plane pixels.
        labels : (N,) array-like, optional
            1 on the object, 0 off it; all 1 by default.
        box : (4,) array-like, optional
            ``(min_row, min_col, max_row, max_col)``.
        mask : (H, W) array-like of bool, optional
            The object's mask on the plane (instead of points and box).

        Returns
        -------
        (H, W) bool array
            The object's mask on the plane.
        """
        plane = self._check_plane(plane)
        if isinstance(object_id, bool) or not isinstance(object_id, (int, np.integer)) or object_id < 1:
            raise ValueError(f"object_id must be a positive integer, got {object_id!r}")
        has_points = points is not None or box is not None
        if has_points == (mask is not None):
            raise ValueError("give points and/or a box, or a mask (one kind of prompt per call)")
        # Everything is checked before the object is recorded: a refused prompt leaves no trace.
        prompt = self._mask_input(mask) if mask is not None else self._points(points, labels, box)
        obj = self._objects.get(int(object_id), _Object())
        initial = plane not in obj.visited
        reverse = obj.visited.get(plane, False)
        features = self._features(plane)
        if mask is not None:
            output = self._output(self.model.mask_as_output(features, prompt))
        else:
            coords, point_labels = prompt
            previous = obj.pending.get(plane, (None, None))[1] or obj.prompted.get(plane) \
                or obj.tracked.get(plane)
            previous_logits = None
            if previous is not None:
                previous_logits = previous.logits.clamp(-PREVIOUS_LOGIT_CLIP, PREVIOUS_LOGIT_CLIP)
            conditioned = self._condition(obj, plane, features, initial=initial, reverse=reverse)
            multimask = coords.shape[1] <= 1  # one click is ambiguous; a box counts as two
            decoded = self.model.decode(conditioned, features.high_res, coords=coords,
                                        labels=point_labels, mask_logits=previous_logits,
                                        multimask=multimask)
            output = self._output(decoded)
        obj.pending[plane] = (initial, output)
        self._objects[int(object_id)] = obj
        return self._to_plane(output.logits)[0, 0].cpu().numpy() > 0

    def _points(self, points, labels, box) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt points in model input pixels ``(x, y)``, a box's corners first (labels 2, 3)."""
        side = self.model.img_size
        coords, kinds = [], []
        if box is not None:
            box = np.asarray(box, dtype=np.float64)
            if box.shape != (4,):
                raise ValueError(f"box must be (min_row, min_col, max_row, max_col), got shape {box.shape}")
            coords.append(box_rc_to_xy(box[None]).reshape(2, 2))
            kinds.append(np.array([2, 3]))
        if points is not None:
            points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            labels = np.ones(len(points), int) if labels is None else np.asarray(labels).reshape(-1)
            if len(labels) != len(points) or not np.isin(labels, (0, 1)).all():
                raise ValueError("labels must be 0 or 1, one per point")
            coords.append(rc_to_xy(points))
            kinds.append(labels)
        xy = scale_xy(np.concatenate(coords), self.plane_shape, (side, side))
        device = self.model.device
        return (torch.as_tensor(xy, dtype=torch.float32, device=device)[None],
                torch.as_tensor(np.concatenate(kinds), dtype=torch.int32, device=device)[None])

    def _mask_input(self, mask) -> torch.Tensor:
        mask = np.asarray(mask)
        if mask.shape != self.plane_shape:
            raise ValueError(f"mask has shape {mask.shape}, the planes are {self.plane_shape}")
        side = self.model.img_size
        tensor = torch.as_tensor(mask != 0, device=self.model.device).float()[None, None]
        if tensor.shape[-2:] != (side, side):
            tensor = F.interpolate(tensor, (side, side), mode="bilinear", align_corners=False,
                                   antialias=True)
            tensor = (tensor >= 0.5).float()
        return tensor

    # -- propagation -----------------------------------------------------------------------

    @flush_denormals
    @torch.inference_mode()
    def propagate(self, start: int | None = None, *, reverse: bool = False,
                  max_planes: int | None = None) -> Iterator[TrackedPlane]:
        """Follow every prompted object from ``start`` in one direction.

        Parameters
        ----------
        start : int, optional
            First plane; by default the lowest prompted plane of any object.
        reverse : bool
            Towards plane 0 instead of the last plane.
        max_planes : int, optional
            Stop after this many planes beyond ``start``.

        Yields
        ------
        TrackedPlane
            Each plane in order, with the objects not yet ended (``start`` included).
        """
        self._commit_prompts()
        if start is None:
            start = min(p for obj in self._objects.values() for p in obj.prompted)
        start = self._check_plane(start)
        span = self.n_planes if max_planes is None else int(max_planes)
        step = -1 if reverse else 1
        stop = max(start - span, 0) - 1 if reverse else min(start + span, self.n_planes - 1) + 1
        planes = [] if reverse and start == 0 else range(start, stop, step)
        absent_run = {obj_id: 0 for obj_id in self._objects}
        for plane in planes:
            active = [i for i, obj in self._objects.items()
                      if not self._ended(obj, plane, reverse, absent_run[i])]
            if not active:
                return
            logits, scores, ious = [], [], []
            for obj_id in active:
                obj = self._objects[obj_id]
                output = obj.prompted.get(plane)
                if output is None:
                    output = self._track(obj, plane, reverse)
                    obj.tracked[plane] = output
                obj.visited[plane] = reverse
                self._forget(obj, plane, reverse)
                score = float(output.object_logits.max())
                absent_run[obj_id] = absent_run[obj_id] + 1 if score <= 0 and plane not in obj.prompted else 0
                logits.append(output.logits)
                scores.append(score)
                ious.append(output.predicted_iou)
            full = self._to_plane(torch.cat(logits))[:, 0]
            yield TrackedPlane(plane, active, full.float().cpu().numpy(), np.array(scores),
                               np.array(ious))

    def _ended(self, obj: _Object, plane: int, reverse: bool, absent_run: int) -> bool:
        """Whether an object has ended: absent on the last ``end_after`` planes, with no
        prompted plane here or ahead in this direction."""
        if self.end_after is None or absent_run < self.end_after:
            return False
        return not any((p <= plane) if reverse else (p >= plane) for p in obj.prompted)

    def propagate_both(self, **kwargs) -> Iterator[TrackedPlane]:
        """:meth:`propagate` upwards, then downwards, from the lowest prompted plane (which is
        yielded twice, with the same masks)."""
        yield from self.propagate(**kwargs)
        yield from self.propagate(reverse=True, **kwargs)

    def _track(self, obj: _Object, plane: int, reverse: bool) -> _Output:
        """Segment an object on a plane it was not prompted on, and encode its memory."""
        features = self._features(plane)
        conditioned = self._condition(obj, plane, features, initial=False, reverse=reverse)
        decoded = self.model.decode(conditioned, features.high_res, multimask=True)
        output = self._output(decoded)
        full = F.interpolate(decoded.logits, (self.model.img_size,) * 2, mode="bilinear",
                             align_corners=False)
        output.memory = self.model.encode_memory(features.features, full, decoded.object_logits,
                                                 binarize=False)
        output.from_prompt = False
        return output

    def _commit_prompts(self) -> None:
        """Encode the memory of new prompts; they become the planes the objects start from."""
        if not self._objects:
            raise RuntimeError("no prompts yet: call add_prompt(plane, object_id, ...) first")
        side = self.model.img_size
        for obj_id, obj in self._objects.items():
            for plane, (initial, output) in sorted(obj.pending.items()):
                full = F.interpolate(output.logits, (side, side), mode="bilinear", align_corners=False)
                output.memory = self.model.encode_memory(self._features(plane).features, full,
                                                         output.object_logits, binarize=True)
                (obj.prompted if initial else obj.tracked)[plane] = output
            obj.pending.clear()
            if not obj.prompted:
                raise RuntimeError(f"object {obj_id} has no prompt on a plane of its own")
            for plane in obj.prompted:
                obj.tracked.pop(plane, None)

    def _condition(self, obj: _Object, plane: int, features: PlaneFeatures, *, initial: bool,
                   reverse: bool) -> torch.Tensor:
        """The plane's features conditioned on the object's memory (Meta's selection)."""
        if initial:
            return self.model.condition(features.features, [], [], MAX_POINTERS)
        if not obj.prompted:
            raise RuntimeError("an object is followed only from planes it was prompted on")
        memories = [(0, out) for _, out in sorted(obj.prompted.items())]
        direction = 1 if reverse else -1  # where the planes already segmented lie
        for slot in range(1, MEMORY_SLOTS):
            out = obj.tracked.get(plane + direction * (MEMORY_SLOTS - slot))
            if out is not None:
                memories.append((slot, out))
        max_pointers = min(self.n_planes, MAX_POINTERS)
        sign = -1 if reverse else 1
        pointers = [((plane - p) * sign, out.pointer) for p, out in sorted(obj.prompted.items())
                    if (p >= plane if reverse else p <= plane)]
        for distance in range(1, max_pointers):
            p = plane + direction * distance
            if not 0 <= p < self.n_planes:
                break
            out = obj.tracked.get(p)
            if out is not None:
                pointers.append((distance, out.pointer))
        return self.model.condition(
            features.features,
            [(slot, PlaneMemory(out.memory, out.pointer)) for slot, out in memories],
            pointers, max_pointers)

    def _forget(self, obj: _Object, plane: int, reverse: bool) -> None:
        """Drop what no later plane can attend to: planes farther than 15 behind the current
        one, except near prompted planes (a propagation in the other direction starts there)."""
        keep = MAX_POINTERS - 1
        for p in list(obj.tracked):
            behind = (p - plane) if reverse else (plane - p)
            if behind > keep and all(abs(p - q) > keep for q in obj.prompted):
                del obj.tracked[p]

    # -- helpers ---------------------------------------------------------------------------

    def _features(self, plane: int) -> PlaneFeatures:
        if self._cached is None or self._cached[0] != plane:
            self._cached = (plane, self.features_for(plane))
        return self._cached[1]

    def _output(self, decoded: Decoded) -> _Output:
        logits = decoded.logits
        if self.fill_hole_area > 0:
            logits = fill_holes(logits, self.fill_hole_area)
        return _Output(logits, decoded.pointer, decoded.object_logits,
                       float(decoded.scores.max()))  # the chosen mask is the best scored

    def _to_plane(self, logits: torch.Tensor) -> torch.Tensor:
        """Low-resolution logits ``(n, 1, h, w)`` to the plane's pixels (bilinear)."""
        return F.interpolate(logits.float(), self.plane_shape, mode="bilinear", align_corners=False)

    def _check_plane(self, plane) -> int:
        if isinstance(plane, bool) or not isinstance(plane, (int, np.integer)) \
                or not 0 <= plane < self.n_planes:
            raise ValueError(f"plane {plane!r} is outside the stack (planes 0 to {self.n_planes - 1})")
        return int(plane)


def fill_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """Fill background regions (logit <= 0) of at most ``max_area`` pixels, 8-connected, with a
    small positive logit, in each ``(h, w)`` map of ``(n, 1, h, w)`` logits."""
    background = (logits <= 0).cpu().numpy()
    holes = np.zeros_like(background)
    for index in np.ndindex(background.shape[:2]):
        regions, _ = ndi.label(background[index], structure=np.ones((3, 3), bool))
        areas = np.bincount(regions.ravel())
        small = areas <= max_area
        small[0] = False
        holes[index] = small[regions]
    if not holes.any():
        return logits
    return torch.where(torch.as_tensor(holes, device=logits.device), HOLE_LOGIT, logits)
