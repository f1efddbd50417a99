"""Objects followed through a stack by SAM 2.1's memory, from seeds into a label volume.

Seeds are a labels plane (or a label volume with some planes drawn: each object on each plane
where it appears is a mask prompt) or points (one object per point, or per id). Each plane is
embedded once (through the :class:`~napari_sam.engine.embeddings.EmbeddingStore` when a cache
is given) and the objects are propagated up and down from the planes they were given on
(:class:`~napari_sam.engine.tracking.PlaneTracker`); every plane is written as soon as it is
done, so memory stays bounded by a few planes whatever the volume size, and the planes written
before an error or an interruption stay valid.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_sam.engine.embeddings import EmbeddingStore
from napari_sam.engine.predictor import Predictor
from napari_sam.engine.tracking import PlaneTracker
from napari_sam.models.loading import load_model
from napari_sam.models.sam2.model import PlaneFeatures, Sam2
from napari_sam.volume.io import Volume, open_volume, plane_rgb, volume_limits
from napari_sam.volume.labels_output import NewLabels, check_format, default_output
from napari_sam.volume.stack import check_paths

#: The model used for propagation when none is named: the smallest SAM 2.1.
DEFAULT_TRACKING_MODEL = "sam2.1_hiera_tiny"


@dataclass
class Seed:
    """One object's prompt on one plane: a mask, or clicks ``(row, col)`` on the object."""

    plane: int
    object_id: int
    mask: np.ndarray | None = None
    points: np.ndarray | None = None


@dataclass
class TrackSummary:
    """What :func:`track_stack` did.

    Attributes
    ----------
    objects : int
        Objects seeded.
    planes : int
        Planes written.
    seconds : float
    ids : list of int
        The objects' ids.
    output : Path or None
        Where the labels are.
    """

    objects: int
    planes: int
    seconds: float
    ids: list[int] = field(default_factory=list)
    output: Path | None = None


def read_seeds(seeds, volume: Volume, *, plane: int | None = None) -> list[Seed]:
    """Prompts from a labels plane, a label volume, or points.

    Parameters
    ----------
    seeds : array, path or Volume
        ``(H, W)`` labels of one plane (with ``plane``); labels of the volume's shape, in which
        every object on every plane where it appears is a mask prompt; ``(N, 3)`` points
        ``(plane, row, col)``, each its own object; or a file of one of these (tiff, npy, zarr;
        or csv of points, with napari's columns ``axis-0, axis-1, axis-2`` or ``z, y, x`` and
        an optional ``id`` column that gives several clicks to one object).
    volume : Volume
        The stack the seeds belong to.
    plane : int, optional
        The plane of a 2D labels seed.

    Raises
    ------
    ValueError
        Seeds of another shape than the planes or the volume, points outside the volume, a 2D
        labels seed without ``plane``, or no object at all.
    """
    if isinstance(seeds, (str, os.PathLike)) and Path(seeds).suffix.lower() == ".csv":
        return _point_seeds(*_read_points_csv(Path(seeds)), volume)
    array = seeds if isinstance(seeds, Volume) else None
    if array is None and isinstance(seeds, (str, os.PathLike)):
        array = open_volume(seeds)
    if array is None:
        data = np.asarray(seeds)
        if data.ndim == 2 and data.shape[1] == 3 and data.shape != volume.plane_shape:
            return _point_seeds(data, None, volume)
        array = data
    shape = tuple(array.shape)
    if shape == tuple(volume.plane_shape):
        if plane is None:
            raise ValueError("the seeds are one labels plane: say which plane of the stack it is "
                             "(plane=..., --plane Z)")
        found = _label_seeds(np.asarray(array.plane(0) if isinstance(array, Volume) else array),
                             _check_plane(plane, volume))
    elif shape == tuple(volume.planes) + tuple(volume.plane_shape):
        found = []
        for z in range(volume.n_planes):
            labels = array.plane(z) if isinstance(array, Volume) else np.asarray(array)[
                np.unravel_index(z, volume.planes)]
            found += _label_seeds(np.asarray(labels), z)
    else:
        raise ValueError(
            f"seeds of shape {shape} fit neither a plane {tuple(volume.plane_shape)} nor the "
            f"volume {tuple(volume.planes) + tuple(volume.plane_shape)}: give labels of one of "
            "these shapes, or (N, 3) points (plane, row, col)")
    if not found:
        raise ValueError("the seeds hold no object (all labels are 0): draw at least one")
    return found


