"""Fine-tuning data from a user's own annotations: the labelled planes of one image, at the
model's object scale, with a seeded share of the objects held back for validation.

Held-back objects are whole objects (every plane of an id that spans planes): they are never
prompted nor a training target, their pixels are background of the training labels (true for
every other object's mask), and validation measures the model's prompted masks on them alone.
"""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential
from skimage.transform import resize

from napari_sam.engine.scale import (
    Resampling,
    enlargement_limited,
    estimate_diameter,
    resample_factor,
)
from napari_sam.models.registry import MODELS
from napari_sam.models.sam import Sam
from napari_sam.training.data import LabelledSlices
from napari_sam.training.recipes import Recipe
from napari_sam.training.trainer import TrainingHistory, fit_example, train
from napari_sam.volume.io import Volume, limited_rgb
from napari_sam.volume.stack import volume_noise

__all__ = ["AnnotationSplit", "fine_tune", "split_annotations"]


@dataclass(frozen=True)
class AnnotationSplit:
    """Training examples and held-back validation windows from one annotated image.

    Attributes
    ----------
    training : LabelledSlices
        Random windows of the planes at the model's scale, held-back objects removed.
    validation : list of (image, labels)
        Windows of the model's input size, each with only the held-back objects that lie wholly
        inside it; what :func:`~napari_sam.training.evaluation.prompt_miou` takes.
    summary : dict
        Planes, objects, held-back ids, diameter and scale factor (JSON-serialisable).
    """

    training: LabelledSlices
    validation: list[tuple[np.ndarray, np.ndarray]]
    summary: dict


def split_annotations(
    image: Volume,
    limits,
    labels,
    *,
    img_size: int,
    model_diameter: float | None,
    max_enlargement: float | None = None,
    planes=None,
    diameter: float | None = None,
    held_out: float = 0.15,
    min_held_out: int = 3,
    seed: int = 0,
) -> AnnotationSplit:
    """Split the objects of an annotated image into training data and held-back validation.

    Parameters
    ----------
    image : Volume
        The image (:func:`~napari_sam.volume.io.open_volume`), read plane by plane.
    limits : array or None
        Its intensity limits (:func:`~napari_sam.volume.io.volume_limits`), as in inference.
    labels : array-like
        Label image of the image's planes and ``(Y, X)`` size, 0 = background; an id that
        appears in several planes is one object.
    img_size : int
        The model's input size: the side of the validation windows and training crops.
    model_diameter : float or None
        The object diameter the model works best at (its registry spec); None keeps the pixels.
    max_enlargement : float, optional
        Most a noisy plane is enlarged (the spec's), as the one path does
        (:func:`~napari_sam.engine.scale.resample_factor`).
    planes : iterable of int, optional
        Planes to use, numbered through all plane axes; by default those with labels.
    diameter : float, optional
        The objects' diameter in image pixels; by default the typical equivalent diameter of the
        labelled objects (:func:`~napari_sam.engine.scale.estimate_diameter`).
    held_out : float
        Share of the objects held back for validation, in ``[0, 0.5]``; 0 for none.
    min_held_out : int
        Held back at least this many objects when ``held_out`` > 0.
    seed : int
        Seeds the choice of the held-back objects.

    Returns
    -------
    AnnotationSplit

    Raises
    ------
    ValueError
        Labels of another shape than the image's planes, or not integers; planes out of range;
        no labelled object in the planes; too few objects to hold some back and train on the
        rest; a bad ``held_out``.
    """
    labels = _check_labels(image, labels)
    if not 0 <= held_out <= 0.5:
        raise ValueError(f"held_out must be a share of the objects in [0, 0.5], got {held_out!r}")
    all_planes = range(image.n_planes)
    if planes is None:
        planes = [p for p in all_planes if np.any(_label_plane(labels, image, p))]
    planes = sorted({int(p) for p in planes})
    if any(p not in all_planes for p in planes):
        raise ValueError(f"planes must be between 0 and {image.n_planes - 1}, got {planes}")
    label_planes = {p: _label_plane(labels, image, p) for p in planes}
    ids = np.unique(np.concatenate([np.unique(plane) for plane in label_planes.values()] or [[0]]))
    ids = ids[ids != 0]
    if not ids.size:
        where = "any plane" if len(planes) == image.n_planes or not planes else f"planes {planes}"
        raise ValueError(f"the labels hold no object in {where}: commit objects first (e.g. "
                         "with the interactive widget), or choose planes that have them")
    n_held = 0 if held_out == 0 else max(min_held_out, round(held_out * ids.size))
    if ids.size - n_held < 1:
        raise ValueError(f"{ids.size} labelled object(s) are too few to hold {n_held} back for "
                         f"validation and train on the rest: label at least {n_held + 1}, or "
                         "hold none back")
    held = np.sort(np.random.default_rng(seed).choice(ids, n_held, replace=False))

    if diameter is None:
        sizes = [2 * np.sqrt(a / np.pi) for plane in label_planes.values()
                 for a in np.bincount(np.unique(plane, return_inverse=True)[1].ravel())[1:]]
        diameter = estimate_diameter(sizes)
        if diameter is None:
            raise ValueError("fewer than 3 labelled object outlines: too few to tell the objects' "
                             "size; label more objects or give the diameter")
    # every plane enlarged alike, by the volume's noise, as the one path does for a volume
    noise = (volume_noise(image, limits)
             if enlargement_limited(diameter, model_diameter, max_enlargement) else 0.0)
    factor = resample_factor(diameter, model_diameter, max_enlargement, noise=noise)

    images, trained, validation, skipped = [], [], [], 0
    for p, plane in label_planes.items():
        resampling = Resampling.by_factor(plane.shape, factor)
        rgb = resampling.image(limited_rgb(image.plane(p), limits))
        scaled = _scaled_labels(plane, resampling)
        kept = np.isin(scaled, held)
        if np.any(scaled[~kept]):
            images.append(rgb)
            trained.append(np.where(kept, 0, scaled))
        if kept.any():
            windows, missed = _windows(rgb, np.where(kept, scaled, 0), img_size)
            validation += windows
            skipped += missed
    if not trained:
        raise ValueError("every labelled plane holds only held-back objects: label more objects "
                         "or hold fewer back")
    if n_held and not validation:
        raise ValueError(f"the {n_held} held-back objects are all larger than the model's "
                         f"{img_size} px input at the model's scale (x{factor:.2f}): give the "
                         "objects' diameter")
    training = LabelledSlices([(np.stack(images), np.stack(trained))], crop_size=img_size,
                              axes="zyxc")
    summary = {
        "planes": planes,
        "objects": int(ids.size),
        "held_out": [int(i) for i in held],
        "validation_windows": len(validation),
        "held_out_too_large": skipped,
        "diameter": float(diameter),
        "scale_factor": float(factor),
        "seed": seed,
    }
    return AnnotationSplit(training, validation, summary)


def _check_labels(image: Volume, labels):
    shape = tuple(image.planes) + tuple(image.plane_shape)
    if tuple(np.shape(labels)) != shape:
        raise ValueError(f"the labels have shape {tuple(np.shape(labels))} but the image "
                         f"{image.source} has planes of shape {shape}: choose the labels drawn "
                         "on this image")
    if not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise ValueError(f"the labels must be integers (0 = background), got {labels.dtype}")
    return labels


def _label_plane(labels, image: Volume, plane: int) -> np.ndarray:
    index = np.unravel_index(plane, image.planes) if image.planes else ()
    return np.asarray(labels[tuple(int(i) for i in index)])


def _scaled_labels(plane: np.ndarray, resampling: Resampling) -> np.ndarray:
    """A label plane resampled to the model's scale, nearest label."""
    if resampling.identity:
        return plane
    return resize(plane, resampling.scaled_shape, order=0, preserve_range=True,
                  anti_aliasing=False).astype(plane.dtype)


def _windows(rgb: np.ndarray, labels: np.ndarray, size: int):
    """Few windows of ``size`` (zero-padded) that together hold every object of ``labels``
    wholly, each object in one window only; and the number of objects larger than a window.

    Greedy set cover over windows on a grid of a quarter window's step: the window holding the
    most objects not yet in a window first.
    """
    labels = relabel_sequential(labels)[0]
    found = ndi.find_objects(labels)
    ids = np.array([i + 1 for i, b in enumerate(found) if b is not None], dtype=labels.dtype)
    boxes = np.array([(b[0].start, b[1].start, b[0].stop, b[1].stop) for b in found if b is not None])
    fits = (boxes[:, 2] - boxes[:, 0] <= size) & (boxes[:, 3] - boxes[:, 1] <= size)
    ids, boxes = ids[fits], boxes[fits]
    starts = [sorted({*range(0, max(n - size, 0) + 1, max(size // 4, 1)), max(n - size, 0)})
              for n in labels.shape]
    corners = np.array([(top, left) for top in starts[0] for left in starts[1]])
    # (windows, objects): the object lies wholly in the window
    holds = ((boxes[None, :, 0] >= corners[:, None, 0]) & (boxes[None, :, 1] >= corners[:, None, 1])
             & (boxes[None, :, 2] <= corners[:, None, 0] + size)
             & (boxes[None, :, 3] <= corners[:, None, 1] + size))
    left_over, windows = np.ones(len(ids), bool), []
    while left_over.any():
        best = int(np.argmax((holds & left_over).sum(axis=1)))
        chosen = holds[best] & left_over
        left_over &= ~chosen
        top, left = corners[best]
        crop = labels[top:top + size, left:left + size]
        window = np.where(np.isin(crop, ids[chosen]), crop, 0)
        windows.append(fit_example(size, rgb[top:top + size, left:left + size], window,
                                   np.random.default_rng(0)))
    return windows, int((~fits).sum())


def fine_tune(
    image: Volume,
    limits,
    labels,
    *,
    output,
    model: str | None = None,
    checkpoint: str | None = None,
    device: str = "auto",
    recipe: Recipe = Recipe(),
    steps: int,
    planes=None,
    diameter: float | None = None,
    held_out: float = 0.15,
    validate_every: int = 20,
    keep_best: str = "point",
    seed: int = 0,
    metadata: dict | None = None,
    report: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainingHistory:
    """Fine-tune a model on the annotated objects of one image, validated on held-back ones.

    :func:`split_annotations` at the model's object scale, then
    :func:`~napari_sam.training.trainer.train` keeping the best checkpoint (``keep_best``) in
    ``output``. ``report`` first receives ``{"split": summary}``, then the trainer's reports.

    Parameters
    ----------
    image, limits, labels, planes, diameter, held_out, seed
        As :func:`split_annotations`.
    output : path
        Folder for ``model.pt`` and ``model.json``.
    model, checkpoint, device
        The model to start from, as :func:`napari_sam.load_model` takes them.
    recipe, steps, validate_every, keep_best, metadata, report, should_stop
        As :func:`~napari_sam.training.trainer.train`.

    Returns
    -------
    TrainingHistory
    """
    from napari_sam.models.loading import load_model

    sam = load_model(None if checkpoint else model, checkpoint, device)
    if not isinstance(sam, Sam):
        raise ValueError(f"fine-tuning trains SAM models; {sam.name!r} is not one: choose a SAM "
                         "model")
    spec = MODELS.get(sam.name or "")
    split = split_annotations(
        image, limits, labels, img_size=sam.img_size, planes=planes, diameter=diameter,
        model_diameter=spec.diameter if spec is not None else None,
        max_enlargement=spec.max_enlargement if spec is not None else None, held_out=held_out,
        seed=seed)
    if report:
        report({"split": split.summary})
    return train(sam, split.training, recipe, steps=steps, output=output,
                 validation=split.validation, validate_every=validate_every,
                 checkpoint_every=steps, keep_best=keep_best, seed=seed, device=device,
                 log=None, report=report, should_stop=should_stop,
                 metadata={"base": checkpoint or model, **(metadata or {}),
                           "data": split.summary})


def fine_tune_process() -> subprocess.Popen:
    """Start :func:`fine_tune` in a Python process of its own; talk to it with
    :func:`send` and :func:`receive`.

    The parent sends the options of :func:`fine_tune` (:func:`send`), then reads messages
    (:func:`receive`): ``("report", report)`` as they come, then ``("done", history)`` or
    ``("failed", error, traceback)``. Any byte written to the process's stdin afterwards, or
    closing it, stops the run after the current step.

    A process of its own (not ``multiprocessing``, which re-runs a parent script without a main
    guard) keeps a GUI's threads free, and keeps torch's optimiser imports (torch._dynamo,
    triton and its LLVM) out of a process where OpenGL may have loaded another LLVM: in a
    napari process on Mesa that import crashes.
    """
    return subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)


def send(stream, message) -> None:
    """Write ``message`` to a binary stream, pickled and framed by its length."""
    data = pickle.dumps(message)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def receive(stream):
    """The next message :func:`send` wrote to ``stream``; EOFError when it ended."""
    size = stream.read(8)
    if len(size) < 8:
        raise EOFError("the stream ended")
    return pickle.loads(stream.read(struct.unpack("<Q", size)[0]))


def _serve() -> None:
    """The process of :func:`fine_tune_process`: stdout carries messages only."""
    messages, sys.stdout = sys.stdout.buffer, sys.stderr  # stray prints go to stderr
    options = receive(sys.stdin.buffer)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.buffer.read(1), stop.set()), daemon=True).start()
    try:
        history = fine_tune(**options, report=lambda report: send(messages, ("report", report)),
                            should_stop=stop.is_set)
    except Exception as error:  # noqa: BLE001 - handed to the parent, which reports it
        send(messages, ("failed", error, traceback.format_exc()))
    else:
        send(messages, ("done", history))


if __name__ == "__main__":
    _serve()