def _label_seeds(labels: np.ndarray, plane: int) -> list[Seed]:
    if labels.dtype.kind not in "iub":
        raise ValueError(f"seed labels must be integers, got {labels.dtype}")
    return [Seed(plane, int(i), mask=labels == i) for i in np.unique(labels) if i > 0]


def _read_points_csv(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(N, 3)`` points and optional ids from a csv (napari's points export, or z, y, x)."""
    with path.open(newline="") as file:
        rows = list(csv.reader(file))
    if not rows:
        raise ValueError(f"{str(path)!r} is empty: give points as plane, row, col")
    header = [name.strip().lower() for name in rows[0]]
    for names in (("axis-0", "axis-1", "axis-2"), ("z", "y", "x")):
        if all(name in header for name in names):
            columns = [header.index(name) for name in names]
            break
    else:
        raise ValueError(f"{str(path)!r} has no columns axis-0, axis-1, axis-2 (napari) or z, y, "
                         f"x: its header is {rows[0]}")
    ids = header.index("id") if "id" in header else None
    try:
        points = np.array([[float(row[c]) for c in columns] for row in rows[1:]], float)
        object_ids = None if ids is None else np.array([int(float(row[ids])) for row in rows[1:]])
    except (ValueError, IndexError) as error:
        raise ValueError(f"{str(path)!r} has a row that is not numbers: {error}") from None
    return points.reshape(-1, 3), object_ids


def _point_seeds(points: np.ndarray, ids: np.ndarray | None, volume: Volume) -> list[Seed]:
    points = np.asarray(points, float).reshape(-1, 3)
    if len(points) == 0:
        raise ValueError("the seeds hold no point: give at least one (plane, row, col)")
    limits = (volume.n_planes, *volume.plane_shape)
    outside = ~((points >= 0) & (points < np.array(limits) - 0.5)).all(axis=1)
    if outside.any():
        raise ValueError(f"seed point {points[outside][0].tolist()} lies outside the volume "
                         f"(planes, rows, columns) = {limits}")
    if ids is None:
        ids = np.arange(1, len(points) + 1)
    if (ids < 1).any():
        raise ValueError("seed ids must be positive integers")
    planes = np.rint(points[:, 0]).astype(int)
    seeds = []
    for object_id in dict.fromkeys(ids.tolist()):
        mine = ids == object_id
        for z in np.unique(planes[mine]):
            at = mine & (planes == z)
            seeds.append(Seed(int(z), int(object_id), points=points[at, 1:]))
    return seeds


def _check_unique(seeds: list[Seed]) -> None:
    """Refuse two prompts for one object on one plane: which one should count?"""
    seen = set()
    for seed in seeds:
        key = (seed.plane, seed.object_id)
        if key in seen:
            raise ValueError(f"object {seed.object_id} is given twice on plane {seed.plane}: give "
                             "each object one prompt per plane (several clicks go in one seed)")
        seen.add(key)


def _check_plane(plane, volume: Volume) -> int:
    if not isinstance(plane, (int, np.integer)) or not 0 <= plane < volume.n_planes:
        raise ValueError(f"plane {plane!r} is outside the stack (planes 0 to {volume.n_planes - 1})")
    return int(plane)


def plane_features(model: Sam2, volume: Volume, limits, store: EmbeddingStore | None = None
                   ) -> Callable[[int], PlaneFeatures]:
    """``features(plane)``: a plane's SAM 2.1 features, from the store when it has them."""
    predictor = Predictor(model)

    def features(plane: int) -> PlaneFeatures:
        rgb = plane_rgb(volume, plane, limits)
        embedding = predictor.set_image(rgb) if store is None else store.embed(predictor, rgb)
        return PlaneFeatures(embedding.features, tuple(embedding.high_res))

    return features


def track_stack(source, seeds, output: str | os.PathLike | None = None, *,
                model: str | None = None, checkpoint=None, device="auto",
                axes: str | None = None, plane: int | None = None,
                cache: str | os.PathLike | None = None, overwrite: bool = False,
                end_after: int | None = 2, output_format: str = "ome-zarr",
                progress: Callable[[int, int], None] | None = None) -> TrackSummary:
    """Follow seeded objects through a stack with SAM 2.1 and write their 3D labels.

    Parameters
    ----------
    source : path, array or Volume
        Anything :func:`napari_sam.volume.open_volume` opens.
    seeds : array, path or list of Seed
        See :func:`read_seeds`; or the prompts themselves.
    output : path, optional
        The labels to write (uint32, one chunk per plane); ids are the seeds' ids. By default,
        for an OME-Zarr image, its labels ``napari-sam``
        (:func:`~napari_sam.volume.labels_output.default_output`).
    model : str or Sam2, optional
        A registry name or a loaded SAM 2.1 model; ``"sam2.1_hiera_tiny"`` by default.
    checkpoint, device
        As :func:`napari_sam.load_model`.
    axes : str, optional
        Axes of the source, e.g. ``"zyx"``.
    plane : int, optional
        The plane of a 2D labels seed.
    cache : path, optional
        Embedding cache (zarr group) to read and fill.
    overwrite : bool
        Replace an existing output.
    end_after : int or None
        See :class:`~napari_sam.engine.tracking.PlaneTracker`.
    output_format : {"ome-zarr", "zarr"}
        An OME-Zarr label image (levels written with each plane; each object's area and the
        plane it was prompted on as properties), or a plain zarr array.
    progress : callable, optional
        ``progress(done, total)`` after each plane written.

    Raises
    ------
    ValueError, TypeError, FileExistsError
        Bad seeds, a SAM model instead of SAM 2.1, an existing output: before anything is
        written.
    """
    started = time.perf_counter()
    volume, output = _stack_and_output(source, axes, output, cache, overwrite, output_format)
    if isinstance(seeds, list) and all(isinstance(seed, Seed) for seed in seeds):
        found = seeds
    else:
        found = read_seeds(seeds, volume, plane=plane)
    loaded = _tracking_model(model, checkpoint, device)
    _check_unique(found)
    store = EmbeddingStore(cache) if cache is not None else None
    tracker = PlaneTracker(loaded, n_planes=volume.n_planes, plane_shape=volume.plane_shape,
                           features_for=plane_features(loaded, volume, volume_limits(volume), store),
                           end_after=end_after)
    for seed in found:
        tracker.add_prompt(seed.plane, seed.object_id, mask=seed.mask, points=seed.points)
    labels = NewLabels(output, volume, output_format)
    written: set[int] = set()
    quality = _Quality()
    for tracked in tracker.propagate_both():
        labels[tracked.plane] = plane_labels = tracked.labels()
        quality.add(tracked, plane_labels)
        written.add(tracked.plane)
        if progress is not None:
            progress(len(written), volume.n_planes)
    if progress is not None and len(written) < volume.n_planes:
        progress(volume.n_planes, volume.n_planes)  # the objects ended before the last planes
    labels.finish({seed.object_id: seed.plane for seed in found}, quality.mean())
    return TrackSummary(len(tracker.object_ids), len(written), time.perf_counter() - started,
                        tracker.object_ids, output)


def default_key_planes(n_planes: int, count: int = 4) -> list[int]:
    """``count`` planes spread evenly through the stack, away from its ends."""
    step = max(1, n_planes // count)
    return list(range(step // 2, n_planes, step))[:count]


def segment_and_track(source, output: str | os.PathLike, *, model: str | None = None,
                      checkpoint=None, device="auto", axes: str | None = None,
                      key_planes: list[int] | None = None, key_model=None,
                      cache: str | os.PathLike | None = None, overwrite: bool = False,
                      end_after: int | None = 2, output_format: str = "ome-zarr",
                      progress: Callable[[int, int], None] | None = None) -> TrackSummary:
    """Segment a few key planes automatically, then follow their objects through the stack.

    Each key plane is segmented by the one path (:class:`~napari_sam.Segmenter`, the shipped
    model with its automatic mode by default); its objects not already found by propagation from
    an earlier key plane (less than half of them labelled) get new ids and are followed up and
    down with SAM 2.1's memory. An object keeps one id through z without any linking; where
    objects meet, the one found first keeps the pixels.

    Parameters
    ----------
    source, output, model, checkpoint, device, axes, cache, overwrite, end_after, output_format, progress
        As :func:`track_stack`; an object's prompted plane is the key plane it was found on.
    key_planes : list of int, optional
        The planes segmented automatically; by default 4 spread through the stack
        (:func:`default_key_planes`).
    key_model : str or Sam, optional
        The model that segments the key planes (registry name or loaded); the shipped one by
        default.
    """
    from napari_sam.engine.segmenter import Segmenter

    started = time.perf_counter()
    volume, output = _stack_and_output(source, axes, output, cache, overwrite, output_format)
    key_planes = default_key_planes(volume.n_planes) if key_planes is None else list(key_planes)
    for plane in key_planes:
        _check_plane(plane, volume)
    tracking = _tracking_model(model, checkpoint, device)
    if key_model is None or isinstance(key_model, str):
        key_model = load_model(key_model, device=device)
    limits = volume_limits(volume)
    segmenter = Segmenter(key_model)
    with _store(cache) as store:
        features_for = plane_features(tracking, volume, limits, store)
        labels = NewLabels(output, volume, output_format)
        prompted: dict[int, int] = {}
        quality = _Quality()
        for done, key in enumerate(sorted(key_planes)):
            segmenter.set_image(plane_rgb(volume, key, limits))
            found, written = segmenter.segment_all(), labels[key]
            tracker = PlaneTracker(tracking, n_planes=volume.n_planes,
                                   plane_shape=volume.plane_shape, features_for=features_for,
                                   end_after=end_after)
            for index in np.unique(found[found > 0]):
                mask = found == index
                if (written[mask] > 0).mean() < 0.5:  # not found from an earlier key plane
                    prompted[len(prompted) + 1] = key
                    tracker.add_prompt(key, len(prompted), mask=mask)
            if tracker.object_ids:
                for tracked in tracker.propagate_both():
                    plane = labels[tracked.plane]
                    new = tracked.labels()
                    free = (plane == 0) & (new > 0)
                    plane[free] = new[free]
                    labels[tracked.plane] = plane
                    quality.add(tracked, plane)
            if progress is not None:
                progress(done + 1, len(key_planes))
    labels.finish(prompted, quality.mean())
    return TrackSummary(len(prompted), volume.n_planes, time.perf_counter() - started,
                        list(prompted), output)


class _Quality:
    """Each object's predicted IoU on each plane it was written on, with its pixels there."""

    def __init__(self) -> None:
        self._by_plane: dict[tuple[int, int], tuple[float, int]] = {}

    def add(self, tracked, written: np.ndarray) -> None:
        """Record the objects of ``tracked`` as written in the plane's labels ``written``
        (a plane written again replaces what it had)."""
        ids, counts = np.unique(written[written > 0], return_counts=True)
        pixels = dict(zip(ids.tolist(), counts.tolist()))
        for object_id, iou in zip(tracked.object_ids, tracked.predicted_iou.tolist()):
            self._by_plane[object_id, tracked.plane] = (iou, pixels.get(object_id, 0))

    def mean(self) -> dict[int, float]:
        """Each object's predicted IoU averaged over its planes, weighted by its pixels."""
        sums: dict[int, list[float]] = {}
        for (object_id, _), (iou, pixels) in self._by_plane.items():
            total = sums.setdefault(object_id, [0.0, 0.0])
            total[0] += iou * pixels
            total[1] += pixels
        return {i: weighted / pixels for i, (weighted, pixels) in sums.items() if pixels > 0}


def _stack_and_output(source, axes, output, cache, overwrite: bool,
                      output_format: str) -> tuple[Volume, Path]:
    """The 3D stack to follow objects through, and an output path that may be written (by
    default the OME-Zarr image's labels)."""
    check_format(output_format)
    volume = source if isinstance(source, Volume) else open_volume(source, axes=axes)
    if len(volume.planes) != 1:
        raise ValueError(f"propagation needs a 3D stack, the volume has plane axes "
                         f"{volume.plane_axes!r}: pick one time point or channel first")
    if output is None:
        if output_format != "ome-zarr":
            raise ValueError("give an output for a plain zarr array")
        output = default_output(volume)
    check_paths(source=volume.path, output=output, cache=cache)
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{str(output)!r} exists: pass overwrite=True (--overwrite) or "
                              "choose another output")
    return volume, output


def _tracking_model(model, checkpoint, device) -> Sam2:
    """The SAM 2.1 model that follows objects: loaded, or refused if it is a SAM."""
    if model is None or isinstance(model, str):
        model = load_model(model or (None if checkpoint else DEFAULT_TRACKING_MODEL), checkpoint,
                           device)
    if not isinstance(model, Sam2):
        raise TypeError(f"propagation through z needs a SAM 2.1 model, {model.name!r} is a SAM "
                        "model: pass --model sam2.1_hiera_tiny (or small, base_plus, large)")
    return model


@contextmanager
def _store(cache):
    """The embedding store of ``cache``, or one in a temporary folder: every key plane's
    propagation walks the same planes, which are then embedded once."""
    if cache is not None:
        yield EmbeddingStore(cache)
        return
    with tempfile.TemporaryDirectory(prefix="napari-sam-planes-") as folder:
        yield EmbeddingStore(Path(folder) / "embeddings.zarr")
